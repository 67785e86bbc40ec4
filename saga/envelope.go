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
	// Type is the command's type, "<command>.reply", or the event type.
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

// MessageKind says what a message is to a saga. A transport routes by it
// (and by the message's type): the engine names no exchange, queue or
// reply address.
type MessageKind uint8

// The kinds of messages.
const (
	// MessageCommand asks a worker to act; its answer comes back on the
	// transport's reply route to the coordinators.
	MessageCommand MessageKind = iota + 1
	// MessageEvent tells every subscriber of its type what happened.
	MessageEvent
	// MessageReply answers a command or a request; Key is the address the
	// requester gave.
	MessageReply
	// MessageRequest asks a worker for an answer now (an API's query); the
	// caller waits for it (Publisher's transport: Call).
	MessageRequest
	// MessageSignal is news for one saga's waiting step (Step.Wait),
	// routed by its type (the signal's name) to the coordinators that wait
	// for it.
	MessageSignal
)

func (k MessageKind) String() string {
	switch k {
	case MessageCommand:
		return "command"
	case MessageEvent:
		return "event"
	case MessageReply:
		return "reply"
	case MessageRequest:
		return "request"
	case MessageSignal:
		return "signal"
	}
	return "message"
}

// Message is a message to publish, independent of the transport. The
// coordinator stages messages in its outbox; a Publisher sends them.
type Message struct {
	// OutboxID is the outbox row this message came from (zero when none).
	OutboxID uuid.UUID
	Kind     MessageKind
	// Type is what the message is about ("payment.charge",
	// "order.completed"): commands, requests and events are routed by it.
	Type string
	// Key addresses a reply: the requester's address, as the transport
	// gave it. Empty for the other kinds.
	Key string
	// MessageID is the message's id: the idempotency key of a command.
	MessageID     string
	CorrelationID string
	Priority      Priority
	// TTL is how long the message is worth delivering; zero for ever.
	TTL       time.Duration
	Timestamp time.Time
	Headers   map[string]string
	Body      []byte
	// Transient messages need not survive a broker restart (requests).
	Transient bool
}

// SignalMessage is a signal for saga sagaID as a message: its type is the
// signal's name, its id the key, its body carries the saga id and the
// payload.
func SignalMessage(sagaID string, sig Signal, at time.Time) Message {
	return Message{
		Kind: MessageSignal, Type: sig.Name, MessageID: sig.Key, CorrelationID: sagaID, Timestamp: at,
		Body: Envelope{ID: sig.Key, SagaID: sagaID, Type: sig.Name, At: at, Payload: sig.Payload}.Encode(),
	}
}
