package coordinator

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sagaflow/sagaflow/saga"
)

func TestIntakeCommitsABatchAndStartsWhatHasRoom(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{MaxActive: 2})
	subs := []Submission{submission(normal), submission(normal), submission(high)}
	created := h.create(subs...)

	// Room for two: the high one first, then the first normal one; the
	// second normal one waits pending, and the starter is woken for it.
	var phases []saga.Phase
	for _, in := range created {
		phases = append(phases, h.get(in.ID).Phase)
	}
	if diff := cmp.Diff([]saga.Phase{saga.Running, saga.Pending, saga.Running}, phases); diff != "" {
		t.Errorf("phases (-want +got):\n%s", diff)
	}
	if !h.c.backlog.Load() {
		t.Error("a saga left pending must set the backlog, so that new ones queue behind it")
	}
	select {
	case <-h.c.wake:
	default:
		t.Error("the starter was not woken for the pending saga")
	}
	// Three created events, and the first command of each started saga.
	got := types(h.staged())
	slices.Sort(got)
	if diff := cmp.Diff([]string{"hotel.book", "hotel.book", "trip.created", "trip.created", "trip.created"}, got); diff != "" {
		t.Errorf("messages handed to the relay (-want +got):\n%s", diff)
	}
	if n := h.obs.count(saga.TransitionStart); n != 2 {
		t.Errorf("observer saw %d starts, want 2", n)
	}
	if got, _ := h.c.activeSagas(h.ctx); got != 2 {
		t.Errorf("active estimate %d, want 2", got)
	}
	if h.obs.batch("create") != 3 {
		t.Errorf("create batches observed: %d sagas, want 3", h.obs.batch("create"))
	}
}

func TestIntakeQueuesBehindABacklog(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{MaxActive: 100})
	h.c.backlog.Store(true)
	in := h.create(submission(high))[0]
	if got := h.get(in.ID).Phase; got != saga.Pending {
		t.Errorf("phase %s, want pending: with a backlog, new sagas wait their turn", got)
	}
}

func TestSubmitGroupsCommitsAndHonoursKeys(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	ctx, cancel := context.WithCancel(h.ctx)
	var loops sync.WaitGroup
	loops.Add(1)
	go func() { defer loops.Done(); h.c.createLoop(ctx) }()
	defer func() { cancel(); loops.Wait() }()

	s := submission(normal)
	s.Key, s.Fingerprint = "key-1", "request-1"
	first, created, err := h.c.Submit(h.ctx, s)
	if err != nil || !created {
		t.Fatalf("Submit = %v, created %v", err, created)
	}
	again := submission(normal)
	again.Key, again.Fingerprint = "key-1", "request-1"
	second, created, err := h.c.Submit(h.ctx, again)
	if err != nil || created || second.ID != first.ID {
		t.Errorf("the same key again: %s created %v err %v, want the first saga %s", second.ID, created, err, first.ID)
	}
	other := submission(normal)
	other.Key, other.Fingerprint = "key-1", "another request"
	if _, _, err := h.c.Submit(h.ctx, other); !errors.Is(err, saga.ErrKeyReused) {
		t.Errorf("the key with another request: %v, want ErrKeyReused", err)
	}

	// Concurrent submissions all commit.
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, errs[i] = h.c.Submit(h.ctx, submission(normal))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("submission %d: %v", i, err)
		}
	}
	h.obs.mu.Lock()
	defer h.obs.mu.Unlock()
	if h.obs.created != 21 {
		t.Errorf("observer saw %d sagas created, want 21 (a key that names an existing saga creates none)", h.obs.created)
	}
}

func TestSubmitRefusesAnUnknownDefinitionAndAStoppedIntake(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{QueueSize: 1})
	s := submission(normal)
	s.Definition = "cruise"
	if _, _, err := h.c.Submit(h.ctx, s); !errors.Is(err, ErrUnknownDefinition) {
		t.Errorf("unknown definition: %v, want ErrUnknownDefinition", err)
	}
	// Nobody takes submissions (the loop is not running): the caller's
	// context ends the wait.
	ctx, cancel := context.WithCancel(h.ctx)
	cancel()
	if _, _, err := h.c.Submit(ctx, submission(normal)); !errors.Is(err, context.Canceled) {
		t.Errorf("Submit with no intake running: %v, want context.Canceled", err)
	}
}

func TestIntakeFailsOnlyTheSagaTheStoreRefuses(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	subs := []Submission{submission(normal), submission(normal), submission(normal)}
	h.store.poison = subs[1].ID
	batch := []*creation{h.creation(subs[0]), h.creation(subs[1]), h.creation(subs[2])}
	h.c.createBatch(h.ctx, batch)
	for i, cr := range batch {
		res := <-cr.done
		if wantErr := i == 1; (res.Err != nil) != wantErr || res.Created == wantErr {
			t.Errorf("saga %d: created %v, err %v; want only saga 1 to fail", i, res.Created, res.Err)
		}
	}
	if got := types(h.staged()); len(got) != 4 {
		t.Errorf("staged %v, want the created event and first command of the two good sagas", got)
	}
}

func TestIntakeAnswersEveryoneWhenTheStoreIsDown(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	h.store.setDown(true)
	batch := []*creation{h.creation(submission(normal)), h.creation(submission(high))}
	h.c.createBatch(h.ctx, batch)
	for i, cr := range batch {
		if res := <-cr.done; !errors.Is(res.Err, errStoreDownByTheTest) {
			t.Errorf("saga %d: %v, want the store's error", i, res.Err)
		}
	}
	if got := h.staged(); len(got) != 0 {
		t.Errorf("staged %v with nothing committed", types(got))
	}
}
