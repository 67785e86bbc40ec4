-- +goose Up
-- Email and SMS sent (simulated: recording is sending). One of each per
-- order: the primary key makes a second outcome or a redelivery a no-op.
CREATE TABLE IF NOT EXISTS notifications (
    order_id   text NOT NULL,
    channel    text NOT NULL,                    -- email, sms
    event_id   uuid NOT NULL,                    -- the outcome event that caused it
    event_type text NOT NULL,                    -- order.completed, order.cancelled, order.rejected
    recipient  text NOT NULL,
    body       text NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, channel)
);
