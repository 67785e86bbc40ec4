-- +goose Up
-- Deliveries. deliver_at is when the delivery loop looks at a prepared
-- shipment next: SIM_DELIVERY_DELAY after the prepare, now when the
-- customer confirms receipt, a lease later once a pass claimed it;
-- delivered_at is when it was delivered; announced is true once the
-- signal shipping.delivered is out: confirmed by the broker (the loop), or
-- kept in the inbox with the prepare's reply, which a redelivered prepare
-- sends again (SIM_DELIVERY_DELAY 0s). Until then the loop sends it again;
-- the order ignores copies.
ALTER TABLE shipments ADD COLUMN IF NOT EXISTS deliver_at timestamptz;
ALTER TABLE shipments ADD COLUMN IF NOT EXISTS delivered_at timestamptz;
ALTER TABLE shipments ADD COLUMN IF NOT EXISTS announced boolean NOT NULL DEFAULT false;
-- The delivery loop: shipments due and not yet announced, soonest first.
CREATE INDEX IF NOT EXISTS shipments_due ON shipments (deliver_at)
    WHERE deliver_at IS NOT NULL AND NOT announced;
