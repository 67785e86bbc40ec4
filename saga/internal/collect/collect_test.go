package collect

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestBatch(t *testing.T) {
	t.Parallel()
	linger := time.NewTimer(time.Hour)
	defer linger.Stop()
	ctx := context.Background()

	// Whatever is waiting, up to the limit.
	ch := make(chan int, 10)
	for i := range 5 {
		ch <- i
	}
	items, next, _ := Batch(ctx, ch, nil, 3, linger, time.Hour, nil)
	if diff := cmp.Diff([]int{0, 1, 2}, items); diff != "" || next != nil {
		t.Errorf("limited batch (-want +got):\n%s, next %v", diff, next)
	}
	items, _, _ = Batch(ctx, ch, nil, 3, linger, 10*time.Millisecond, nil)
	if diff := cmp.Diff([]int{3, 4}, items); diff != "" {
		t.Errorf("batch cut by the linger (-want +got):\n%s", diff)
	}

	// Something arriving during the linger joins the batch.
	go func() { time.Sleep(5 * time.Millisecond); ch <- 7 }()
	ch <- 6
	if items, _, _ := Batch(ctx, ch, nil, 10, linger, time.Second/2, nil); len(items) < 2 || items[0] != 6 || items[1] != 7 {
		t.Errorf("lingering batch = %v, want 6, 7 first", items)
	}

	// Sizes add up; items are never split, and never pass the limit
	// together: the one that would opens the next batch.
	size := func(s []int) int { return len(s) }
	sl := make(chan []int, 10)
	sl <- []int{1, 2}
	sl <- []int{3}
	sl <- []int{4, 5}
	sl <- []int{6, 7, 8, 9, 10, 11}
	sl <- []int{12}
	sized, carry, _ := Batch(ctx, sl, nil, 4, linger, time.Hour, size)
	if diff := cmp.Diff([][]int{{1, 2}, {3}}, sized); diff != "" {
		t.Errorf("sized batch (-want +got):\n%s", diff)
	}
	// The carried one first; one larger than the limit goes alone.
	sized, carry, _ = Batch(ctx, sl, carry, 4, linger, time.Hour, size)
	if diff := cmp.Diff([][]int{{4, 5}}, sized); diff != "" {
		t.Errorf("carried batch (-want +got):\n%s", diff)
	}
	sized, carry, _ = Batch(ctx, sl, carry, 4, linger, time.Hour, size)
	if diff := cmp.Diff([][]int{{6, 7, 8, 9, 10, 11}}, sized); diff != "" {
		t.Errorf("oversized batch (-want +got):\n%s", diff)
	}
	sized, carry, _ = Batch(ctx, sl, carry, 4, linger, 10*time.Millisecond, size)
	if diff := cmp.Diff([][]int{{12}}, sized); diff != "" || carry != nil {
		t.Errorf("last batch (-want +got):\n%s, next %v", diff, carry)
	}

	// Stopping: a carried item is still handed out, then nil.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if items, _, _ := Batch(cctx, make(chan int), []int{1}, 3, linger, time.Millisecond, nil); len(items) != 1 {
		t.Errorf("carried item after cancel: %v", items)
	}
	if items, _, _ := Batch(cctx, make(chan int), nil, 3, linger, time.Hour, nil); items != nil {
		t.Errorf("gather after cancel = %v, want nil", items)
	}
}
