-- +goose Up
-- Every domain event, once, for compliance. Append-only: a trigger refuses
-- UPDATE, DELETE and TRUNCATE.
CREATE TABLE IF NOT EXISTS events (
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
CREATE INDEX IF NOT EXISTS events_by_saga ON events (saga_id, seq);

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit.events is append-only';
END $$;
-- +goose StatementEnd
CREATE OR REPLACE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE OR REPLACE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
