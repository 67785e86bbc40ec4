-- +goose Up
-- The catalog and the stock, and one reservation per order.

CREATE TABLE IF NOT EXISTS products (
    sku         text PRIMARY KEY,
    name        text NOT NULL,
    price_cents bigint NOT NULL CHECK (price_cents >= 0),
    available   bigint NOT NULL CHECK (available >= 0),
    reserved    bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold        bigint NOT NULL DEFAULT 0 CHECK (sold >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One reservation per order; its status makes reserve, release and commit
-- idempotent, and a release recorded before its reserve arrives turns that
-- reserve into a no-op.
CREATE TABLE IF NOT EXISTS reservations (
    order_id     text PRIMARY KEY,
    status       text NOT NULL,                  -- reserved, released, committed
    lines        jsonb NOT NULL DEFAULT '[]',    -- [{sku, quantity, price_cents}]
    amount_cents bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
