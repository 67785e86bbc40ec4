// Package testenv runs whole sagaflow deployments for end-to-end tests: the
// real binaries, built once per test process, on a fresh PostgreSQL
// database and a fresh RabbitMQ vhost, driven through the REST API.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/saga/sagatest"
)

// Workers are the command workers; Services all binaries in start order.
var (
	Workers  = []string{"inventory", "payment", "shipping", "notification", "audit"}
	Services = append([]string{"orchestrator"}, Workers...)
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds every binary once per test process (go build's cache
// makes it quick) and returns their directory. With SAGAFLOW_RACE set they
// are built with the race detector, and a race they report is a crash.
func Binaries() (string, error) {
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		binDir, err = os.MkdirTemp("", "sagaflow-bin-")
		if err != nil {
			buildErr = err
			return
		}
		args := []string{"build", "-o", binDir + string(os.PathSeparator)}
		if os.Getenv("SAGAFLOW_RACE") != "" {
			args = append(args, "-race") // the services under the race detector
		}
		cmd := exec.Command("go", append(args, "./orchestrator", "./workers/...", "./sagactl")...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	return binDir, buildErr
}

// RemoveBinaries deletes what Binaries built; call it from TestMain once
// the package's tests are done.
func RemoveBinaries() {
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the sagaflow module")
	}
	return filepath.Dir(mod), nil
}

// Options shape a deployment.
type Options struct {
	// Services to start (default Services).
	Services []string
	// Env is added to every service's environment.
	Env map[string]string
	// ServiceEnv is added to one service's environment.
	ServiceEnv map[string]map[string]string
	// Servers are the PostgreSQL and RabbitMQ to use (default
	// sagatest.DefaultServers(): the machine's); fault tests pass their
	// private ones (PrivateServers).
	Servers *sagatest.Servers
}

// serverError is a failure to set up the deployment's database or vhost.
type serverError struct {
	what string
	err  error
}

func (e *serverError) Error() string { return e.what + ": " + e.err.Error() }
func (e *serverError) Unwrap() error { return e.err }

// System is one running deployment with its own database, vhost, ports
// and processes.
type System struct {
	Name    string
	DBURL   string
	AMQPURL string
	BaseURL string
	// AdminURL is the orchestrator's admin listener (ADMIN_ADDR): /admin/*,
	// /metrics, /debug/pprof/.
	AdminURL   string
	AdminToken string
	HTTP       *http.Client

	opts   Options
	bin    string
	logDir string
	env    []string

	mu      sync.Mutex
	procs   map[string]*exec.Cmd
	exited  map[string]chan struct{}
	metrics map[string]string // worker -> metrics address
	apis    map[string]string // orchestrator instance -> base URL
	admins  map[string]string // orchestrator instance -> admin listener's base URL
}

// binaryOf maps an instance name to its binary: "orchestrator-2" runs
// bin/orchestrator with its own port.
func binaryOf(name string) string {
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		return name[:i]
	}
	return name
}

// Start brings a deployment up and waits until every service is ready.
func Start(opts Options) (*System, error) {
	if len(opts.Services) == 0 {
		opts.Services = Services
	}
	if opts.Servers == nil {
		srv := sagatest.DefaultServers()
		opts.Servers = &srv
	}
	bin, err := Binaries()
	if err != nil {
		return nil, err
	}
	s := &System{
		Name: sagatest.Name("sf_e2e_"), opts: opts, bin: bin,
		HTTP:  &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}},
		procs: map[string]*exec.Cmd{}, exited: map[string]chan struct{}{}, metrics: map[string]string{},
		apis: map[string]string{}, admins: map[string]string{},
	}
	s.AdminToken = "admin-" + s.Name
	if s.logDir, err = os.MkdirTemp("", s.Name+"-logs-"); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if s.DBURL, err = opts.Servers.CreateDatabase(ctx, s.Name); err != nil {
		return nil, &serverError{"PostgreSQL", err}
	}
	if s.AMQPURL, err = opts.Servers.CreateVhost(ctx, s.Name); err != nil {
		_ = opts.Servers.DropDatabase(ctx, s.Name)
		return nil, &serverError{"RabbitMQ", err}
	}
	port, err := freePort()
	if err != nil {
		s.Stop()
		return nil, err
	}
	s.BaseURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	s.apis["orchestrator"] = s.BaseURL
	adminPort, err := freePort()
	if err != nil {
		s.Stop()
		return nil, err
	}
	s.AdminURL = fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	s.admins["orchestrator"] = s.AdminURL
	s.env = append(os.Environ(),
		"DATABASE_URL="+s.DBURL, "AMQP_URL="+s.AMQPURL, fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", port),
		"ADMIN_TOKEN="+s.AdminToken, "LOG_LEVEL=info",
		// Small pools: several deployments share the machine's PostgreSQL.
		"DB_MAX_CONNS=5",
		// Every test's client is 127.0.0.1: the public product route's
		// per-client limit is for tests that set it.
		"PRODUCT_RATE=100000", "PRODUCT_BURST=100000",
		// Tests read stock right after changing it: no cache unless asked.
		"PRODUCT_CACHE_TTL=1ns")
	for k, v := range opts.Env {
		s.env = append(s.env, k+"="+v)
	}
	for _, name := range opts.Services {
		if err := s.StartService(name, nil); err != nil {
			s.Stop()
			return nil, err
		}
	}
	if err := s.WaitReady(60 * time.Second); err != nil {
		err = fmt.Errorf("%w\n%s", err, s.AllLogs(20))
		s.Stop()
		return nil, err
	}
	return s, nil
}

// CheckStart stops a test whose deployment did not start: skipped (failed
// under CI=true) when PostgreSQL or RabbitMQ cannot be reached, failed with
// the reason otherwise.
func CheckStart(t testing.TB, err error) {
	t.Helper()
	var se *serverError
	if errors.As(err, &se) {
		sagatest.Unavailable(t, se.what, se.err)
	}
	t.Fatal(err)
}

// StartT starts a deployment for one test, stopped at cleanup; it skips
// (or fails under CI=true) when the services are unreachable.
func StartT(t testing.TB, opts Options) *System {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		CheckStart(t, err)
	}
	t.Cleanup(func() {
		// A process that panicked or died of a runtime error is a bug
		// whatever the test asserted (a killed one just stops).
		if summary, detail := s.Crashes(); summary != "" {
			t.Errorf("crashed: %s\n%s", summary, detail)
		}
		if t.Failed() {
			t.Logf("service logs of %s:\n%s", s.Name, s.AllLogs(40))
		}
		s.Stop()
	})
	return s
}

// Ports handed to services, never twice in one test binary.
var (
	portsMu   sync.Mutex
	ports     = map[int]bool{}
	portLocks []*os.File
)

// freePort returns a port a service can listen on. It is picked below
// Linux's ephemeral range (32768 and up): a port the kernel handed out and
// took back can be reused at once as the source port of any outgoing
// connection (there are hundreds, to PostgreSQL and RabbitMQ), taking it
// before the service that was meant to bind it starts.
//
// A port is also reserved across test binaries (go test runs several at
// once): its lock file, held until this process exits, tells the others to
// pick another, even while the port is unbound (a private server that is
// restarting, a service between two lives).
func freePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	dir := filepath.Join(os.TempDir(), "sagaflow-test-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return 0, err
	}
	for range 1000 {
		p := 20000 + rand.IntN(12000)
		if ports[p] {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(p)), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			return 0, err
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close() // another test binary holds it
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			f.Close()
			continue // taken by someone else
		}
		l.Close()
		ports[p] = true
		portLocks = append(portLocks, f) // held, open, until the process exits
		return p, nil
	}
	return 0, errors.New("testenv: no free port between 20000 and 32000")
}

// StartService starts (or restarts) one binary with extra environment.
func (s *System) StartService(name string, extra map[string]string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cmd, ok := s.procs[name]; ok && cmd.ProcessState == nil {
		select {
		case <-s.exited[name]:
		default:
			return fmt.Errorf("%s is already running", name)
		}
	}
	env := append([]string(nil), s.env...)
	if binaryOf(name) == "orchestrator" {
		base := s.apis[name]
		if base == "" {
			p, err := freePort()
			if err != nil {
				return err
			}
			base = fmt.Sprintf("http://127.0.0.1:%d", p)
			s.apis[name] = base
		}
		admin := s.admins[name]
		if admin == "" {
			p, err := freePort()
			if err != nil {
				return err
			}
			admin = fmt.Sprintf("http://127.0.0.1:%d", p)
			s.admins[name] = admin
		}
		env = append(env, "HTTP_ADDR="+strings.TrimPrefix(base, "http://"), "ADMIN_ADDR="+strings.TrimPrefix(admin, "http://"))
	} else {
		addr := s.metrics[name]
		if addr == "" {
			p, err := freePort()
			if err != nil {
				return err
			}
			addr = fmt.Sprintf("127.0.0.1:%d", p)
			s.metrics[name] = addr
		}
		env = append(env, "METRICS_ADDR="+addr)
	}
	for k, v := range s.opts.ServiceEnv[name] {
		env = append(env, k+"="+v)
	}
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	logf, err := os.OpenFile(filepath.Join(s.logDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(s.bin, binaryOf(name)))
	cmd.Env, cmd.Stdout, cmd.Stderr = env, logf, logf
	// Killed with the test binary, even when it dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	s.procs[name], s.exited[name] = cmd, done
	return nil
}

// Kill sends sig to a service and waits for it to exit (SIGKILL after
// 20s). It returns the exit code (-1 when killed by a signal).
func (s *System) Kill(name string, sig syscall.Signal) (int, error) {
	s.mu.Lock()
	cmd, done := s.procs[name], s.exited[name]
	s.mu.Unlock()
	if cmd == nil {
		return 0, fmt.Errorf("%s was never started", name)
	}
	select {
	case <-done:
		return cmd.ProcessState.ExitCode(), nil
	default:
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return -1, fmt.Errorf("%s did not stop within 20s of %s", name, sig)
	}
	return cmd.ProcessState.ExitCode(), nil
}

// Running reports whether a service's process is alive.
func (s *System) Running(name string) bool {
	s.mu.Lock()
	done := s.exited[name]
	s.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Servers are the PostgreSQL and RabbitMQ the deployment runs on.
func (s *System) Servers() sagatest.Servers { return *s.opts.Servers }

// API is the base URL of an orchestrator instance ("orchestrator",
// "orchestrator-2").
func (s *System) API(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.apis[name]
}

// AdminAPI is the admin listener's base URL of an orchestrator instance.
func (s *System) AdminAPI(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.admins[name]
}

// AdminOf is the admin listener of the orchestrator whose API is at base
// (base itself when none is known).
func (s *System) AdminOf(base string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, b := range s.apis {
		if b == base {
			return s.admins[name]
		}
	}
	return base
}

// AdminPath reports whether path is served by an orchestrator's admin
// listener: /admin/*, /metrics, /debug/pprof/, the console (/ui/).
func AdminPath(path string) bool {
	return strings.HasPrefix(path, "/admin/") || path == "/admin" || strings.HasPrefix(path, "/metrics") ||
		strings.HasPrefix(path, "/debug/pprof/") || strings.HasPrefix(path, "/ui/") || path == "/ui"
}

// MetricsAddr is a worker's metrics/health address.
func (s *System) MetricsAddr(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.metrics[name]
}

// WaitReady waits until the orchestrator's /readyz and every running
// worker's /readyz answer 200.
func (s *System) WaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		last = nil
		for _, name := range s.opts.Services {
			if !s.Running(name) {
				return fmt.Errorf("%s exited:\n%s", name, s.Logs(name, 20))
			}
			url := s.API(name) + "/readyz"
			if binaryOf(name) != "orchestrator" {
				url = "http://" + s.MetricsAddr(name) + "/readyz"
			}
			resp, err := s.HTTP.Get(url)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("%s: /readyz %d", name, resp.StatusCode)
				}
			}
			if err != nil {
				last = err
				break
			}
		}
		if last == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %s: %w", timeout, last)
}

// Logs returns the last n lines of a service's log.
func (s *System) Logs(name string, n int) string {
	b, err := os.ReadFile(filepath.Join(s.logDir, name+".log"))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// AllLogs returns the tails of every service's log.
func (s *System) AllLogs(n int) string {
	var b strings.Builder
	for _, name := range s.opts.Services {
		fmt.Fprintf(&b, "--- %s\n%s\n", name, s.Logs(name, n))
	}
	return b.String()
}

// Crashes tells of every service whose log shows a Go panic, a fatal
// runtime error or a data race: summary names each with its first such
// line ("" when none crashed), detail holds the lines from there (the
// message and the stack of the goroutine that failed).
func (s *System) Crashes() (summary, detail string) {
	var b strings.Builder
	var said []string
	files, _ := filepath.Glob(filepath.Join(s.logDir, "*.log"))
	for _, f := range files {
		log, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(f), ".log")
		lines := strings.Split(string(log), "\n")
		for i, l := range lines {
			if strings.HasPrefix(l, "panic: ") || strings.HasPrefix(l, "fatal error: ") || l == "WARNING: DATA RACE" {
				said = append(said, name+": "+l)
				fmt.Fprintf(&b, "--- %s\n%s\n", name, strings.Join(lines[i:min(len(lines), i+60)], "\n"))
				break
			}
		}
	}
	return strings.Join(said, "; "), b.String()
}

// RunCommand runs a binary of the deployment to its end with the
// deployment's environment and arguments ("check-deploy") and returns
// what it printed and its exit code.
func (s *System) RunCommand(binary string, args ...string) (string, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, binary), args...)
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return string(out), exit.ExitCode(), nil
	}
	return string(out), 0, err
}

// Pool opens a pool on the deployment's database with search_path set to a
// service's schema, closed at cleanup.
func (s *System) Pool(t testing.TB, schema string) *pgxpool.Pool {
	return sagatest.Pool(t, s.DBURL, schema)
}

// Stop stops every service with SIGTERM and removes the database, the vhost
// and the logs.
func (s *System) Stop() {
	var wg sync.WaitGroup
	s.mu.Lock()
	names := make([]string, 0, len(s.procs))
	for n := range s.procs {
		names = append(names, n)
	}
	s.mu.Unlock()
	for _, n := range names {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = s.Kill(n, syscall.SIGTERM) }()
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = s.opts.Servers.DeleteVhost(ctx, s.Name)
	_ = s.opts.Servers.DropDatabase(ctx, s.Name)
	_ = os.RemoveAll(s.logDir)
}
