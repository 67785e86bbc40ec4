package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"
)

// The fault tests stop and start the machine's own PostgreSQL and RabbitMQ
// (Debian's packages, as on the development machine and in CI), with the
// same commands internal/scripts/services.sh uses. Tests that call these
// must not run beside other packages' tests: `make test` runs them last.

func run(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// CanControlServices reports whether this machine lets tests stop and
// start PostgreSQL and RabbitMQ, and why not.
func CanControlServices() error {
	for _, c := range []string{"pg_ctlcluster", "rabbitmqctl", "rabbitmq-server"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%s not found: the fault tests need Debian's PostgreSQL and RabbitMQ", c)
		}
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("the fault tests stop and start services: run them as root")
	}
	return nil
}

func pgCluster() (string, error) {
	entries, err := os.ReadDir("/etc/postgresql")
	if err != nil || len(entries) == 0 {
		return "", fmt.Errorf("no PostgreSQL cluster in /etc/postgresql: %v", err)
	}
	return entries[0].Name(), nil
}

// StopPostgres stops the local PostgreSQL (fast shutdown: sessions are
// cut, as in a crash of the connections).
func StopPostgres() error {
	v, err := pgCluster()
	if err != nil {
		return err
	}
	return run("pg_ctlcluster", "--skip-systemctl-redirect", v, "main", "stop", "-m", "fast")
}

// StartPostgres starts it and waits until it accepts connections.
func StartPostgres() error {
	v, err := pgCluster()
	if err != nil {
		return err
	}
	if err := run("pg_ctlcluster", "--skip-systemctl-redirect", v, "main", "start"); err != nil {
		return err
	}
	return waitPort("127.0.0.1:5432", time.Minute)
}

// StopRabbitMQ stops the whole broker node.
func StopRabbitMQ() error { return run("rabbitmqctl", "-q", "stop") }

// StartRabbitMQ starts the broker node and waits until it is ready.
// await_startup fails at once while the new node has not registered yet,
// so it is retried.
func StartRabbitMQ() error {
	if err := run("rabbitmq-server", "-detached"); err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err := run("rabbitmqctl", "-q", "await_startup")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
	return waitPort("127.0.0.1:5672", time.Minute)
}

// RestartRabbitMQ stops the broker and starts it again: every connection
// is lost, durable queues and persistent messages come back from disk.
func RestartRabbitMQ() error {
	if err := StopRabbitMQ(); err != nil {
		return err
	}
	return StartRabbitMQ()
}

func waitPort(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s did not open within %s", addr, timeout)
}
