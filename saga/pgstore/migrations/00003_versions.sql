-- +goose Up
-- The version of its definition that drives each saga (saga.Definition.Version):
-- sagas from before versions existed are version 1. A constant default makes
-- this instant, whatever the table's size, and the binaries of the previous
-- release, which do not name the column, keep working beside it.
ALTER TABLE sagas ADD COLUMN IF NOT EXISTS version integer NOT NULL DEFAULT 1;
