package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pgx/v5/pgconn"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
)

// waitFor connects to a server at start (connect), again and again with
// backoff while the server is not up yet (nothing listens, it is starting
// or shutting down, a name does not resolve yet), until ctx ends: a
// process started before its database or broker, or while one restarts,
// waits for it up to START_TIMEOUT instead of exiting. A server that
// answers and refuses (a wrong password, a missing database or vhost) and
// any other error end the wait at once.
func waitFor[T any](ctx context.Context, log zerolog.Logger, server string, connect func() (T, error)) (T, error) {
	var (
		last     error
		attempts int
		begun    = time.Now()
	)
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = 100*time.Millisecond, 2*time.Second
	v, err := backoff.Retry(ctx, func() (T, error) {
		attempts++
		v, err := connect()
		switch {
		case err == nil:
		case ctx.Err() != nil:
			// The attempt was cut by the deadline: the error before it says more.
		case notUpYet(err):
			last = err
		default:
			return v, backoff.Permanent(err)
		}
		return v, err
	}, backoff.WithBackOff(bo), backoff.WithMaxElapsedTime(0), backoff.WithNotify(func(err error, next time.Duration) {
		if attempts == 1 || attempts%10 == 0 {
			log.Warn().Err(err).Str("server", server).Int("attempts", attempts).Dur("retry_in", next).
				Msg("not reachable yet; waiting for it (START_TIMEOUT)")
		}
	}))
	switch {
	case err == nil && attempts > 1:
		log.Info().Str("server", server).Int("attempts", attempts).Dur("waited", time.Since(begun).Round(time.Millisecond)).
			Msg("reachable")
	case err != nil && last != nil && ctx.Err() != nil:
		err = fmt.Errorf("%s not reachable within %s (%d attempts): %w", server, time.Since(begun).Round(time.Second), attempts, last)
	}
	return v, err
}

// notUpYet reports whether err says a server is not there yet or is
// restarting, as opposed to one that answered and refused.
func notUpYet(err error) bool {
	var (
		netErr  net.Error
		dnsErr  *net.DNSError
		pgErr   *pgconn.PgError
		amqpErr *amqp.Error
	)
	switch {
	case errors.As(err, &pgErr):
		switch pgErr.Code {
		case "57P01", "57P02", "57P03", "53300": // shutting down, starting up, too many connections
			return true
		}
		return false
	case errors.As(err, &amqpErr):
		// 320: the broker is shutting down; 501 (frame error) is what a
		// connection cut during the handshake reads as; 504 a connection
		// closed under the dial. 403 (refused login) and 530 (no such
		// vhost) are answers.
		return amqpErr.Code == amqp.ConnectionForced || amqpErr.Code == amqp.FrameError || amqpErr.Code == amqp.ChannelError
	case errors.As(err, &dnsErr), errors.As(err, &netErr):
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}
