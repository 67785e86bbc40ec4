package sagatest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

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

// SharedVhost is a RabbitMQ vhost that a package's tests share, for
// packages where a vhost per test would cost more than the tests: MainVhost
// creates it before they run and deletes it after.
type SharedVhost struct {
	// Name is the vhost's name.
	Name string
	url  string
	err  error
}

// URL returns the shared vhost's AMQP URL, or skips (fails under CI=true)
// the test if it could not be created.
func (v *SharedVhost) URL(t testing.TB) string {
	t.Helper()
	if v.err != nil {
		Unavailable(t, "RabbitMQ", v.err)
	}
	return v.url
}

// MainVhost is Main for a package whose tests share a vhost: it creates v on
// the default servers, runs the tests, deletes it, then checks for leaks.
//
//	var vhost sagatest.SharedVhost
//	func TestMain(m *testing.M) { sagatest.MainVhost(m, &vhost) }
func MainVhost(m *testing.M, v *SharedVhost) {
	srv := DefaultServers()
	v.Name = Name("sf_test_")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	v.url, v.err = srv.CreateVhost(ctx, v.Name)
	cancel()
	code := m.Run()
	if v.err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := srv.DeleteVhost(ctx, v.Name); err != nil {
			fmt.Fprintf(os.Stderr, "delete vhost %s: %v\n", v.Name, err)
		}
		cancel()
	}
	os.Exit(CheckedRun(code))
}
