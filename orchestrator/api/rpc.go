package api

import (
	"context"
	"fmt"
	"net/http"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/worker"
)

// noReplyError is a relayed request that got no answer in time (or an
// answer that could not be read); its error text is for the log only.
type noReplyError struct {
	service string
	err     error
}

func (e *noReplyError) Error() string {
	return "no reply from the " + e.service + " service: " + e.err.Error()
}
func (e *noReplyError) Unwrap() error { return e.err }

// rpc relays API requests to workers over RabbitMQ.
type rpc struct {
	bus     *amqpbus.Bus
	timeout time.Duration
}

// call sends req as command typ and decodes an ok reply into out. A
// failed reply maps to an API error: not_found to 404, invalid_command to
// 400; no reply in time is 503.
func (r rpc) call(ctx context.Context, typ string, req, out any) error {
	return r.callAs(ctx, "", typ, req, out)
}

// callAs is call with the request's message id: a worker that records the
// request in its inbox answers a second request of the same id from there,
// without a second effect (empty: a new id).
func (r rpc) callAs(ctx context.Context, id, typ string, req, out any) error {
	payload, err := json.Marshal(req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if id == "" {
		id = uuid.NewString()
	}
	now := time.Now().UTC()
	d, err := r.bus.Call(ctx, saga.Message{
		Type: typ, MessageID: id,
		// Each call its own: the same request (message id) may be in
		// flight twice, and each caller waits for its own answer.
		CorrelationID: uuid.NewString(), Timestamp: now, Headers: traceHeaders(ctx),
		Body: saga.Envelope{ID: id, CorrelationID: id, Type: typ, At: now, Payload: payload}.Encode(),
	})
	if err != nil {
		return &noReplyError{serviceOf(typ), fmt.Errorf("within %s: %w", r.timeout, err)}
	}
	env, err := saga.Decode(d.Body)
	if err != nil {
		return &noReplyError{serviceOf(typ), fmt.Errorf("bad reply to %s: %w", typ, err)}
	}
	switch {
	case env.Status == saga.ReplyOK:
		if out == nil || len(env.Payload) == 0 {
			return nil
		}
		return json.Unmarshal(env.Payload, out)
	case env.Code == contract.CodeNotFound:
		return errorf(http.StatusNotFound, CodeNotFound, "%s", env.Message)
	case env.Code == worker.CodeInvalidCommand:
		return invalid("%s", env.Message)
	case env.Code == contract.CodeVersionMismatch:
		return errorf(http.StatusPreconditionFailed, CodePreconditionFailed, "%s", env.Message)
	case env.Code == contract.CodeInsufficientStock:
		return errorf(http.StatusConflict, CodeInsufficientStock, "%s", env.Message)
	case env.Status == saga.ReplyRetry:
		return errorf(http.StatusServiceUnavailable, CodeUnavailable, "the %s service failed temporarily, try again", serviceOf(typ))
	}
	return errorf(http.StatusConflict, CodeConflict, "%s: %s", env.Code, env.Message)
}

// serviceOf is the worker a command type goes to ("inventory").
func serviceOf(typ string) string {
	for i := range typ {
		if typ[i] == '.' {
			return typ[:i]
		}
	}
	return typ
}
