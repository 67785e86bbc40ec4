package api

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/sagatest"
)

func TestMain(m *testing.M) { sagatest.Main(m) }

// A SKU read now and then is read afresh every time; one read more than
// hotReads times within the window is answered from the last answer until
// the window ends.
func TestProductCacheKeepsAnswersOfHotSKUsOnly(t *testing.T) {
	pc := newProductCache(time.Hour)
	var fetches atomic.Int64
	fetch := func(context.Context) (contract.Product, error) {
		n := fetches.Add(1)
		return contract.Product{SKU: "a", Available: n}, nil
	}
	ctx := context.Background()
	for i := 1; i <= hotReads; i++ {
		p, err := pc.get(ctx, "a", fetch)
		if err != nil || p.Available != int64(i) {
			t.Fatalf("read %d = %d, %v; want a fresh answer (%d)", i, p.Available, err, i)
		}
	}
	for i := 0; i < 3; i++ {
		if p, _ := pc.get(ctx, "a", fetch); p.Available != hotReads {
			t.Errorf("hot read = %d, want the last answer (%d)", p.Available, hotReads)
		}
	}
	if n := fetches.Load(); n != hotReads {
		t.Errorf("%d fetches, want %d", n, hotReads)
	}
	// Another SKU is not hot.
	if p, _ := pc.get(ctx, "b", fetch); p.Available != hotReads+1 {
		t.Errorf("another SKU = %d, want fresh", p.Available)
	}
	// The window ends: fresh again.
	short := newProductCache(time.Millisecond)
	short.get(ctx, "a", fetch)
	time.Sleep(5 * time.Millisecond)
	before := fetches.Load()
	short.get(ctx, "a", fetch)
	if fetches.Load() != before+1 {
		t.Error("a read after the window did not fetch")
	}
}
