package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
)

// TestPrivateServersSurviveRestarts: what a private server wrote before an
// immediate stop (PostgreSQL) or a graceful stop and a kill (RabbitMQ) is
// there after its restart, and the machine's own servers are the ones
// tests create databases on, untouched.
func TestPrivateServersSurviveRestarts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts private servers: skipped with -short")
	}
	p := StartPrivateServers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	exec := func(sql string) {
		t.Helper()
		conn, err := pgx.Connect(ctx, p.Postgres.URL("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	exec(`CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)`)
	if err := p.Postgres.Stop("immediate"); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(ctx, p.Postgres.URL("postgres")); err == nil {
		t.Fatal("the private PostgreSQL still answers after Stop")
	}
	if err := p.Postgres.Start(); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, p.Postgres.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT n FROM kept`).Scan(&n); err != nil || n != 42 {
		t.Errorf("after an immediate stop and a start: %d, %v; want the committed row", n, err)
	}
	conn.Close(ctx)

	publish := func(body string) {
		t.Helper()
		c, err := amqp.Dial(p.RabbitMQ.URL())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ch, err := c.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ch.QueueDeclare("kept", true, false, false, false, amqp.Table{"x-queue-type": "classic"}); err != nil {
			t.Fatal(err)
		}
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		conf, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", "kept", false, false,
			amqp.Publishing{DeliveryMode: amqp.Persistent, Body: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := conf.WaitContext(ctx); !ok || err != nil {
			t.Fatalf("publish not confirmed: %v", err)
		}
	}
	get := func() string {
		t.Helper()
		c, err := amqp.Dial(p.RabbitMQ.URL())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ch, err := c.Channel()
		if err != nil {
			t.Fatal(err)
		}
		d, ok, err := ch.Get("kept", true)
		if err != nil || !ok {
			t.Fatalf("get: %v %v", ok, err)
		}
		return string(d.Body)
	}
	publish("before stop")
	if err := p.RabbitMQ.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := p.RabbitMQ.Start(); err != nil {
		t.Fatal(err)
	}
	publish("before kill")
	if err := p.RabbitMQ.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := p.RabbitMQ.Start(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"before stop", "before kill"} {
		if got := get(); got != want {
			t.Errorf("after the restarts: %q, want %q", got, want)
		}
	}
}
