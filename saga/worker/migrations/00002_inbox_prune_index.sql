-- +goose Up
-- The prune (Config.InboxRetention) finds old entries through this small
-- index: entries arrive in time order, so a BRIN costs next to nothing.
CREATE INDEX IF NOT EXISTS inbox_processed_at ON inbox USING brin (processed_at);
