package saga

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"
)

// SchemaVersion is the version of the message envelope. Decoding rejects
// any other version, so an old consumer dead-letters a message it cannot
// read instead of misreading it.
const SchemaVersion = 1

// Envelope is the JSON body of every message on the bus: commands, replies,
// and domain events. Fields that do not apply to a kind are omitted.
type Envelope struct {
	// V is the schema version (SchemaVersion).
	V int `json:"v"`
	// ID is the message id: the idempotency key of a command, a reply's own
	// id, an event's id.
	ID string `json:"id"`
	// CorrelationID ties a reply to its command and an event to its saga.
	CorrelationID string `json:"correlation_id,omitempty"`
	SagaID        string `json:"saga_id,omitempty"`
	// Type is the command's routing key, "<command>.reply", or the event type.
	Type string    `json:"type"`
	At   time.Time `json:"at"`
	// Attempt numbers a command's sends.
	Attempt int `json:"attempt,omitempty"`
	// Status, Code and Message are a reply's verdict.
	Status  ReplyStatus     `json:"status,omitempty"`
	Code    string          `json:"code,omitempty"`
	Message string          `json:"message,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// Decoding errors. A message that fails to decode is poison: it goes to the
// dead-letter queue with the error as its reason.
var (
	ErrMalformed      = errors.New("saga: malformed message")
	ErrUnknownVersion = errors.New("saga: unknown schema version")
	ErrUnknownCommand = errors.New("saga: unknown command")
)

// Encode marshals an envelope, setting its version.
func (e Envelope) Encode() []byte {
	e.V = SchemaVersion
	b, err := json.Marshal(e)
	if err != nil {
		// Only Payload can fail, and it is produced by json.Marshal or
		// checked by Decode before it gets here.
		panic(fmt.Sprintf("saga: encode envelope: %v", err))
	}
	return b
}

// Decode parses and checks an envelope.
func Decode(body []byte) (Envelope, error) {
	var e Envelope
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&e); err != nil {
		return Envelope{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if !AtEOF(dec) {
		return Envelope{}, fmt.Errorf("%w: trailing data after the envelope", ErrMalformed)
	}
	if e.V != SchemaVersion {
		return Envelope{}, fmt.Errorf("%w: v=%d, want %d", ErrUnknownVersion, e.V, SchemaVersion)
	}
	if e.ID == "" || e.Type == "" {
		return Envelope{}, fmt.Errorf("%w: id and type are required", ErrMalformed)
	}
	return e, nil
}

// AtEOF reports whether a decoder has nothing left but whitespace.
// (json.Decoder.More is not enough: it is false before a stray '}' or ']'.)
func AtEOF(dec *json.Decoder) bool {
	_, err := dec.Token()
	return err == io.EOF
}

// Message is a message to publish, independent of the transport. The
// coordinator stages messages in its outbox; a Publisher sends them.
type Message struct {
	// OutboxID is the outbox row this message came from (zero when none).
	OutboxID   uuid.UUID
	Exchange   string
	RoutingKey string
	// MessageID is the AMQP message_id: the idempotency key of a command.
	MessageID     string
	CorrelationID string
	ReplyTo       string
	Type          string
	Priority      Priority
	// Expiration is the message TTL; zero for none.
	Expiration time.Duration
	Timestamp  time.Time
	Headers    map[string]string
	Body       []byte
	// Transient messages are not written to disk by the broker (RPC queries).
	Transient bool
}
