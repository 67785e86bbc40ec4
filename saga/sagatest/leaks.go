package sagatest

import (
	"fmt"
	"net/http"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// Main runs a package's tests and, when they pass, fails the run if any
// goroutine outlives them (CheckLeaks): call it from TestMain.
//
//	func TestMain(m *testing.M) { sagatest.Main(m) }
func Main(m *testing.M) {
	os.Exit(CheckedRun(m.Run()))
}

// CheckedRun turns the exit code of a package's tests into the code to
// exit with: a passing run whose goroutines did not all end fails, with
// the goroutines on stderr. For a TestMain that does more around m.Run.
func CheckedRun(code int) int {
	if code != 0 {
		return code
	}
	if err := CheckLeaks(); err != nil {
		fmt.Fprintf(os.Stderr, "goroutines outlived the tests: %v\n", err)
		return 1
	}
	return 0
}

// CheckLeaks reports the goroutines still running once the tests are done
// (goleak, which waits a little for those that are ending): a consumer, a
// pool, a bus or a coordinator a test did not stop. Idle keep-alive
// connections of the default HTTP client are closed first; they are not
// the test's.
func CheckLeaks() error {
	http.DefaultClient.CloseIdleConnections()
	return goleak.Find()
}
