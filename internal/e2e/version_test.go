package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/internal/testenv"
)

// An orchestrator refuses to start while a live saga is of a version of
// its definition it neither drives nor upgrades (here, one a newer
// deployment started), listing them; "orchestrator check-deploy" prints
// the same for CI and exits 4, and 0 once nothing would be stranded.
func TestOrchestratorRefusesToStrandSagas(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	t.Parallel()
	s := testenv.StartT(t, testenv.Options{Services: []string{"orchestrator"}})
	out, code, err := s.RunCommand("orchestrator", "check-deploy")
	if err != nil || code != 0 || !strings.Contains(out, "every live saga can be driven") {
		t.Fatalf("check-deploy on a fresh deployment: exit %d, %v:\n%s", code, err, out)
	}

	// No workers run: the order waits at its first step. Then a newer
	// deployment's version takes it over (as its first decision would).
	id := s.Place(t, testenv.OrderSpec{Customer: "c-versions", Items: testenv.Items(sku(t, "a"), 1)})
	pool := s.Pool(t, "orchestrator")
	if _, err := pool.Exec(t.Context(), `UPDATE sagas SET version = 7 WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if code, err := s.Kill("orchestrator", syscall.SIGTERM); err != nil || code != 0 {
		t.Fatalf("stopping the orchestrator: exit %d, %v", code, err)
	}

	out, code, err = s.RunCommand("orchestrator", "check-deploy")
	if err != nil || code != 4 {
		t.Fatalf("check-deploy with a saga of version 7: exit %d (want 4), %v:\n%s", code, err, out)
	}
	for _, want := range []string{"order version 1: drives versions 1", "1 live sagas cannot be driven",
		"order version 7, running in state reserving_stock at reserve_stock: 1 sagas", "neither served nor upgraded"} {
		if !strings.Contains(out, want) {
			t.Errorf("check-deploy does not say %q:\n%s", want, out)
		}
	}

	if err := s.StartService("orchestrator", nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for s.Running("orchestrator") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if code, _ := s.Kill("orchestrator", syscall.SIGTERM); code != 1 {
		t.Fatalf("the orchestrator started beside a stranded saga (exit %d):\n%s", code, s.Logs("orchestrator", 10))
	}
	logs := s.Logs("orchestrator", 5)
	if !strings.Contains(logs, "refusing to start: 1 live sagas cannot be driven") || !strings.Contains(logs, "order version 7") {
		t.Errorf("the refusal does not say why:\n%s", logs)
	}

	// Back on a version this deployment drives: it starts.
	if _, err := pool.Exec(t.Context(), `UPDATE sagas SET version = 1 WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if err := s.StartService("orchestrator", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitReady(60 * time.Second); err != nil {
		t.Fatal(err)
	}
}
