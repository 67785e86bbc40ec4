-- +goose Up
-- One payment per order. A refund recorded before its charge arrives
-- (status refunded, charged 0) turns that charge into a no-op.
CREATE TABLE IF NOT EXISTS payments (
    order_id       text PRIMARY KEY,
    customer_id    text NOT NULL DEFAULT '',
    status         text NOT NULL,                -- charged, declined, refunded
    charged_cents  bigint NOT NULL DEFAULT 0 CHECK (charged_cents >= 0),
    refunded_cents bigint NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0),
    gateway_ref    text NOT NULL DEFAULT '',
    decline_code   text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (refunded_cents <= charged_cents)
);
