-- +goose Up
-- One booking per trip at this desk (hotel, flight or car: each worker has
-- this table in its own schema). Its status makes book, cancel and confirm
-- idempotent, and a cancellation recorded before its booking arrives turns
-- that booking into a no-op.
CREATE TABLE IF NOT EXISTS bookings (
    trip_id    uuid PRIMARY KEY,
    status     text NOT NULL,                -- booked, confirmed, cancelled, refused
    item       text NOT NULL DEFAULT '',     -- what is booked: "Lisbon, 3 nights"
    ref        text NOT NULL DEFAULT '',     -- the desk's reference, given to the traveller
    reason     text NOT NULL DEFAULT '',     -- why it was refused
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
