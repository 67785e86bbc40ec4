// Package migrations holds the inventory worker's own tables, as versioned
// migrations (the runtime's inbox comes from worker.Migrations).
package migrations

import (
	"embed"

	"github.com/sagaflow/sagaflow/saga/pgmigrate"
)

//go:embed *.sql
var files embed.FS

// Set is the inventory worker's migrations, recorded in inventory_version.
var Set = pgmigrate.Set{Name: "inventory", Table: "inventory_version", FS: files}
