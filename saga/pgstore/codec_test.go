package pgstore

import (
	"encoding/binary"
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
		{Kind: saga.MessageCommand, Type: "payment.charge", MessageID: "o-1:charge_payment",
			CorrelationID: "o-1:charge_payment", Priority: 5,
			TTL: 10 * time.Second, Timestamp: ts, Headers: map[string]string{"traceparent": "00-abc-def-01"},
			Body: []byte(`{"v":1}`)},
		{Kind: saga.MessageReply, Key: "q", MessageID: "m", Body: []byte("\x00binary\xff")},
		{Kind: saga.MessageEvent, Type: "order.created", MessageID: "e"},
		{},
	}
	got, err := decodeMessages(encodeMessages(msgs))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(msgs, got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

// addressedFrame frames messages as releases before the transport-neutral
// messages did (codec versions 1 and 2): AMQP exchange, routing key and
// reply_to in place of kind and key.
func addressedFrame(msgs []addressed) []byte {
	b := binary.AppendUvarint(nil, uint64(len(msgs)))
	str := func(s string) { b = binary.AppendUvarint(b, uint64(len(s))); b = append(b, s...) }
	for _, m := range msgs {
		str(m.exchange)
		str(m.routingKey)
		str(m.MessageID)
		str(m.CorrelationID)
		str(m.replyTo)
		str(m.Type)
		b = append(b, byte(m.Priority))
		b = binary.AppendVarint(b, m.TTL.Milliseconds())
		var ts int64
		if !m.Timestamp.IsZero() {
			ts = m.Timestamp.UnixNano()
		}
		b = binary.AppendVarint(b, ts)
		b = binary.AppendUvarint(b, uint64(len(m.Headers)))
		for k, v := range m.Headers {
			str(k)
			str(v)
		}
		b = binary.AppendUvarint(b, uint64(len(m.Body)))
		b = append(b, m.Body...)
	}
	return b
}

type addressed struct {
	saga.Message
	exchange, routingKey, replyTo string
}

// TestCodecReadsOlderRows: rows a release before this one left in an
// outbox (version 1 plain, version 2 compressed, both with AMQP addresses)
// decode into kinds: a command (it named the reply queue), an event, and a
// reply addressed to a queue.
func TestCodecReadsOlderRows(t *testing.T) {
	ts := time.Date(2026, 11, 22, 10, 0, 0, 123456789, time.UTC)
	old := []addressed{
		{saga.Message{Type: "payment.charge", MessageID: "o-1:charge_payment", CorrelationID: "o-1:charge_payment",
			Priority: 5, TTL: 10 * time.Second, Timestamp: ts, Headers: map[string]string{"traceparent": "00-abc-def-01"},
			Body: []byte(`{"v":1}`)}, "saga.commands", "payment.charge", "saga.replies"},
		{saga.Message{Type: "order.created", MessageID: "ev-1", Body: []byte(`{}`)}, "saga.events", "order.created", ""},
		{saga.Message{MessageID: "m", Body: []byte("x")}, "", "some.queue", ""},
	}
	want := []saga.Message{old[0].Message, old[1].Message, old[2].Message}
	want[0].Kind, want[1].Kind, want[2].Kind, want[2].Key = saga.MessageCommand, saga.MessageEvent, saga.MessageReply, "some.queue"
	frame := addressedFrame(old)
	for name, b := range map[string][]byte{
		"version 1": append([]byte{codecPlain}, frame...),
		"version 2": zenc.EncodeAll(frame, []byte{codecZstd}),
	} {
		got, err := decodeMessages(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
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
	msgs := []saga.Message{{Kind: saga.MessageEvent, Type: "k", MessageID: "m", Body: []byte("body")}}
	good := encodeMessages(msgs)
	plain := append([]byte{codecPlain}, addressedFrame([]addressed{{msgs[0], "x", "k", ""}})...)
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
		"compressed garbage":   append([]byte{codecZstdKinds}, plain[1:]...),
	} {
		if _, err := decodeMessages(b); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

func FuzzDecodeMessages(f *testing.F) {
	f.Add(encodeMessages([]saga.Message{{Kind: saga.MessageEvent, Type: "x", Headers: map[string]string{"a": "b"}, Body: []byte("{}")}}))
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
		msgs[i] = saga.Message{Kind: saga.MessageCommand, Type: "payment.charge", MessageID: id + ":charge_payment",
			CorrelationID: id + ":charge_payment",
			Priority:      1, TTL: 10 * time.Second, Timestamp: time.Now(),
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
