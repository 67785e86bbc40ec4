package console

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/coordinator"
	"github.com/sagaflow/sagaflow/saga/pgstore"
)

// Bulk actions, whether the console or the admin API asks: at most
// MaxBulk sagas or messages at once, sagas replayed at BulkRate per
// second, and one bulk action at a time per process (TryBulk), so that
// an operator's replay of a thousand stuck sagas does not reach the
// workers as a flood.
const (
	MaxBulk  = 1000
	BulkRate = 50
)

var bulkGate sync.Mutex

// TryBulk takes the process's bulk gate; ok is false while another bulk
// action holds it. Call release when done.
func TryBulk() (release func(), ok bool) {
	if !bulkGate.TryLock() {
		return nil, false
	}
	return bulkGate.Unlock, true
}

// SelectSagas pages through the store's listing (f.Definition, f.State,
// newest first, from f.Cursor), keeps what f matches, and returns up to
// limit with the cursor of the next page ("" at the end); it reads at
// most scan rows.
func SelectSagas(ctx context.Context, store *pgstore.Store, f Filter, limit, scan int) ([]saga.Instance, string, error) {
	lf := pgstore.ListFilter{Definition: f.Definition, State: f.State, Limit: 100}
	if f.Cursor != "" {
		id, err := uuid.Parse(f.Cursor)
		if err != nil {
			return nil, "", fmt.Errorf("cursor %q is not a saga id", f.Cursor)
		}
		lf.Before = id
	}
	var out []saga.Instance
	for read := 0; read < scan; {
		list, err := store.List(ctx, lf)
		if err != nil {
			return nil, "", err
		}
		for i := range list {
			if f.Matches(&list[i]) {
				out = append(out, list[i])
				if len(out) == limit {
					return out, list[i].ID.String(), nil
				}
			}
		}
		read += len(list)
		if len(list) < lf.Limit {
			return out, "", nil
		}
		lf.Before = list[len(list)-1].ID
	}
	return out, lf.Before.String(), nil
}

// Replayed is one saga of a bulk replay: what its replay does (or would
// do), and why it was not (or would not be) replayed.
type Replayed struct {
	Instance saga.Instance
	Plan     saga.ReplayPlan
	Err      error
}

var errNotDriven = errors.New("not a definition this orchestrator drives")

// ReplayAll works out the plan of each saga's replay (saga.Definition.
// PlanReplay) and, with an action, replays each as it planned, at
// BulkRate per second, in the caller's hold of the bulk gate. It returns
// ctx's error if ctx ends on the way.
func ReplayAll(ctx context.Context, coord *coordinator.Coordinator, sagas []saga.Instance, a *coordinator.Action) ([]Replayed, error) {
	tick := time.NewTicker(time.Second / BulkRate)
	defer tick.Stop()
	out := make([]Replayed, 0, len(sagas))
	for _, in := range sagas {
		r := Replayed{Instance: in, Err: errNotDriven}
		if def := coord.Definition(in.Definition); def != nil {
			r.Plan, r.Err = def.PlanReplay(in, time.Now())
		}
		if r.Err == nil && a != nil {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return out, ctx.Err()
			}
			_, r.Err = coord.Replay(ctx, in.ID, *a)
		}
		out = append(out, r)
	}
	return out, nil
}

// Redrive sends the dead letters match picks (up to limit) back to where
// they came from, in the caller's hold of the bulk gate, and puts each
// that belongs to a saga this coordinator has on that saga's record: a
// saga.redriven event with the operator, the reason and the message id.
// A message of a saga the store does not have (another deployment's) has
// no trail to go into.
func Redrive(ctx context.Context, bus *amqpbus.Bus, coord *coordinator.Coordinator, a coordinator.Action, limit int,
	match func(amqpbus.DeadMessage) bool, log zerolog.Logger) ([]amqpbus.DeadMessage, error) {
	done, err := bus.Redrive(ctx, limit, match)
	for _, m := range done {
		id, perr := uuid.Parse(m.SagaID)
		if perr != nil {
			continue
		}
		if nerr := coord.Note(ctx, id, a, saga.EventRedriven, m.MessageID); nerr != nil && !errors.Is(nerr, saga.ErrNotFound) {
			log.Warn().Err(nerr).Str("saga_id", id.String()).Str("message_id", m.MessageID).Msg("re-drive not recorded in the saga's trail")
		}
	}
	return done, err
}
