package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/testenv"
)

// browser starts a headless Chromium (Debian's chromium package, which
// make services installs) for one test and returns its context.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Chromium is not installed (Debian's chromium package; make services installs it): %v", err)
		}
		t.Skipf("Chromium is not installed (Debian's chromium package; make services installs it)")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1000),
		chromedp.Flag("headless", true), chromedp.Flag("no-sandbox", true), chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true), chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-dev-shm-usage", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancelCtx(); cancelAlloc() })
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Chromium does not start: %v", err)
		}
		t.Skipf("Chromium does not start: %v", err)
	}
	return ctx
}

// TestConsoleReplaysAStuckSaga drives the operator console in a real
// headless Chromium: log in, find the stuck saga on the overview, open it,
// replay it with a reason, see it finish, and see the operator's event,
// with the operator and the reason, in its audit trail.
func TestConsoleReplaysAStuckSaga(t *testing.T) {
	ctx := browser(t)
	s := testenv.StartT(t, shortAttempts("dana=dana-token-0123456789"))
	id, _, b := stuckOrder(t, s)
	restart(t, s, b, "inventory", contract.InventoryQueue)

	ui := s.AdminURL + "/ui"
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return v
	}
	// Logged out, the console sends the operator to its login form.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(ui+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), "dana-token-0123456789"),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("stuck")),
	); err != nil {
		t.Fatalf("log in: %v", err)
	}
	page := text("#stuck")
	if !strings.Contains(page, id) || !strings.Contains(page, "release_stock: gave up") {
		t.Fatalf("the overview's stuck sagas do not show %s with its reason:\n%s", id, page)
	}
	if shot := os.Getenv("SAGAFLOW_SCREENSHOT_OVERVIEW"); shot != "" {
		screenshot(t, ctx, shot)
	}
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#stuck a.saga")),
		chromedp.WaitVisible(chromedp.ID("replay")),
	); err != nil {
		t.Fatalf("open the saga: %v", err)
	}
	reason, cause := text("#stuck-reason"), text("#cause")
	if cause != "compensation_exhausted" {
		t.Errorf("the saga page says the cause is %q, want compensation_exhausted", cause)
	}
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS("#replay input[name=reason]"), "inventory is back"),
		chromedp.Submit(chromedp.ID("replay")),
		chromedp.WaitVisible(chromedp.CSS(".flash")),
	); err != nil {
		t.Fatalf("replay: %v", err)
	}
	page = text(".flash")
	if !strings.Contains(reason, "release_stock") || !strings.Contains(page, "replay done by dana") {
		t.Fatalf("saga page: reason %q, flash %q", reason, page)
	}
	// The saga finishes (cancelled: its stock released), and the trail
	// shows who replayed it and why.
	deadline := time.Now().Add(waitFor)
	var state, trail string
	for {
		if err := chromedp.Do(ctx, chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("trail"))); err != nil {
			t.Fatal(err)
		}
		state, trail = text("#state"), text("#trail")
		if state == "cancelled" && strings.Contains(trail, "order.cancelled") || time.Now().After(deadline) {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	if state != "cancelled" || !strings.Contains(trail, "saga.replayed") || !strings.Contains(trail, "by dana: inventory is back") {
		t.Fatalf("after the replay: state %q, trail:\n%s", state, trail)
	}
	if shot := os.Getenv("SAGAFLOW_SCREENSHOT_SAGA"); shot != "" {
		screenshot(t, ctx, shot)
	}
	// A form without the session's CSRF token changes nothing.
	if r, err := testenv.Request(s.HTTP, s.AdminURL, "POST", "/ui/sagas/"+id+"/replay", []byte("reason=x&csrf=forged"),
		map[string]string{"Content-Type": "application/x-www-form-urlencoded"}); err != nil || r.Status != 401 {
		t.Errorf("a replay without a session: %d %v, want 401", r.Status, err)
	}
}

func screenshot(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
}
