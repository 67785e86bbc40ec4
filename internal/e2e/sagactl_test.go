package e2e

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/orchestrator/order"
	"github.com/sagaflow/sagaflow/saga"
)

// TestSagactlOperatesAStuckSaga: an operator finds a stuck saga with
// sagactl, reads it and its plan, sees the expired commands in saga.dead,
// replays it with a reason once the worker is back, re-drives the dead
// letters, and reads the outbox; each command against the real binaries.
func TestSagactlOperatesAStuckSaga(t *testing.T) {
	s := testenv.StartT(t, shortAttempts("carol=carol-token-0123456789"))
	ctl := func(wantCode int, args ...string) string {
		t.Helper()
		out, code, err := s.RunCommand("sagactl", append([]string{"--url", s.AdminURL, "--token", "carol-token-0123456789"}, args...)...)
		if err != nil || code != wantCode {
			t.Fatalf("sagactl %s: exit %d (want %d), %v:\n%s", strings.Join(args, " "), code, wantCode, err, out)
		}
		return out
	}
	id, sk, b := stuckOrder(t, s)

	var list struct {
		Sagas []struct {
			SagaID string `json:"saga_id"`
		} `json:"sagas"`
	}
	if err := json.Unmarshal([]byte(ctl(0, "-o", "json", "sagas", "list", "--state", "stuck")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Sagas) != 1 || list.Sagas[0].SagaID != id {
		t.Fatalf("sagas list --state stuck: %+v, want %s", list, id)
	}
	// The console's filters: by step, by text (the customer is in the data).
	if out := ctl(0, "sagas", "list", "--state", "stuck", "--step", order.StepReserveStock, "--q", "c-1"); !strings.Contains(out, id) {
		t.Errorf("sagas list --step reserve_stock --q c-1 does not list %s:\n%s", id, out)
	}
	if out := ctl(0, "sagas", "list", "--state", "stuck", "--q", "no-such-customer"); strings.Contains(out, id) {
		t.Errorf("sagas list --q no-such-customer lists %s:\n%s", id, out)
	}
	ctl(1, "sagas", "list", "--older-than", "a while")
	if out := ctl(0, "sagas", "get", id); !strings.Contains(out, "stuck") || !strings.Contains(out, order.StepReleaseStock) {
		t.Errorf("sagas get:\n%s", out)
	}

	// The plan: release_stock again, to inventory's queue, with its key;
	// nothing changes.
	plan := ctl(0, "sagas", "replay", "--state", "stuck", "--older-than", "0s", "--dry-run", "--reason", "checking")
	for _, want := range []string{"dry run", id, "inventory.release to " + contract.InventoryQueue, "key " + id + ":" + order.StepReleaseStock} {
		if !strings.Contains(plan, want) {
			t.Errorf("the plan does not say %q:\n%s", want, plan)
		}
	}
	stuckSaga(t, s, id)

	// The commands that waited for inventory expired into saga.dead.
	b.waitQueue("saga.dead", "expired commands", func(q amqp.Queue) bool { return q.Messages > 0 })
	if out := ctl(0, "dlq", "list"); !strings.Contains(out, "expired") || !strings.Contains(out, contract.InventoryQueue) {
		t.Errorf("dlq list:\n%s", out)
	}

	// Without a reason, nothing is replayed.
	if out, code, _ := s.RunCommand("sagactl", "--url", s.AdminURL, "--token", "carol-token-0123456789", "sagas", "replay", id); code != 1 ||
		!strings.Contains(out, "reason is required") {
		t.Errorf("replay without a reason: exit %d:\n%s", code, out)
	}
	restart(t, s, b, "inventory", contract.InventoryQueue)
	if out := ctl(0, "sagas", "replay", "--state", "stuck", "--reason", "inventory is back"); !strings.Contains(out, "replayed 1 sagas") {
		t.Errorf("bulk replay:\n%s", out)
	}
	if v := s.WaitTerminal(t, []string{id}, waitFor)[id]; v.State != order.StateCancelled {
		t.Errorf("after the replay: %s (%s), want cancelled", v.State, v.Reason)
	}
	trail(t, s, id, "order.cancelled")
	if out := ctl(0, "sagas", "events", id); !strings.Contains(out, "saga.replayed") || !strings.Contains(out, "by carol: inventory is back") {
		t.Errorf("sagas events:\n%s", out)
	}

	// Re-drive the expired commands: inventory's inbox knows them.
	if out := ctl(0, "dlq", "redrive", "--queue", contract.InventoryQueue, "--reason", "inventory is back"); !strings.Contains(out, "re-drove") ||
		strings.Contains(out, "re-drove 0 ") {
		t.Errorf("dlq redrive:\n%s", out)
	}
	// Each re-driven command is on its saga's record.
	trail(t, s, id, saga.EventRedriven)
	if out := ctl(0, "sagas", "events", id); !strings.Contains(out, "saga.redriven") || !strings.Contains(out, "by carol: inventory is back") {
		t.Errorf("sagas events after the re-drive:\n%s", out)
	}
	var dead struct {
		DeadLetters []struct{ Queue string } `json:"dead_letters"`
	}
	if err := json.Unmarshal([]byte(ctl(0, "-o", "json", "dlq", "list")), &dead); err != nil {
		t.Fatal(err)
	}
	for _, d := range dead.DeadLetters {
		if d.Queue == contract.InventoryQueue {
			t.Errorf("an inventory dead letter is still there after the re-drive: %+v", dead)
		}
	}
	if p := s.Product(t, sk); p.Available != 10 || p.Reserved != 0 {
		t.Errorf("stock %+v after the re-drive, want 10 available (the re-driven commands are duplicates)", p)
	}
	if out := ctl(0, "outbox", "inspect"); !strings.Contains(out, "outbox rows") {
		t.Errorf("outbox inspect:\n%s", out)
	}
	if out := ctl(0, "sagas", "ledger", id); !strings.Contains(out, "payment") {
		t.Errorf("sagas ledger:\n%s", out)
	}
	ctl(2, "sagas", "explode")
}

// shortAttempts is a deployment whose sagas give up within seconds (two
// attempts of 1.5 s), so that a test sees one stuck soon, with the
// operators' named admin tokens.
func shortAttempts(tokens string) testenv.Options {
	return testenv.Options{Env: map[string]string{
		"STEP_TIMEOUT": "1500ms", "STEP_MAX_TIMEOUT": "1500ms", "STEP_ATTEMPTS": "2",
		"COMPENSATION_ATTEMPTS": "2", "RETRIABLE_ATTEMPTS": "2", "ADMIN_TOKENS": tokens,
	}}
}

// stuckOrder stocks a product of 10, stops inventory and places an order
// of one, which gets stuck compensating (reserve_stock, then
// release_stock, out of attempts); inventory stays down.
func stuckOrder(t *testing.T, s *testenv.System) (id, product string, b *broker) {
	t.Helper()
	product = sku(t, "a")
	s.PutProduct(t, product, "Lamp", 4000, 10)
	b = dialBroker(t, s)
	if _, err := s.Kill("inventory", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	id = s.Place(t, testenv.OrderSpec{Items: testenv.Items(product, 1)})
	stuckSaga(t, s, id)
	return id, product, b
}
