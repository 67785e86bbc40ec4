package service

import (
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/sagatest"
)

func noTopology(amqpbus.QueueType, int64) amqpbus.Topology { return amqpbus.Topology{} }

// freeAddr returns a local address nothing listens on (for now).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// withHost returns rawURL with its host:port replaced by addr.
func withHost(t *testing.T, rawURL, addr string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = addr
	return u.String()
}

// relay forwards the connections made to addr to the server at target,
// from when it is started: a server that comes up late, as seen by its
// clients. Its connections are cut at cleanup.
func relay(t *testing.T, addr, target string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Error(err) // called from a goroutine: no Fatal
		return
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(s, c); s.Close() }()
			go func() { defer wg.Done(); _, _ = io.Copy(c, s); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

func testBinary(dbURL, amqpURL string, timeout time.Duration) binary {
	return binary{name: "starter", schema: "public", base: &Base{
		DatabaseURL: dbURL, AMQPURL: amqpURL, StartTimeout: timeout, DBMaxConns: 2, AutoMigrate: true,
	}}
}

// A process started before its database and broker are up, or while they
// restart, waits for them (up to START_TIMEOUT) instead of exiting.
func TestOpenWaitsForServersThatAreNotUpYet(t *testing.T) {
	dbURL, amqpURL := sagatest.NewDatabase(t), sagatest.NewVhost(t)
	db, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	mq, err := url.Parse(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	pgAddr, mqAddr := freeAddr(t), freeAddr(t)
	b := testBinary(withHost(t, dbURL, pgAddr), withHost(t, amqpURL, mqAddr), time.Minute)

	up := make(chan time.Time, 1)
	go func() {
		time.Sleep(time.Second)
		relay(t, pgAddr, db.Host)
		time.Sleep(time.Second)
		relay(t, mqAddr, mq.Host)
		up <- time.Now()
	}()
	p, err := b.open("METRICS_ADDR", "127.0.0.1:0", noTopology, zerolog.Nop())
	if err != nil {
		t.Fatalf("open, with the servers up within START_TIMEOUT: %v", err)
	}
	defer p.close()
	if at := <-up; time.Now().Before(at) {
		t.Fatal("open succeeded before the servers were up")
	}
	if err := p.db.Ping(t.Context()); err != nil {
		t.Errorf("the pool: %v", err)
	}
	if err := p.bus.Err(); err != nil {
		t.Errorf("the bus: %v", err)
	}
}

// A server that answers and refuses ends the wait at once, with its
// reason, and what open had opened is released: the listener's port is
// free again.
func TestOpenFailsAtOnceWhenAServerRefuses(t *testing.T) {
	srv := sagatest.DefaultServers()
	dbURL := sagatest.NewDatabase(t)
	for _, tc := range []struct {
		name, db, amqp, want string
	}{
		{"no such database", srv.DatabaseURL(sagatest.Name("sf_missing_")), srv.AMQPURL(""), "does not exist"},
		{"no such vhost", dbURL, srv.AMQPURL(sagatest.Name("sf_missing_")), "vhost"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := freeAddr(t)
			start := time.Now()
			p, err := testBinary(tc.db, tc.amqp, 2*time.Minute).open("METRICS_ADDR", addr, noTopology, zerolog.Nop())
			if err == nil {
				p.close()
				t.Fatal("open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if d := time.Since(start); d > time.Minute {
				t.Errorf("a refusal was retried for %s", d)
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				t.Fatalf("the listener was not closed: %v", err)
			}
			ln.Close()
		})
	}
}

// A server that never comes up fails the start at START_TIMEOUT, with
// what the last attempt met.
func TestOpenGivesUpAtStartTimeout(t *testing.T) {
	b := testBinary(withHost(t, sagatest.DefaultServers().DatabaseURL("x"), freeAddr(t)), sagatest.DefaultServers().AMQPURL(""), time.Second)
	_, err := b.open("METRICS_ADDR", "127.0.0.1:0", noTopology, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "PostgreSQL not reachable within") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("open = %v, want PostgreSQL not reachable … connection refused", err)
	}
}
