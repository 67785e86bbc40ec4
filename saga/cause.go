package saga

import "strings"

// StuckCause classifies why a stuck saga waits for an operator, so that
// the operator knows where to look before reading any log.
type StuckCause string

// The causes the engine tells. CauseNoConsumer is the finer diagnosis of
// CauseNoReply that whoever can see the broker makes (the API and the
// console do): the command's queue has no consumer at all.
const (
	// CauseNoReply: the command was sent, attempt after attempt, and no
	// answer came (the worker is down, slow, or its replies are lost).
	CauseNoReply StuckCause = "no_reply"
	// CauseNoConsumer: as CauseNoReply, and the command's queue has no
	// consumer now: no worker is there to answer.
	CauseNoConsumer StuckCause = "no_consumer"
	// CauseWorkerError: the worker answered, each time with an error (the
	// record's error says which).
	CauseWorkerError StuckCause = "worker_error"
	// CauseCompensationExhausted: a compensation ran out of attempts.
	CauseCompensationExhausted StuckCause = "compensation_exhausted"
	// CauseSignalOverdue: a waiting step's deadline passed after the pivot.
	CauseSignalOverdue StuckCause = "signal_overdue"
	// CauseVersionNotServed: no deployed definition drives the saga's
	// version (it was set aside when an input could not apply).
	CauseVersionNotServed StuckCause = "version_not_served"
	// CauseQuarantined: the saga's row could not be read, or its
	// transition failed where a loop would meet it again and again.
	CauseQuarantined StuckCause = "quarantined"
)

// QuarantinePrefix starts the stuck reason of a quarantined saga.
const QuarantinePrefix = "quarantined: "

// Cause tells why a stuck saga is stuck, and the error of the step or
// compensation it is stuck at; "" for a saga that is not stuck.
func (in *Instance) Cause() (StuckCause, string) {
	if in.Phase != Stuck {
		return "", ""
	}
	if strings.HasPrefix(in.StuckReason, QuarantinePrefix) {
		if strings.Contains(in.StuckReason, ErrVersionNotServed.Error()) {
			return CauseVersionNotServed, in.StuckReason
		}
		return CauseQuarantined, in.StuckReason
	}
	for i := len(in.History) - 1; i >= 0; i-- {
		if r := &in.History[i]; r.Kind != KindSignal {
			if r.Cause != "" {
				return r.Cause, r.Error
			}
			break
		}
	}
	// Stuck before causes were recorded: what the phase says.
	if in.StuckIn == Compensating {
		return CauseCompensationExhausted, in.StuckReason
	}
	if strings.Contains(in.StuckReason, "no reply to attempt") {
		return CauseNoReply, in.StuckReason
	}
	return CauseWorkerError, in.StuckReason
}
