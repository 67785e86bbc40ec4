-- +goose Up
-- Admission's share for the oldest pending sagas, whatever their priority.
CREATE INDEX IF NOT EXISTS sagas_pending_age ON sagas (id) WHERE phase = 'pending';
-- An outbox row whose payload does not decode is set aside (leased until
-- 'infinity') with the reason, for an operator.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS quarantine_reason text;
