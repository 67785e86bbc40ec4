package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagaflow/sagaflow/saga/sagatest"
)

// The fault tests stop, kill and restart PostgreSQL and RabbitMQ. They do
// it to servers of their own, never to the machine's: a PostgreSQL
// initialised into a temporary directory and a RabbitMQ node with its own
// name, ports, Erlang port mapper and data directory, both started from the
// machine's installed server binaries (Debian's postgresql and
// rabbitmq-server packages, which `make services` installs) and removed at
// the end of the test.

// PrivateServers are a PostgreSQL server and a RabbitMQ node that belong to
// one test.
type PrivateServers struct {
	Postgres *PrivatePostgres
	RabbitMQ *PrivateRabbitMQ
}

// Servers are what a deployment (Options.Servers) connects to.
func (p *PrivateServers) Servers() *sagatest.Servers {
	return &sagatest.Servers{Postgres: p.Postgres.URL("postgres"), AMQP: p.RabbitMQ.URL()}
}

// StartPrivateServers starts both servers (at once) for a test and removes
// them at its cleanup. Without the server binaries the test is skipped
// (failed under CI=true).
func StartPrivateServers(t testing.TB) *PrivateServers {
	t.Helper()
	var (
		p      PrivateServers
		wg     sync.WaitGroup
		pe, re error
	)
	wg.Add(2)
	go func() { defer wg.Done(); p.Postgres, pe = StartPrivatePostgres() }()
	go func() { defer wg.Done(); p.RabbitMQ, re = StartPrivateRabbitMQ() }()
	wg.Wait()
	t.Cleanup(func() {
		if p.Postgres != nil {
			p.Postgres.Remove()
		}
		if p.RabbitMQ != nil {
			p.RabbitMQ.Remove()
		}
	})
	for _, err := range []error{pe, re} {
		var nb *noBinaryError
		switch {
		case errors.As(err, &nb) && os.Getenv("CI") == "true":
			t.Fatalf("%v (under CI=true the fault tests must run)", err)
		case errors.As(err, &nb):
			t.Skipf("%v", err)
		case err != nil:
			t.Fatal(err)
		}
	}
	return &p
}

// noBinaryError says a server's binaries are not installed.
type noBinaryError struct{ what, hint string }

func (e *noBinaryError) Error() string {
	return fmt.Sprintf("%s is not installed: the fault tests start a private one (%s; `make services` installs it)", e.what, e.hint)
}

// privateDir makes a temporary directory that the server's user may use.
func privateDir(prefix string, owner *syscall.Credential) (string, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	if owner != nil {
		if err := os.Chown(dir, int(owner.Uid), int(owner.Gid)); err != nil {
			os.RemoveAll(dir)
			return "", err
		}
	}
	return dir, nil
}

// proc is a server process in a process group of its own.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(cmd *exec.Cmd, logPath string, owner *syscall.Credential) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Killed with the test binary, even when it dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: owner, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

// signal sends sig to the process group and waits up to timeout for the
// leader to exit; then it kills the group.
func (p *proc) signal(sig syscall.Signal, timeout time.Duration) error {
	if p == nil {
		return nil
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("%s did not exit within %s of %s", filepath.Base(p.cmd.Path), timeout, sig)
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail returns the last lines of a log file, for error messages.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// PrivatePostgres is a PostgreSQL server in a temporary directory, on a port
// of its own, with trust authentication for the role "sagaflow".
type PrivatePostgres struct {
	Port int

	bin   string // directory of initdb and postgres
	dir   string // data directory, Unix socket, log
	owner *syscall.Credential
	mu    sync.Mutex
	p     *proc
}

// postgresBinDir finds the server binaries: Debian keeps them out of PATH.
func postgresBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", &noBinaryError{"PostgreSQL's server (initdb)", "Debian: apt-get install postgresql"}
}

func versionOf(bindir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(bindir)))
	return v
}

// serverUser is who runs a server: the current user, or, as root (which
// PostgreSQL refuses to run as), the named system user.
func serverUser(name string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("running as root, the private server runs as %q: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// StartPrivatePostgres initialises a cluster in a temporary directory and
// starts it. Remove stops it and deletes the directory.
func StartPrivatePostgres() (*PrivatePostgres, error) {
	bin, err := postgresBinDir()
	if err != nil {
		return nil, err
	}
	owner, err := serverUser("postgres")
	if err != nil {
		return nil, err
	}
	dir, err := privateDir("sagaflow-pg-", owner)
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	pg := &PrivatePostgres{Port: port, bin: bin, dir: dir, owner: owner}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", pg.dataDir(), "-U", "sagaflow",
		"-A", "trust", "-E", "UTF8", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: owner}
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	if err := pg.Start(); err != nil {
		pg.Remove()
		return nil, err
	}
	return pg, nil
}

func (pg *PrivatePostgres) dataDir() string { return filepath.Join(pg.dir, "data") }
func (pg *PrivatePostgres) logPath() string { return filepath.Join(pg.dir, "postgres.log") }

// URL is the URL of a database on the server.
func (pg *PrivatePostgres) URL(database string) string {
	return fmt.Sprintf("postgres://sagaflow@127.0.0.1:%d/%s?sslmode=disable", pg.Port, database)
}

// Start starts the server (after Stop) and waits until it accepts
// connections: after an immediate stop or a kill, that includes crash
// recovery.
func (pg *PrivatePostgres) Start() error {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	if pg.p != nil && !pg.p.exited() {
		return errors.New("private postgres: already running")
	}
	cmd := exec.Command(filepath.Join(pg.bin, "postgres"), "-D", pg.dataDir(), "-p", strconv.Itoa(pg.Port),
		"-k", pg.dir, "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
		"-c", "fsync=off", "-c", "full_page_writes=off")
	p, err := startProc(cmd, pg.logPath(), pg.owner)
	if err != nil {
		return err
	}
	pg.p = p
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, pg.URL("postgres"))
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		if p.exited() || time.Now().After(deadline) {
			return fmt.Errorf("private postgres did not start: %v\n%s", err, tail(pg.logPath(), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop shuts the server down: "fast" (sessions cut, clean shutdown) or
// "immediate" (like a crash: no checkpoint, recovery at the next start).
func (pg *PrivatePostgres) Stop(mode string) error {
	sig := syscall.SIGINT
	if mode == "immediate" {
		sig = syscall.SIGQUIT
	}
	pg.mu.Lock()
	defer pg.mu.Unlock()
	if pg.p == nil || pg.p.exited() {
		return nil
	}
	// Only the postmaster gets the signal: it stops its children.
	_ = pg.p.cmd.Process.Signal(sig)
	select {
	case <-pg.p.done:
		return nil
	case <-time.After(time.Minute):
		return pg.p.signal(syscall.SIGKILL, 10*time.Second)
	}
}

// Remove stops the server at once and deletes its directory.
func (pg *PrivatePostgres) Remove() {
	_ = pg.Stop("immediate")
	os.RemoveAll(pg.dir)
}

// PrivateRabbitMQ is a RabbitMQ node with its own node name, ports, Erlang
// port mapper (epmd) and data directory; clients use its vhost "/" as
// guest.
type PrivateRabbitMQ struct {
	Port int

	script   string
	dir      string
	env      []string
	epmdPort int
	mu       sync.Mutex
	p        *proc
}

func rabbitmqScript() (string, error) {
	// Debian's /usr/sbin/rabbitmq-server is a wrapper that insists on root or
	// the rabbitmq user; the script it runs does not.
	if _, err := os.Stat("/usr/lib/rabbitmq/bin/rabbitmq-server"); err == nil {
		return "/usr/lib/rabbitmq/bin/rabbitmq-server", nil
	}
	if p, err := exec.LookPath("rabbitmq-server"); err == nil {
		return p, nil
	}
	return "", &noBinaryError{"RabbitMQ's server (rabbitmq-server)", "Debian: apt-get install rabbitmq-server"}
}

// StartPrivateRabbitMQ starts a node in a temporary directory. Remove stops
// it, its port mapper, and deletes the directory.
func StartPrivateRabbitMQ() (*PrivateRabbitMQ, error) {
	script, err := rabbitmqScript()
	if err != nil {
		return nil, err
	}
	dir, err := privateDir("sagaflow-rabbitmq-", nil)
	if err != nil {
		return nil, err
	}
	var ports [3]int
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	r := &PrivateRabbitMQ{Port: ports[0], script: script, dir: dir, epmdPort: ports[2]}
	for name, content := range map[string]string{"enabled_plugins": "[].\n", "rabbitmq-env.conf": "", "rabbitmq.conf": ""} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	node := sagatest.Name("sftest") + "@localhost"
	r.env = append(os.Environ(),
		"HOME="+dir, // the Erlang cookie
		"RABBITMQ_NODENAME="+node, "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(ports[0]), "RABBITMQ_DIST_PORT="+strconv.Itoa(ports[1]),
		"ERL_EPMD_PORT="+strconv.Itoa(ports[2]), "ERL_EPMD_ADDRESS=127.0.0.1",
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"), "RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq"), // .conf is added
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(dir, "advanced.config"),
		"RABBITMQ_PLUGINS_EXPAND_DIR="+filepath.Join(dir, "plugins-expand"),
		"RABBITMQ_FEATURE_FLAGS_FILE="+filepath.Join(dir, "feature_flags"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "pid"),
	)
	if err := r.Start(); err != nil {
		r.Remove()
		return nil, err
	}
	return r, nil
}

func (r *PrivateRabbitMQ) logPath() string { return filepath.Join(r.dir, "rabbitmq.log") }

// URL is the AMQP URL of the node's vhost "/".
func (r *PrivateRabbitMQ) URL() string {
	return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", r.Port)
}

// Start starts the node (after Stop or Kill) and waits until it accepts
// AMQP connections. Durable queues and persistent messages come back from
// its data directory.
func (r *PrivateRabbitMQ) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p != nil && !r.p.exited() {
		return errors.New("private rabbitmq: already running")
	}
	cmd := exec.Command(r.script)
	cmd.Env = r.env
	p, err := startProc(cmd, r.logPath(), nil)
	if err != nil {
		return err
	}
	r.p = p
	deadline := time.Now().Add(2 * time.Minute)
	for {
		conn, err := amqp.DialConfig(r.URL(), amqp.Config{Dial: amqp.DefaultDial(time.Second)})
		if err == nil {
			conn.Close()
			return nil
		}
		if p.exited() || time.Now().After(deadline) {
			return fmt.Errorf("private rabbitmq did not start: %v\n%s", err, tail(r.logPath(), 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Stop stops the node gracefully (SIGTERM), as an operator's restart does.
func (r *PrivateRabbitMQ) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.p.signal(syscall.SIGTERM, time.Minute)
}

// Kill kills the node with SIGKILL, as a crash does.
func (r *PrivateRabbitMQ) Kill() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.p.signal(syscall.SIGKILL, 10*time.Second)
}

// Remove kills the node and its port mapper and deletes its directory.
func (r *PrivateRabbitMQ) Remove() {
	_ = r.Kill()
	epmd, err := exec.LookPath("epmd")
	if err != nil {
		found, _ := filepath.Glob("/usr/lib/erlang/erts-*/bin/epmd")
		if len(found) > 0 {
			epmd = found[0]
		}
	}
	// epmd refuses to die while it still lists the node, which it does until
	// it has seen the killed node's connection close.
	for i := 0; epmd != "" && i < 50; i++ {
		cmd := exec.Command(epmd, "-kill")
		cmd.Env = append(os.Environ(), "ERL_EPMD_PORT="+strconv.Itoa(r.epmdPort))
		out, _ := cmd.CombinedOutput()
		if strings.Contains(string(out), "Killed") || strings.Contains(string(out), "Cannot connect") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	os.RemoveAll(r.dir)
}
