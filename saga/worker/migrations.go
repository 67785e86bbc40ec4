package worker

import (
	"embed"

	"github.com/sagaflow/sagaflow/saga/pgmigrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations creates and upgrades the runtime's inbox in the current
// schema; its versions are recorded in sagaflow_inbox_version. A worker
// applies it before its own tables' migrations.
var Migrations = pgmigrate.Set{Name: "worker inbox", Table: "sagaflow_inbox_version", FS: pgmigrate.Sub(migrationFiles, "migrations")}
