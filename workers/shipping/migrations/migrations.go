// Package migrations holds the shipping worker's own tables, as versioned
// migrations (the runtime's inbox comes from worker.Migrations).
package migrations

import (
	"embed"

	"github.com/sagaflow/sagaflow/saga/pgmigrate"
)

//go:embed *.sql
var files embed.FS

// Set is the shipping worker's migrations, recorded in shipping_version.
var Set = pgmigrate.Set{Name: "shipping", Table: "shipping_version", FS: files}
