-- +goose Up
-- The worker runtime's inbox: processed commands and their replies (the
-- idempotent consumer). In the current schema (the pool's search_path);
-- IF NOT EXISTS adopts a table made before migrations.
CREATE TABLE IF NOT EXISTS inbox (
    message_id   text PRIMARY KEY,
    type         text NOT NULL,
    reply        bytea,
    processed_at timestamptz NOT NULL DEFAULT now()
);
