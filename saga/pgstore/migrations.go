package pgstore

import (
	"embed"

	"github.com/sagaflow/sagaflow/saga/pgmigrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations creates and upgrades the store's tables (sagas, outbox) in
// the current schema; its versions are recorded in sagaflow_store_version.
var Migrations = pgmigrate.Set{Name: "saga store", Table: "sagaflow_store_version", FS: pgmigrate.Sub(migrationFiles, "migrations")}
