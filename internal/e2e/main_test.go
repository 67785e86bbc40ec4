// Package e2e tests sagaflow end to end: the real binaries on a fresh
// database and vhost, driven through the REST API (and, where a test must
// play a misbehaving peer, through the broker).
package e2e

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/saga/sagatest"
)

// shared is one deployment for the tests that do not kill processes. They
// run one after another: the bad-input tests count what is stored.
var (
	shared   *testenv.System
	startErr error
	errShort = errors.New("-short")
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		startErr = errShort
		os.Exit(sagatest.CheckedRun(m.Run()))
	}
	shared, startErr = testenv.Start(testenv.Options{})
	code := m.Run()
	if shared != nil {
		shared.Stop()
	}
	testenv.RemoveBinaries()
	os.Exit(sagatest.CheckedRun(code))
}

// system returns the shared deployment, and dumps its logs if the test
// fails.
func system(t *testing.T) *testenv.System {
	t.Helper()
	if startErr == errShort {
		t.Skip("end-to-end test: skipped with -short")
	}
	if startErr != nil {
		testenv.CheckStart(t, startErr)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("service logs:\n%s", shared.AllLogs(30))
		}
	})
	return shared
}

// sku returns a product name unique to this test.
func sku(t *testing.T, suffix string) string {
	return fmt.Sprintf("%s-%s", strings.NewReplacer("/", "-", "_", "-").Replace(strings.ToLower(t.Name())), suffix)
}
