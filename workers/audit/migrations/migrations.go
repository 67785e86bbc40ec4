// Package migrations holds the audit worker's own tables, as versioned
// migrations (the runtime's inbox comes from worker.Migrations).
package migrations

import (
	"embed"

	"github.com/sagaflow/sagaflow/saga/pgmigrate"
)

//go:embed *.sql
var files embed.FS

// Set is the audit worker's migrations, recorded in audit_version.
var Set = pgmigrate.Set{Name: "audit", Table: "audit_version", FS: files}
