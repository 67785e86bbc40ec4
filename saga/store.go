package saga

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
)

// Store errors.
var (
	ErrNotFound = errors.New("saga: not found")
	// ErrKeyReused is returned by Create when an idempotency key comes back
	// with a different request.
	ErrKeyReused = errors.New("saga: idempotency key reused with a different request")
	// ErrQuarantined is the outcome of an input for a saga the store set
	// aside: its row cannot be read, or its transition failed where a loop
	// would meet it again and again. It waits, stuck, for an operator.
	ErrQuarantined = errors.New("saga: quarantined")
)

// Claim says which sagas a loop claims from the store.
type Claim struct {
	// Now is the time deadlines are compared with (the timer).
	Now time.Time
	// Limit is the most sagas claimed.
	Limit int
	// Definitions are the saga types the claiming coordinator can drive;
	// sagas of other types are left to coordinators that know them.
	Definitions []string
	// Versions, when set, is the newest version of each of Definitions
	// (same order) the coordinator drives: sagas started on a later
	// version, by a newer deployment running beside this one, are left to
	// it.
	Versions []int
	// Oldest is how many of Limit go to the oldest pending sagas whatever
	// their priority (the starter), so that no priority waits without bound.
	Oldest int
}

// NewSaga is a saga to create, with the messages its creation causes.
type NewSaga struct {
	Instance Instance
	// Key is the client's idempotency key; empty for none.
	Key string
	// Fingerprint identifies the request behind Key, so that a key reused
	// for a different request is refused.
	Fingerprint string
	Messages    []Message
}

// CreateResult is what became of one NewSaga of CreateBatch.
type CreateResult struct {
	// Instance is the new saga, or the existing one its key named.
	Instance Instance
	Created  bool
	// Messages are the staged messages, with their outbox ids.
	Messages []Message
	// Err is ErrKeyReused for a key that came back with another request.
	Err error
}

// TransitionFunc decides one input for one locked saga. It returns the
// decision (the new instance when Changed) and the messages to stage in the
// outbox. It must not do I/O: the store calls it inside a transaction.
type TransitionFunc func(in Instance, inp Input) (Decision, []Message, error)

// Outcome is what happened to one input of Apply.
type Outcome struct {
	Decision
	// Err is ErrNotFound, or the TransitionFunc's error; the other inputs of
	// the batch are applied regardless.
	Err error
}

// Store persists sagas and the outbox. Every method that changes a saga
// does so in one transaction together with the messages it causes.
type Store interface {
	// CreateBatch inserts sagas and their messages in one transaction. A
	// NewSaga whose Key names an existing saga (or one earlier in the
	// batch) is not created: its result holds the existing saga, or
	// ErrKeyReused when the fingerprints differ.
	CreateBatch(ctx context.Context, sagas []NewSaga) ([]CreateResult, error)
	// Apply locks the sagas the inputs name, applies each input in order
	// with fn, and saves the changed sagas with their messages, in one
	// transaction. It returns one Outcome per input and the staged
	// messages, each with its OutboxID.
	Apply(ctx context.Context, inputs []Input, fn TransitionFunc) ([]Outcome, []Message, error)
	// ApplyDue claims up to c.Limit sagas of c.Definitions whose deadline
	// is at or before c.Now, skipping sagas other transactions hold, and
	// applies a timeout input to each, in one transaction. It returns the
	// outcomes and staged messages. A saga it cannot read or transition is
	// quarantined (its outcome's Err wraps ErrQuarantined).
	ApplyDue(ctx context.Context, c Claim, fn TransitionFunc) ([]Outcome, []Message, error)
	// ApplyPending claims up to c.Limit pending sagas of c.Definitions, the
	// c.Oldest oldest first, then highest priority and oldest first,
	// skipping those other transactions hold, and starts each with fn, in
	// one transaction; like ApplyDue, it quarantines what it cannot start.
	ApplyPending(ctx context.Context, c Claim, fn TransitionFunc) ([]Outcome, []Message, error)
	// CountActive counts the sagas with a command in flight (running or
	// compensating): what admission control bounds. Sagas in one of the
	// waiting states (a definition's waiting steps) send nothing while
	// they wait, however long, and are not counted.
	CountActive(ctx context.Context, waiting []StateRef) (int, error)
	// ClaimOutbox leases up to limit outbox rows whose lease expired and
	// returns their messages (a row holds a transaction's messages).
	// Messages are leased to their writer when staged, so this finds only
	// what a crashed or failing relay left behind.
	ClaimOutbox(ctx context.Context, limit int) ([]Message, error)
	// DeleteOutbox removes published messages.
	DeleteOutbox(ctx context.Context, ids []uuid.UUID) error
	// Get loads one saga.
	Get(ctx context.Context, id uuid.UUID) (Instance, error)
	// Positions groups the live sagas (not completed, rejected or
	// cancelled) of the definitions named in served whose version is not
	// among the versions listed for their definition: what a deploy
	// check (CheckDeploy) looks at.
	Positions(ctx context.Context, served map[string][]int) ([]Position, error)
	// InState returns up to limit ids of sagas of definition in state,
	// oldest first, after the id after (uuid.Nil: from the oldest): what
	// the SLA watch looks at.
	InState(ctx context.Context, definition, state string, after uuid.UUID, limit int) ([]uuid.UUID, error)
}

// Publisher sends messages to the broker.
type Publisher interface {
	// Send writes msgs to the broker in order and returns at once, without
	// waiting for the broker's confirms: messages sent one after the other
	// arrive in that order. The returned function waits for the confirms
	// and returns the messages the broker confirmed; its error says why the
	// others were not.
	Send(ctx context.Context, msgs []Message) Confirms
}

// Confirms waits for the broker's confirms of messages sent together and
// returns the messages it confirmed; the others failed (the error says why)
// and are the caller's to retry.
type Confirms func(ctx context.Context) (confirmed []Message, err error)

// ReplyWait waits until queued replies are committed. It returns, by
// index, the replies to dead-letter and why: for a saga the store does not
// have (another deployment sharing the broker, a hand-made message), or
// one it quarantined. Any other failure of an input is the error (the
// consumer retries it a bounded number of times).
type ReplyWait func(ctx context.Context) (dead map[int]error, err error)

// StateRef names a state of a definition.
type StateRef struct {
	Definition string
	State      string
}
