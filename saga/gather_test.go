package saga

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestGather(t *testing.T) {
	t.Parallel()
	linger := time.NewTimer(time.Hour)
	defer linger.Stop()
	ctx := context.Background()

	// Whatever is waiting, up to the limit.
	ch := make(chan int, 10)
	for i := range 5 {
		ch <- i
	}
	if diff := cmp.Diff([]int{0, 1, 2}, gather(ctx, ch, 3, linger, time.Hour, nil)); diff != "" {
		t.Errorf("limited batch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int{3, 4}, gather(ctx, ch, 3, linger, 10*time.Millisecond, nil)); diff != "" {
		t.Errorf("batch cut by the linger (-want +got):\n%s", diff)
	}

	// Sizes add up: slices count by their length.
	sl := make(chan []int, 10)
	sl <- []int{1, 2}
	sl <- []int{3, 4, 5}
	sl <- []int{6}
	got := gather(ctx, sl, 4, linger, time.Hour, func(s []int) int { return len(s) })
	if diff := cmp.Diff([][]int{{1, 2}, {3, 4, 5}}, got); diff != "" {
		t.Errorf("sized batch (-want +got):\n%s", diff)
	}

	// Something arriving during the linger joins the batch.
	go func() { time.Sleep(5 * time.Millisecond); ch <- 7 }()
	ch <- 6
	if diff := cmp.Diff([]int{6, 7}, gather(ctx, ch, 10, linger, time.Second/2, nil)[:2]); diff != "" {
		t.Errorf("lingering batch (-want +got):\n%s", diff)
	}

	// Nothing, and ctx done: nil.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if got := gather(cctx, make(chan int), 3, linger, time.Hour, nil); got != nil {
		t.Errorf("gather after cancel = %v, want nil", got)
	}
}

func TestGatherWithin(t *testing.T) {
	t.Parallel()
	linger := time.NewTimer(time.Hour)
	defer linger.Stop()
	ctx := context.Background()
	size := func(s []int) int { return len(s) }

	ch := make(chan []int, 10)
	ch <- []int{1, 2}
	ch <- []int{3, 4, 5}
	ch <- []int{6, 7, 8, 9, 10, 11}
	ch <- []int{12}
	// {3,4,5} would pass 4: it opens the next batch instead.
	items, next := gatherWithin(ctx, ch, nil, 4, linger, time.Hour, size)
	if diff := cmp.Diff([][]int{{1, 2}}, items); diff != "" {
		t.Errorf("first batch (-want +got):\n%s", diff)
	}
	// An item larger than the limit goes alone; the carried one first.
	items, next = gatherWithin(ctx, ch, next, 4, linger, time.Hour, size)
	if diff := cmp.Diff([][]int{{3, 4, 5}}, items); diff != "" {
		t.Errorf("carried batch (-want +got):\n%s", diff)
	}
	items, next = gatherWithin(ctx, ch, next, 4, linger, time.Hour, size)
	if diff := cmp.Diff([][]int{{6, 7, 8, 9, 10, 11}}, items); diff != "" {
		t.Errorf("oversized batch (-want +got):\n%s", diff)
	}
	items, next = gatherWithin(ctx, ch, next, 4, linger, 10*time.Millisecond, size)
	if diff := cmp.Diff([][]int{{12}}, items); diff != "" || next != nil {
		t.Errorf("last batch (-want +got):\n%s, next %v", diff, next)
	}

	// Stopping: a carried item is still handed out, then nil.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if items, _ := gatherWithin(cctx, make(chan []int), [][]int{{1}}, 4, linger, time.Millisecond, size); len(items) != 1 {
		t.Errorf("carried item after cancel: %v", items)
	}
	if items, _ := gatherWithin(cctx, make(chan []int), nil, 4, linger, time.Hour, size); items != nil {
		t.Errorf("gather after cancel = %v, want nil", items)
	}
}
