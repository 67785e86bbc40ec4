package pgstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/saga"
)

func TestCodecRoundTrip(t *testing.T) {
	ts := time.Date(2026, 11, 22, 10, 0, 0, 123456789, time.UTC)
	msgs := []saga.Message{
		{Exchange: "saga.commands", RoutingKey: "payment.charge", MessageID: "o-1:charge_payment",
			CorrelationID: "o-1:charge_payment", ReplyTo: "saga.replies", Type: "payment.charge", Priority: 5,
			Expiration: 10 * time.Second, Timestamp: ts, Headers: map[string]string{"traceparent": "00-abc-def-01"},
			Body: []byte(`{"v":1}`)},
		{Exchange: "", RoutingKey: "q", MessageID: "m", Body: []byte("\x00binary\xff")},
		{},
	}
	for name, b := range map[string][]byte{
		"compressed": encodeMessages(msgs),
		// Rows written by a release before compression.
		"plain": append([]byte{codecPlain}, appendFrame(nil, msgs)...),
	} {
		got, err := decodeMessages(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(msgs, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: round trip (-want +got):\n%s", name, diff)
		}
	}
}

// TestCodecCompresses checks that a batch like the relay's shrinks: the
// point of the compression is the write-ahead log.
func TestCodecCompresses(t *testing.T) {
	msgs := benchMessages(64)
	plain := len(appendFrame(nil, msgs))
	packed := len(encodeMessages(msgs))
	if packed*3 > plain {
		t.Errorf("64 commands: %d bytes compressed of %d, want under a third", packed, plain)
	}
}

func TestCodecRejectsCorruptPayloads(t *testing.T) {
	msgs := []saga.Message{{Exchange: "x", RoutingKey: "k", MessageID: "m", Body: []byte("body")}}
	good := encodeMessages(msgs)
	plain := append([]byte{codecPlain}, appendFrame(nil, msgs)...)
	flipped := append([]byte{}, good...)
	flipped[len(flipped)/2] ^= 0xff
	for name, b := range map[string][]byte{
		"empty":                nil,
		"unknown version":      append([]byte{9}, good[1:]...),
		"truncated":            good[:len(good)-2],
		"trailing bytes":       append(append([]byte{}, good...), 0),
		"flipped byte":         flipped,
		"plain truncated":      plain[:len(plain)-2],
		"plain trailing bytes": append(append([]byte{}, plain...), 0),
		"huge count":           {codecPlain, 0xff, 0xff, 0xff, 0x0f},
		"compressed garbage":   append([]byte{codecZstd}, plain[1:]...),
	} {
		if _, err := decodeMessages(b); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

func FuzzDecodeMessages(f *testing.F) {
	f.Add(encodeMessages([]saga.Message{{Exchange: "x", Headers: map[string]string{"a": "b"}, Body: []byte("{}")}}))
	f.Add([]byte{codecPlain, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, err := decodeMessages(b)
		if err != nil {
			return
		}
		// Whatever decodes must encode back to a payload that decodes the same.
		again, err := decodeMessages(encodeMessages(msgs))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if diff := cmp.Diff(msgs, again, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("re-decode (-first +second):\n%s", diff)
		}
	})
}

// benchMessages returns n commands of different sagas, shaped like the
// coordinator's: ids, a trace header, a JSON body of ~400 bytes.
func benchMessages(n int) []saga.Message {
	msgs := make([]saga.Message, n)
	for i := range msgs {
		id := uuid.Must(uuid.NewV7()).String()
		body := fmt.Sprintf(`{"v":1,"id":"%s:charge_payment","correlation_id":"%s:charge_payment","saga_id":"%s",`+
			`"type":"payment.charge","at":"2026-12-01T12:00:00.%06dZ","data":{"order_id":"%s","customer_id":"c-%d",`+
			`"amount_cents":%d,"payment_token":"tok_%08x"}}`, id, id, id, i, id, i, 1000+37*i, 7919*i)
		msgs[i] = saga.Message{Exchange: "saga.commands", RoutingKey: "payment.charge", MessageID: id + ":charge_payment",
			CorrelationID: id + ":charge_payment", ReplyTo: "saga.replies", Type: "payment.charge",
			Priority: 1, Expiration: 10 * time.Second, Timestamp: time.Now(),
			Headers: map[string]string{"traceparent": fmt.Sprintf("00-%032x-%016x-01", i*7919, i*104729)},
			Body:    []byte(body)}
	}
	return msgs
}

func BenchmarkOutboxCodec(b *testing.B) {
	msgs := benchMessages(64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeMessages(encodeMessages(msgs)); err != nil {
			b.Fatal(err)
		}
	}
}
