// Package booking is the business of the trip's three workers: a desk
// that books, cancels and (the hotel's) confirms one booking per trip, in
// a table of its own, and refuses what it cannot serve.
//
// Every handler runs inside the worker runtime's transaction, which also
// records the command in the inbox: a command delivered twice has one
// effect. The handlers are idempotent on their own too, and a cancellation
// that overtakes its booking (the booking's command was re-sent after a
// timeout) turns that booking into a no-op, so a trip never keeps a room
// it gave up.
package booking

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/examples/trip"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/worker"
)

//go:embed migrations/*.sql
var files embed.FS

// Migrations creates a desk's bookings table in the worker's schema.
var Migrations = pgmigrate.Set{Name: "bookings", Table: "bookings_version", FS: pgmigrate.Sub(files, "migrations")}

// Booking statuses.
const (
	Booked    = "booked"
	Confirmed = "confirmed"
	Cancelled = "cancelled"
	Refused   = "refused"
)

// Desk is one worker's business.
type Desk struct {
	// Kind names the desk ("hotel"); replies carry "<kind>_ref".
	Kind string
	// Book, Cancel and Confirm are its command types (Confirm: "" for none).
	Book, Cancel, Confirm string
	// Item describes what a request books here.
	Item func(r *trip.Request) string
	// Refuse returns a failure code and a reason when the desk cannot
	// serve the request, or "" to book it.
	Refuse func(r *trip.Request) (code, reason string)
}

// The trip's desks. Each refuses one thing, so that a test can make a
// trip fail at any step.
var (
	Hotel = Desk{
		Kind: "hotel", Book: trip.HotelBook, Cancel: trip.HotelCancel, Confirm: trip.HotelConfirm,
		Item: func(r *trip.Request) string { return fmt.Sprintf("%s, %d nights", r.Hotel.City, r.Hotel.Nights) },
		Refuse: func(r *trip.Request) (string, string) {
			if strings.EqualFold(r.Hotel.City, "Atlantis") {
				return "no_room", "no hotel has a room in Atlantis"
			}
			return "", ""
		},
	}
	Flight = Desk{
		Kind: "flight", Book: trip.FlightBook, Cancel: trip.FlightCancel,
		Item: func(r *trip.Request) string { return r.Flight.From + "-" + r.Flight.To },
		Refuse: func(r *trip.Request) (string, string) {
			if r.Flight.From == r.Flight.To {
				return "no_route", "no flight from an airport to itself"
			}
			return "", ""
		},
	}
	Car = Desk{
		Kind: "car", Book: trip.CarBook, Cancel: trip.CarCancel,
		Item: func(r *trip.Request) string { return r.Car.Class },
		Refuse: func(r *trip.Request) (string, string) {
			if strings.EqualFold(r.Car.Class, "tank") {
				return "unavailable", "no tank to rent"
			}
			return "", ""
		},
	}
)

// Register adds the desk's handlers to a worker runtime (a
// service.WorkerSpec's Register).
func (d Desk) Register(rt *worker.Runtime, _ *pgxpool.Pool) {
	rt.Handle(d.Book, d.book)
	rt.Handle(d.Cancel, d.cancel)
	if d.Confirm != "" {
		rt.Handle(d.Confirm, d.confirm)
	}
}

// tripOf returns the trip a command is about.
func tripOf(cmd worker.Command) (uuid.UUID, error) {
	id, err := uuid.Parse(cmd.SagaID)
	if err != nil {
		return uuid.Nil, worker.Invalid(fmt.Errorf("saga id %q: %w", cmd.SagaID, err))
	}
	return id, nil
}

// status locks a trip's booking and returns its status ("" for none).
func status(ctx context.Context, tx worker.Tx, id uuid.UUID) (string, string, error) {
	var st, ref string
	err := tx.QueryRow(ctx, `SELECT status, ref FROM bookings WHERE trip_id = $1 FOR UPDATE`, id).Scan(&st, &ref)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", nil
	}
	return st, ref, err
}

func (d Desk) book(ctx context.Context, tx worker.Tx, cmd worker.Command) (worker.Result, error) {
	var req trip.Request
	if err := cmd.DecodeValid(&req); err != nil {
		return worker.Result{}, err
	}
	id, err := tripOf(cmd)
	if err != nil {
		return worker.Result{}, err
	}
	st, ref, err := status(ctx, tx, id)
	if err != nil {
		return worker.Result{}, err
	}
	switch st {
	case Booked, Confirmed:
		return worker.OK(map[string]string{d.Kind + "_ref": ref})
	case Cancelled:
		return worker.Fail("cancelled", "the %s booking was cancelled before it was made", d.Kind)
	case Refused:
		code, reason := d.Refuse(&req)
		return worker.Fail(code, "%s", reason)
	}
	if code, reason := d.Refuse(&req); code != "" {
		if _, err := tx.Exec(ctx, `INSERT INTO bookings (trip_id, status, item, reason) VALUES ($1, $2, $3, $4)`,
			id, Refused, d.Item(&req), reason); err != nil {
			return worker.Result{}, err
		}
		return worker.Fail(code, "%s", reason)
	}
	ref = strings.ToUpper(d.Kind[:1]) + "-" + strings.ToUpper(id.String()[len(id.String())-8:])
	if _, err := tx.Exec(ctx, `INSERT INTO bookings (trip_id, status, item, ref) VALUES ($1, $2, $3, $4)`,
		id, Booked, d.Item(&req), ref); err != nil {
		return worker.Result{}, err
	}
	return worker.OK(map[string]string{d.Kind + "_ref": ref})
}

func (d Desk) cancel(ctx context.Context, tx worker.Tx, cmd worker.Command) (worker.Result, error) {
	id, err := tripOf(cmd)
	if err != nil {
		return worker.Result{}, err
	}
	// Recorded even when the booking has not arrived yet: it will find
	// the cancellation and do nothing. A refusal stays a refusal.
	if _, err := tx.Exec(ctx, `INSERT INTO bookings (trip_id, status) VALUES ($1, $2)
		ON CONFLICT (trip_id) DO UPDATE SET status = $2, updated_at = now() WHERE bookings.status <> $3`,
		id, Cancelled, Refused); err != nil {
		return worker.Result{}, err
	}
	return worker.OK(nil)
}

func (d Desk) confirm(ctx context.Context, tx worker.Tx, cmd worker.Command) (worker.Result, error) {
	id, err := tripOf(cmd)
	if err != nil {
		return worker.Result{}, err
	}
	st, _, err := status(ctx, tx, id)
	if err != nil {
		return worker.Result{}, err
	}
	switch st {
	case Confirmed:
		return worker.OK(nil)
	case Booked:
		_, err := tx.Exec(ctx, `UPDATE bookings SET status = $2, updated_at = now() WHERE trip_id = $1`, id, Confirmed)
		if err != nil {
			return worker.Result{}, err
		}
		return worker.OK(nil)
	}
	return worker.Fail("not_booked", "no %s booking to confirm (%q)", d.Kind, st)
}
