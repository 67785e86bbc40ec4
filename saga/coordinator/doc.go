// Package coordinator drives the sagas of a saga.Store: it creates them,
// starts them as room allows, applies their replies and timeouts, and
// relays the messages their decisions stage in the outbox. It keeps no
// saga state in memory; several coordinators may share one store.
//
// The coordinator is six stages, one concern each, joined by channels (and
// an SLA watch beside the timer, for definitions whose steps have an SLA).
// Every arrow into the store is one transaction for a batch of sagas:
//
//	Submit ──creates──▶ intake ──────────▶ store.CreateBatch ─┐
//	                      │ (starts at once while there is room)
//	                      └──wake──▶ admission ──▶ store.ApplyPending ─┤
//	HandleReplies ──inputs──▶ applier ──▶ store.Apply ─────────────┤
//	Replay, Cancel ─────────────────────▶ store.Apply ─────────────┤
//	Clock ──▶ timer ──▶ store.ApplyDue ────────────────────────────┤
//	Clock ──▶ SLA watch ──▶ store.InState, store.Apply ────────────┤
//	                                                               │
//	                             relayq (staged messages) ◀────────┘
//	                                       │
//	                                       ▼
//	                 relay ──▶ Publisher.Send ──confirms──▶ deletes ──▶ deleter ──▶ store.DeleteOutbox
//
//	Clock ──▶ recovery ──▶ store.ClaimOutbox ──▶ Publisher.Send (what the relay left behind)
//
// Intake (intake.go) gathers concurrent Submit calls into one commit
// (group commit) and answers each caller once it is durable. Admission
// (admission.go) bounds the sagas in flight (Config.MaxActive): a new saga
// starts in the transaction that creates it while there is room and no
// backlog; otherwise it waits pending, and the admission pass starts
// pending sagas highest priority first, with a share for the oldest
// (Config.OldestShare). The applier (applier.go) applies delivered replies
// in the order they came, a delivery's replies in one transaction, and
// tells HandleReplies' wait when they are committed, so that the transport
// acks only then. The timer (timer.go) applies command deadlines and retry
// backoffs as they fall due on the clock. The relay (relay.go) publishes
// what each commit staged at once and deletes the rows whose messages were
// all confirmed. Recovery (recovery.go) publishes the rows the relay left
// behind: those of a crashed process, of a broker that was away, or of a
// relay that had no room, once their lease expires. The SLA watch (sla.go)
// reads the sagas of the states with an SLA (saga.Step.SLA), a batch per
// state and pass, and has the late ones emit their sla_missed event.
//
// Delivery is at least once on every arrow: a crash between a commit and a
// publish, or between a publish and a delete, means a message published
// again, which its consumer deduplicates by message id.
//
// Each stage's loop takes a batch (saga/internal/collect) or waits for the
// clock, and hands it to a step (createBatch, startPass, applyBatch,
// timerPass, relaySend, deleteBatch, recoveryPass, slaPass) that does one batch's
// work; the tests drive the steps with a real store and a simulated clock.
package coordinator
