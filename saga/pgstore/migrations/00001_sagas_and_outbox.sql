-- +goose Up
-- The saga store: one row per saga, and the transactional outbox. Tables
-- go into the current schema (the pool's search_path). IF NOT EXISTS: a
-- database made before migrations (sagaflow 0.x created these tables at
-- start) is adopted as it stands.

-- One row per saga: its whole state, saved in one UPDATE per decision.
-- data and history are json, not jsonb: the engine writes them whole and
-- reads them whole, and parsing jsonb on every write (and printing it on
-- every read) was a fifth of PostgreSQL's work; json still checks the
-- syntax, and ->, ->> and json_* functions still query them.
CREATE TABLE IF NOT EXISTS sagas (
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
-- Only sagas created with a key are indexed by it: the others never touch
-- this index, however often they change.
CREATE UNIQUE INDEX IF NOT EXISTS sagas_idempotency_key ON sagas (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Every decision rewrites its saga's row: vacuum often.
ALTER TABLE sagas SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
-- The timer: due sagas, oldest deadline first.
CREATE INDEX IF NOT EXISTS sagas_due ON sagas (deadline) WHERE deadline IS NOT NULL;
-- Admission: pending sagas, highest priority and oldest first.
CREATE INDEX IF NOT EXISTS sagas_pending ON sagas (priority DESC, id) WHERE phase = 'pending';
-- Listing by state, newest first (ids are time-ordered).
CREATE INDEX IF NOT EXISTS sagas_state ON sagas (state, id DESC);

-- The transactional outbox: the messages a transaction causes, staged in
-- that transaction as one row, published by the relay after commit and
-- deleted once the broker confirmed them all.
CREATE TABLE IF NOT EXISTS outbox (
    id           uuid PRIMARY KEY,               -- UUIDv7
    messages     integer NOT NULL,               -- how many messages payload holds
    payload      bytea NOT NULL,                 -- the messages, encoded by saga/pgstore/codec.go (zstd-compressed)
    created_at   timestamptz NOT NULL,
    leased_until timestamptz NOT NULL            -- the writer's relay owns it until then; then the recovery scan does
);
CREATE INDEX IF NOT EXISTS outbox_lease ON outbox (leased_until);
-- A row is written once and read only after a crash: keep payloads of up
-- to 8 kB inline and uncompressed (compressing every one cost more CPU than
-- the rest of the insert), larger ones out of line, still uncompressed.
ALTER TABLE outbox SET (toast_tuple_target = 8160);
ALTER TABLE outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
-- Rows live for milliseconds: vacuum as soon as a few thousand are dead.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0);
