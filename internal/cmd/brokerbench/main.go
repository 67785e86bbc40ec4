// Command brokerbench measures the broker alone: publishers send persistent
// messages to one durable queue in confirmed batches while a consumer acks
// them, and it reports messages per second, the confirm latency of a batch,
// and the broker's CPU per message (read from /proc, for beam.smp). It is
// the yardstick for how much of a saga's cost is RabbitMQ's.
//
//	brokerbench -batch 32 -publishers 8 -duration 5s [-priority] [-queue-version 2]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func main() {
	var (
		url        = flag.String("url", "amqp://guest:guest@127.0.0.1:5672/", "broker URL")
		batch      = flag.Int("batch", 32, "messages published before awaiting their confirms")
		publishers = flag.Int("publishers", 8, "publishing channels")
		duration   = flag.Duration("duration", 5*time.Second, "how long to publish")
		size       = flag.Int("size", 400, "message body bytes")
		priority   = flag.Bool("priority", false, "declare the queue with x-max-priority 10")
		version    = flag.Int("queue-version", 0, "x-queue-version (2: classic queues v2); 0 leaves it out")
	)
	flag.Parse()
	if err := run(*url, *batch, *publishers, *duration, *size, *priority, *version); err != nil {
		fmt.Fprintln(os.Stderr, "brokerbench:", err)
		os.Exit(1)
	}
}

func run(url string, batch, publishers int, duration time.Duration, size int, priority bool, version int) error {
	conn, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	args := amqp.Table{"x-queue-type": "classic"}
	if priority {
		args["x-max-priority"] = int32(10)
	}
	if version > 0 {
		args["x-queue-version"] = int32(version)
	}
	q := fmt.Sprintf("brokerbench-%d", time.Now().UnixNano())
	if _, err := ch.QueueDeclare(q, true, false, false, false, args); err != nil {
		return err
	}
	defer ch.QueueDelete(q, false, false, false)

	cc, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := cc.Qos(512, 0, false); err != nil {
		return err
	}
	ds, err := cc.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	var consumed atomic.Int64
	go func() {
		for d := range ds {
			_ = d.Ack(false)
			consumed.Add(1)
		}
	}()

	cpu0 := brokerTicks()
	var sent, waited atomic.Int64
	deadline := time.Now().Add(duration)
	body := make([]byte, size)
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pc, err := conn.Channel()
			if err != nil {
				errs <- err
				return
			}
			if err := pc.Confirm(false); err != nil {
				errs <- err
				return
			}
			for time.Now().Before(deadline) {
				start := time.Now()
				dcs := make([]*amqp.DeferredConfirmation, 0, batch)
				for range batch {
					dc, err := pc.PublishWithDeferredConfirmWithContext(context.Background(), "", q, false, false,
						amqp.Publishing{DeliveryMode: amqp.Persistent, Priority: 1, Body: body})
					if err != nil {
						errs <- err
						return
					}
					dcs = append(dcs, dc)
				}
				for _, dc := range dcs {
					dc.Wait()
				}
				sent.Add(int64(batch))
				waited.Add(int64(time.Since(start)))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	cpu := float64(brokerTicks()-cpu0) / 100 // USER_HZ
	n := sent.Load()
	batches := n / int64(batch)
	fmt.Printf("%d persistent messages of %d B in %s: %.0f msg/s, confirm wait per batch of %d: %.1f ms, consumed %d\n",
		n, size, duration, float64(n)/duration.Seconds(), batch, float64(waited.Load())/float64(max(batches, 1))/1e6, consumed.Load())
	if cpu > 0 {
		fmt.Printf("broker CPU: %.1f s (%.0f%% of a core), %.3f ms per message published, delivered and acked\n",
			cpu, 100*cpu/duration.Seconds(), 1000*cpu/float64(n))
	}
	return nil
}

// brokerTicks sums the CPU ticks of local beam.smp processes (RabbitMQ).
func brokerTicks() int64 {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var total int64
	for _, d := range dirs {
		comm, err := os.ReadFile(d + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "beam.smp" {
			continue
		}
		stat, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += ut + st
	}
	return total
}
