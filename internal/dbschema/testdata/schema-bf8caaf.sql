-- sagaflow database schema.
--
-- Every service owns one PostgreSQL schema and touches no other, so each can
-- be pointed at a database of its own. At start a service applies its own
-- section of this file (sections begin with "-- section: <name>"), under an
-- advisory lock, idempotently: starting on an empty database creates
-- everything, starting on an existing one changes nothing.

-- section: orchestrator
CREATE SCHEMA IF NOT EXISTS orchestrator;

-- One row per saga: its whole state, saved in one UPDATE per decision.
-- data and history are json, not jsonb: the engine writes them whole and
-- reads them whole, and parsing jsonb on every write (and printing it on
-- every read) was a fifth of PostgreSQL's work; json still checks the
-- syntax, and ->, ->> and json_* functions still query them.
CREATE TABLE IF NOT EXISTS orchestrator.sagas (
    id              uuid PRIMARY KEY,            -- UUIDv7: ordered by creation
    definition      text NOT NULL,               -- saga type, e.g. 'order'
    phase           text NOT NULL,               -- engine phase: pending, running, compensating, completed, rejected, cancelled, stuck
    state           text NOT NULL,               -- the definition's label, e.g. 'charging_payment'
    step            integer NOT NULL DEFAULT 0,  -- index of the running (or compensating) step
    attempt         integer NOT NULL DEFAULT 0,  -- sends of the current command within its budget
    waiting         boolean NOT NULL DEFAULT false, -- backing off before a re-send
    deadline        timestamptz,                 -- when the timer looks next; NULL when pending, stuck or terminal
    stuck_in        text NOT NULL DEFAULT '',    -- phase a stuck saga resumes on replay
    reason          text NOT NULL DEFAULT '',    -- why it left the happy path
    stuck_reason    text NOT NULL DEFAULT '',    -- why it waits for an operator
    priority        smallint NOT NULL DEFAULT 0,
    data            json NOT NULL,               -- input merged with successful replies' payloads
    history         json NOT NULL DEFAULT '[]',  -- step records: name, kind, status, attempts, times, error
    seq             integer NOT NULL DEFAULT 0,  -- domain events emitted so far
    trace_parent    text NOT NULL DEFAULT '',    -- W3C trace context of the creating request
    idempotency_key text,                        -- client's Idempotency-Key (unique when set)
    fingerprint     text NOT NULL DEFAULT '',    -- hash of the request behind the key
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
-- Only orders sent with a key are indexed by it: the others never touch
-- this index, however often they change.
CREATE UNIQUE INDEX IF NOT EXISTS sagas_idempotency_key ON orchestrator.sagas (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Every decision rewrites its saga's row: vacuum often.
ALTER TABLE orchestrator.sagas SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
-- The timer: due sagas, oldest deadline first.
CREATE INDEX IF NOT EXISTS sagas_due ON orchestrator.sagas (deadline) WHERE deadline IS NOT NULL;
-- Admission: pending sagas, highest priority and oldest first.
CREATE INDEX IF NOT EXISTS sagas_pending ON orchestrator.sagas (priority DESC, id) WHERE phase = 'pending';
-- Listing by state, newest first (ids are time-ordered).
CREATE INDEX IF NOT EXISTS sagas_state ON orchestrator.sagas (state, id DESC);

-- The transactional outbox: the messages a transaction causes, staged in
-- that transaction as one row, published by the relay after commit and
-- deleted once the broker confirmed them all.
CREATE TABLE IF NOT EXISTS orchestrator.outbox (
    id           uuid PRIMARY KEY,               -- UUIDv7
    messages     integer NOT NULL,               -- how many messages payload holds
    payload      bytea NOT NULL,                 -- JSON array: exchange, routing key, properties, headers, body
    created_at   timestamptz NOT NULL,
    leased_until timestamptz NOT NULL            -- the writer's relay owns it until then; then the scan does
);
CREATE INDEX IF NOT EXISTS outbox_lease ON orchestrator.outbox (leased_until);
-- A row is written once and read only after a crash: keep payloads of up
-- to 8 kB inline and uncompressed (compressing every one cost more CPU than
-- the rest of the insert), larger ones out of line, still uncompressed.
ALTER TABLE orchestrator.outbox SET (toast_tuple_target = 8160);
ALTER TABLE orchestrator.outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
-- Rows live for milliseconds: vacuum as soon as a few thousand are dead.
ALTER TABLE orchestrator.outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0);

-- section: inventory
CREATE SCHEMA IF NOT EXISTS inventory;

CREATE TABLE IF NOT EXISTS inventory.products (
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
CREATE TABLE IF NOT EXISTS inventory.reservations (
    order_id     text PRIMARY KEY,
    status       text NOT NULL,                  -- reserved, released, committed
    lines        jsonb NOT NULL DEFAULT '[]',    -- [{sku, quantity, price_cents}]
    amount_cents bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Processed commands and their replies (the idempotent-consumer inbox).
CREATE TABLE IF NOT EXISTS inventory.inbox (
    message_id   text PRIMARY KEY,
    type         text NOT NULL,
    reply        bytea,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- section: payment
CREATE SCHEMA IF NOT EXISTS payment;

-- One payment per order. A refund recorded before its charge arrives
-- (status refunded, charged 0) turns that charge into a no-op.
CREATE TABLE IF NOT EXISTS payment.payments (
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

CREATE TABLE IF NOT EXISTS payment.inbox (
    message_id   text PRIMARY KEY,
    type         text NOT NULL,
    reply        bytea,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- section: shipping
CREATE SCHEMA IF NOT EXISTS shipping;

-- One shipment per order. A cancellation recorded before its prepare
-- arrives turns that prepare into a no-op.
CREATE TABLE IF NOT EXISTS shipping.shipments (
    order_id    text PRIMARY KEY,
    status      text NOT NULL,                   -- prepared, cancelled, refused
    country     text NOT NULL DEFAULT '',
    carrier_ref text NOT NULL DEFAULT '',
    prepared    boolean NOT NULL DEFAULT false,  -- a shipment was actually prepared
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS shipping.inbox (
    message_id   text PRIMARY KEY,
    type         text NOT NULL,
    reply        bytea,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- section: notification
CREATE SCHEMA IF NOT EXISTS notification;

-- Email and SMS sent (simulated: recording is sending). One of each per
-- order: the primary key makes a second outcome or a redelivery a no-op.
CREATE TABLE IF NOT EXISTS notification.notifications (
    order_id   text NOT NULL,
    channel    text NOT NULL,                    -- email, sms
    event_id   uuid NOT NULL,                    -- the outcome event that caused it
    event_type text NOT NULL,                    -- order.completed, order.cancelled, order.rejected
    recipient  text NOT NULL,
    body       text NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, channel)
);

CREATE TABLE IF NOT EXISTS notification.inbox (
    message_id   text PRIMARY KEY,
    type         text NOT NULL,
    reply        bytea,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- section: audit
CREATE SCHEMA IF NOT EXISTS audit;

-- Every domain event, once, for compliance. Append-only: a trigger refuses
-- UPDATE, DELETE and TRUNCATE.
CREATE TABLE IF NOT EXISTS audit.events (
    pos          bigserial PRIMARY KEY,          -- arrival order
    id           uuid NOT NULL UNIQUE,           -- the event's id
    saga_id      uuid NOT NULL,
    seq          integer NOT NULL,               -- the event's place in its saga
    type         text NOT NULL,
    at           timestamptz NOT NULL,
    payload      json NOT NULL,                  -- as received, byte for byte
    trace_parent text NOT NULL DEFAULT '',
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_by_saga ON audit.events (saga_id, seq);

CREATE OR REPLACE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit.events is append-only';
END $$;
CREATE OR REPLACE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON audit.events
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE OR REPLACE TRIGGER events_no_truncate BEFORE TRUNCATE ON audit.events
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();

CREATE TABLE IF NOT EXISTS audit.inbox (
    message_id   text PRIMARY KEY,
    type         text NOT NULL,
    reply        bytea,
    processed_at timestamptz NOT NULL DEFAULT now()
);
