-- +goose Up
-- Moves on with every change of the product, its stock included: an
-- operator's compare-and-set (If-Match) names it.
ALTER TABLE products ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 1;
