-- +goose Up
-- One shipment per order. A cancellation recorded before its prepare
-- arrives turns that prepare into a no-op.
CREATE TABLE IF NOT EXISTS shipments (
    order_id    text PRIMARY KEY,
    status      text NOT NULL,                   -- prepared, cancelled, refused
    country     text NOT NULL DEFAULT '',
    carrier_ref text NOT NULL DEFAULT '',
    prepared    boolean NOT NULL DEFAULT false,  -- a shipment was actually prepared
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
