package saga

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var envAt = time.Date(2025, time.March, 14, 9, 0, 0, 123456000, time.UTC)

func fullEnvelope() Envelope {
	return Envelope{
		ID:            "5b3f7a52-8d0e-4c6a-9a51-2f4c1d7e9b30:charge_payment",
		CorrelationID: "5b3f7a52-8d0e-4c6a-9a51-2f4c1d7e9b30:charge_payment",
		SagaID:        "5b3f7a52-8d0e-4c6a-9a51-2f4c1d7e9b30",
		Type:          "payment.charge.reply",
		At:            envAt,
		Attempt:       3,
		Status:        ReplyFailed,
		Code:          "card_declined",
		Message:       "insufficient funds",
		Payload:       json.RawMessage(`{"amount_cents":1500,"lines":[{"sku":"A-1","quantity":2}]}`),
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		env  Envelope
	}{
		{"every field", fullEnvelope()},
		{"minimal", Envelope{ID: "m-1", Type: "inventory.reserve", At: envAt}},
		{"version set by the caller is overwritten", func() Envelope { e := fullEnvelope(); e.V = 7; return e }()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, err := Decode(c.env.Encode())
			if err != nil {
				t.Fatalf("Decode(Encode()): %v", err)
			}
			want := c.env
			want.V = SchemaVersion
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEnvelopeEncodeWireFormat(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		env  Envelope
		want string
	}{
		{
			name: "empty fields are omitted",
			env:  Envelope{V: 9, ID: "m-1", Type: "inventory.reserve", At: envAt},
			want: `{"v":1,"id":"m-1","type":"inventory.reserve","at":"2025-03-14T09:00:00.123456Z"}`,
		},
		{
			name: "every field",
			env:  fullEnvelope(),
			want: `{"v":1,"id":"5b3f7a52-8d0e-4c6a-9a51-2f4c1d7e9b30:charge_payment",` +
				`"correlation_id":"5b3f7a52-8d0e-4c6a-9a51-2f4c1d7e9b30:charge_payment",` +
				`"saga_id":"5b3f7a52-8d0e-4c6a-9a51-2f4c1d7e9b30","type":"payment.charge.reply",` +
				`"at":"2025-03-14T09:00:00.123456Z","attempt":3,"status":"failed","code":"card_declined",` +
				`"message":"insufficient funds","payload":{"amount_cents":1500,"lines":[{"sku":"A-1","quantity":2}]}}`,
		},
	}
	for _, c := range cases {
		if got := string(c.env.Encode()); got != c.want {
			t.Errorf("%s: Encode() =\n%s\nwant\n%s", c.name, got, c.want)
		}
	}
}

func TestDecodeAccepts(t *testing.T) {
	t.Parallel()
	want := Envelope{V: 1, ID: "m-1", Type: "inventory.reserve", At: envAt, Payload: json.RawMessage(`{"a":1}`)}
	for name, body := range map[string]string{
		"compact":            `{"v":1,"id":"m-1","type":"inventory.reserve","at":"2025-03-14T09:00:00.123456Z","payload":{"a":1}}`,
		"surrounding spaces": " \n{\"v\":1,\"id\":\"m-1\",\"type\":\"inventory.reserve\",\"at\":\"2025-03-14T09:00:00.123456Z\",\"payload\":{\"a\":1}}\n\t ",
		"other field order":  `{"payload":{"a":1},"type":"inventory.reserve","at":"2025-03-14T10:00:00.123456+01:00","id":"m-1","v":1}`,
	} {
		got, err := Decode([]byte(body))
		if err != nil {
			t.Errorf("%s: Decode: %v", name, err)
			continue
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: Decode (-want +got):\n%s", name, diff)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	t.Parallel()
	const ok = `{"v":1,"id":"m-1","type":"inventory.reserve"}`
	cases := []struct {
		name string
		body string
		want error
	}{
		{"version 2", `{"v":2,"id":"m-1","type":"inventory.reserve"}`, ErrUnknownVersion},
		{"version 0", `{"v":0,"id":"m-1","type":"inventory.reserve"}`, ErrUnknownVersion},
		{"no version", `{"id":"m-1","type":"inventory.reserve"}`, ErrUnknownVersion},
		{"negative version", `{"v":-1,"id":"m-1","type":"inventory.reserve"}`, ErrUnknownVersion},

		{"empty body", ``, ErrMalformed},
		{"not JSON", `hello`, ErrMalformed},
		{"truncated", `{"v":1,"id":"m-1","type":"inventory.`, ErrMalformed},
		{"array", `[` + ok + `]`, ErrMalformed},
		{"string", `"` + ok + `"`, ErrMalformed},
		{"version as a string", `{"v":"1","id":"m-1","type":"inventory.reserve"}`, ErrMalformed},
		{"attempt as a string", `{"v":1,"id":"m-1","type":"inventory.reserve","attempt":"2"}`, ErrMalformed},
		{"bad time", `{"v":1,"id":"m-1","type":"inventory.reserve","at":"yesterday"}`, ErrMalformed},

		{"trailing object", ok + `{"v":1,"id":"m-2","type":"x"}`, ErrMalformed},
		{"trailing garbage", ok + ` garbage`, ErrMalformed},
		{"trailing number", ok + ` 1`, ErrMalformed},
		{"trailing closing brace", ok + `}`, ErrMalformed},
		{"trailing closing bracket", ok + `]`, ErrMalformed},

		{"missing id", `{"v":1,"type":"inventory.reserve"}`, ErrMalformed},
		{"empty id", `{"v":1,"id":"","type":"inventory.reserve"}`, ErrMalformed},
		{"missing type", `{"v":1,"id":"m-1"}`, ErrMalformed},
		{"empty type", `{"v":1,"id":"m-1","type":""}`, ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, err := Decode([]byte(c.body))
			if !errors.Is(err, c.want) {
				t.Fatalf("Decode(%q) err = %v, want %v", c.body, err, c.want)
			}
			// The two kinds of error stay distinct: a version problem is not
			// a malformed message, and the other way round.
			other := ErrMalformed
			if c.want == ErrMalformed {
				other = ErrUnknownVersion
			}
			if errors.Is(err, other) {
				t.Errorf("err = %v also matches %v", err, other)
			}
			if diff := cmp.Diff(Envelope{}, got); diff != "" {
				t.Errorf("a rejected message yields the zero envelope (-want +got):\n%s", diff)
			}
		})
	}
}
