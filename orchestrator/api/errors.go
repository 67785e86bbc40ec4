package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagaflow/sagaflow/saga"
)

// Error is an API error: an HTTP status and a stable snake_case code.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Codes of API errors.
const (
	CodeInvalidRequest       = "invalid_request"
	CodeNotFound             = "not_found"
	CodeUnauthorized         = "unauthorized"
	CodeForbidden            = "forbidden"
	CodeConflict             = "conflict"
	CodeIdempotencyKeyReused = "idempotency_key_reused"
	CodePayloadTooLarge      = "payload_too_large"
	CodeUnsupportedMediaType = "unsupported_media_type"
	CodeMethodNotAllowed     = "method_not_allowed"
	CodeUnavailable          = "unavailable"
	CodeRateLimited          = "rate_limited"
	CodePreconditionFailed   = "precondition_failed"
	CodeInsufficientStock    = "insufficient_stock"
	CodeNotShipped           = "not_shipped"
	CodeInternal             = "internal"
)

func errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) *Error {
	return errorf(http.StatusBadRequest, CodeInvalidRequest, format, args...)
}

// ErrorOf maps any error to an API error: the one table of the service.
func ErrorOf(err error) *Error {
	var (
		apiErr  *Error
		maxErr  *http.MaxBytesError
		connErr *pgconn.ConnectError
		netErr  net.Error
		noReply *noReplyError
	)
	switch {
	case errors.As(err, &apiErr):
		return apiErr
	case errors.As(err, &maxErr):
		return errorf(http.StatusRequestEntityTooLarge, CodePayloadTooLarge, "the body is larger than %d bytes", maxErr.Limit)
	case errors.Is(err, saga.ErrNotFound):
		return errorf(http.StatusNotFound, CodeNotFound, "not found")
	case errors.Is(err, saga.ErrKeyReused):
		return errorf(http.StatusConflict, CodeIdempotencyKeyReused, "this Idempotency-Key was used for a different request")
	case errors.Is(err, saga.ErrConflict):
		return errorf(http.StatusConflict, CodeConflict, "%s", err.Error())
	case errors.As(err, &noReply):
		return errorf(http.StatusServiceUnavailable, CodeUnavailable, "the %s service did not answer in time, try again", noReply.service)
	case errors.As(err, &connErr), errors.As(err, &netErr), errors.Is(err, io.EOF),
		errors.Is(err, context.DeadlineExceeded), pgconn.SafeToRetry(err), isConnClosed(err):
		// The driver's text names users, hosts and databases: it goes to
		// the log line (with the request id), not to the client.
		return errorf(http.StatusServiceUnavailable, CodeUnavailable, "the database is unavailable, try again")
	}
	return errorf(http.StatusInternalServerError, CodeInternal, "internal error")
}

func isConnClosed(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// Class 08: connection exception; 57P01-03: the server is shutting
		// down or restarting.
		return pgErr.Code[:2] == "08" || pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03"
	}
	return false
}

// abort writes err as {"error":{"code","message"}} and stops the chain.
func abort(c *gin.Context, err error) {
	e := ErrorOf(err)
	if e.Status >= 500 {
		logOf(c).Error().Err(err).Int("status", e.Status).Msg("request failed")
		if e.Status == http.StatusServiceUnavailable {
			c.Header("Retry-After", "1")
		}
	}
	c.AbortWithStatusJSON(e.Status, gin.H{"error": gin.H{"code": e.Code, "message": e.Message}})
}
