package amqpbus_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/sagatest"
)

// signalSink is a coordinator's HandleSignals as far as the bus can tell:
// it waits for the sagas in waiting, refuses the others as a store would,
// and fails whole batches while failing says so.
type signalSink struct {
	mu      sync.Mutex
	waiting map[uuid.UUID]bool
	ended   map[uuid.UUID]bool
	failing map[uuid.UUID]int // failed commits still to answer
	got     map[uuid.UUID]saga.Signal
}

func (s *signalSink) HandleSignals(_ context.Context, bodies [][]byte) ([]error, saga.ReplyWait) {
	s.mu.Lock()
	defer s.mu.Unlock()
	poison := make([]error, len(bodies))
	dead := map[int]error{}
	var failed error
	for i, body := range bodies {
		env, err := saga.Decode(body)
		if err != nil {
			poison[i] = err
			continue
		}
		id, err := uuid.Parse(env.SagaID)
		if err != nil {
			poison[i] = fmt.Errorf("%w: saga_id %q is not a UUID", saga.ErrMalformed, env.SagaID)
			continue
		}
		switch {
		case s.failing[id] > 0:
			s.failing[id]--
			failed = errors.New("database restarting")
		case s.waiting[id]:
			s.got[id] = saga.Signal{Name: env.Type, Key: env.ID, Payload: env.Payload}
		case s.ended[id]:
			dead[i] = saga.ErrNotWaiting
		default:
			dead[i] = saga.ErrNotFound
		}
	}
	return poison, func(context.Context) (map[int]error, error) {
		if failed != nil {
			return nil, failed
		}
		return dead, nil
	}
}

func (s *signalSink) signal(id uuid.UUID) (saga.Signal, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sig, ok := s.got[id]
	return sig, ok
}

func signalEvent(name, key, sagaID, payload string) saga.Message {
	return saga.SignalMessage(sagaID, saga.Signal{Name: name, Key: key, Payload: json.RawMessage(payload)}, time.Now())
}

// TestServeSignals: signals reach the coordinator by their name's binding; those it refuses, and those that do not decode,
// are dead-lettered with why; a store that fails is tried again.
func TestServeSignals(t *testing.T) {
	t.Parallel()
	b := newBus(t, amqpbus.Config{})
	tap := deadLetterTap(t, b)
	if err := b.Declare(testContext(t), amqpbus.SignalTopology([]string{"parcel.delivered"}, amqpbus.QueueOptions{})); err != nil {
		t.Fatal(err)
	}
	waiting, flaky, ended, stranger := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	sink := &signalSink{
		waiting: map[uuid.UUID]bool{waiting: true, flaky: true},
		ended:   map[uuid.UUID]bool{ended: true},
		failing: map[uuid.UUID]int{flaky: 2},
		got:     map[uuid.UUID]saga.Signal{},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.ServeSignals(ctx, sink, amqpbus.ConsumerConfig{RequeueDelay: 20 * time.Millisecond}, 16)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeSignals = %v after its context ended", err)
		}
	})

	keys := map[string]string{}
	for _, k := range []string{"ok", "flaky", "ended", "stranger", "malformed", "bad-id", "unbound"} {
		keys[k] = sagatest.Name("sig_" + strings.ReplaceAll(k, "-", "_") + "_")
	}
	bad := saga.Message{Kind: saga.MessageSignal, Type: "parcel.delivered", MessageID: keys["malformed"], Body: []byte("{not json")}
	publish(t, b,
		signalEvent("parcel.delivered", keys["ok"], waiting.String(), `{"delivered_at":"noon"}`),
		signalEvent("parcel.delivered", keys["flaky"], flaky.String(), `{}`),
		signalEvent("parcel.delivered", keys["ended"], ended.String(), `{}`),
		signalEvent("parcel.delivered", keys["stranger"], stranger.String(), `{}`),
		bad,
		signalEvent("parcel.delivered", keys["bad-id"], "not-a-uuid", `{}`),
		signalEvent("parcel.lost", keys["unbound"], waiting.String(), `{}`),
	)

	// A signal no queue is bound for is dead-lettered by the broker (the
	// exchange's alternate): not lost.
	dead := getMessages(t, b, tap, keys["ended"], keys["stranger"], keys["malformed"], keys["bad-id"], keys["unbound"])
	for k, want := range map[string]string{"ended": "not waiting for this signal", "stranger": "saga: not found", "malformed": "malformed", "bad-id": "is not a UUID"} {
		d := dead[keys[k]]
		if reason, _ := d.Headers["x-sagaflow-reason"].(string); !strings.Contains(reason, want) {
			t.Errorf("%s: dead letter's reason %q, want it to say %q", k, reason, want)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		_, ok1 := sink.signal(waiting)
		_, ok2 := sink.signal(flaky)
		if ok1 && ok2 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	sig, ok := sink.signal(waiting)
	if !ok || sig.Name != "parcel.delivered" || sig.Key != keys["ok"] || string(sig.Payload) != `{"delivered_at":"noon"}` {
		t.Errorf("the waiting saga got %+v (%v), want parcel.delivered %s with its payload", sig, ok, keys["ok"])
	}
	if _, ok := sink.signal(flaky); !ok {
		t.Error("the signal whose store failed twice never arrived")
	}
	if n := queueDepth(t, b, amqpbus.SignalQueue); n != 0 {
		t.Errorf("%s holds %d messages, want none (an unbound name is not routed to it)", amqpbus.SignalQueue, n)
	}
}
