// Package migrations holds the payment worker's own tables, as versioned
// migrations (the runtime's inbox comes from worker.Migrations).
package migrations

import (
	"embed"

	"github.com/sagaflow/sagaflow/saga/pgmigrate"
)

//go:embed *.sql
var files embed.FS

// Set is the payment worker's migrations, recorded in payment_version.
var Set = pgmigrate.Set{Name: "payment", Table: "payment_version", FS: files}
