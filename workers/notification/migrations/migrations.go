// Package migrations holds the notification worker's own tables, as versioned
// migrations (the runtime's inbox comes from worker.Migrations).
package migrations

import (
	"embed"

	"github.com/sagaflow/sagaflow/saga/pgmigrate"
)

//go:embed *.sql
var files embed.FS

// Set is the notification worker's migrations, recorded in notification_version.
var Set = pgmigrate.Set{Name: "notification", Table: "notification_version", FS: files}
