package console

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/sagaflow/sagaflow/saga/sagatest"
)

func TestMain(m *testing.M) { sagatest.Main(m) }

// The session and its guards, without a database: what the handlers see
// is tested end to end in a browser (internal/e2e, TestConsoleReplaysAStuckSaga).
func TestSessionsAndCSRF(t *testing.T) {
	c := New(Options{Tokens: map[string]string{"erin": "erin-token-0123456789"}})
	post := func(path string, form url.Values, cookie *http.Cookie, tlsOn bool) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if cookie != nil {
			r.AddCookie(cookie)
		}
		if tlsOn {
			r.TLS = &tls.ConnectionState{}
		}
		w := httptest.NewRecorder()
		c.ServeHTTP(w, r)
		return w
	}
	if w := post("/ui/login", url.Values{"token": {"wrong"}}, nil, false); w.Code != http.StatusUnauthorized {
		t.Errorf("a wrong token: %d, want 401", w.Code)
	}
	w := post("/ui/login", url.Values{"token": {"erin-token-0123456789"}}, nil, true)
	if w.Code != http.StatusSeeOther {
		t.Fatalf("login: %d", w.Code)
	}
	ck := w.Result().Cookies()[0]
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || !ck.Secure || ck.Path != "/ui/" {
		t.Errorf("session cookie %+v: want HttpOnly, SameSite=Strict, Secure over TLS, Path /ui/", ck)
	}
	if w := post("/ui/login", url.Values{"token": {"erin-token-0123456789"}}, nil, false); w.Result().Cookies()[0].Secure {
		t.Error("Secure without TLS: the cookie would never come back over http")
	}
	// A state-changing form without the session's CSRF token is refused
	// before anything is read or done.
	for _, csrf := range []string{"", "forged"} {
		if w := post("/ui/sagas/0193e4c2-0000-7000-8000-000000000000/replay", url.Values{"csrf": {csrf}, "reason": {"x"}}, ck, true); w.Code != http.StatusForbidden {
			t.Errorf("replay with csrf %q: %d, want 403", csrf, w.Code)
		}
	}
	if w := post("/ui/logout", url.Values{"csrf": {"forged"}}, ck, true); w.Code != http.StatusForbidden {
		t.Errorf("logout with a forged csrf: %d, want 403", w.Code)
	}
	r := httptest.NewRequest(http.MethodGet, "/ui/", nil)
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, r)
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/ui/login" {
		t.Errorf("a page without a session: %d to %q, want the login page", rec.Code, rec.Header().Get("Location"))
	}
	if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
}
