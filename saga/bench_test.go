package saga

import "testing"

// BenchmarkDecide measures the common decision: an ok reply that completes
// a step and sends the next command.
func BenchmarkDecide(b *testing.B) {
	d := testDefinition(b)
	in := runningAt(b, d, 0)
	inp := okIn(stReserve, `{"amount_cents":1500,"lines":[{"sku":"A-1","quantity":2,"price_cents":750}]}`)
	now := ts(1 * s)
	b.ReportAllocs()
	for b.Loop() {
		dec, err := d.Decide(in, inp, now)
		if err != nil || !dec.Changed || len(dec.Commands) != 1 {
			b.Fatalf("unexpected decision: changed=%v commands=%d err=%v", dec.Changed, len(dec.Commands), err)
		}
	}
}

func BenchmarkEnvelopeEncode(b *testing.B) {
	env := fullEnvelope()
	b.ReportAllocs()
	for b.Loop() {
		if len(env.Encode()) == 0 {
			b.Fatal("empty encoding")
		}
	}
}

func BenchmarkEnvelopeDecode(b *testing.B) {
	body := fullEnvelope().Encode()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		e, err := Decode(body)
		if err != nil || e.ID == "" {
			b.Fatalf("Decode: %v", err)
		}
	}
}
