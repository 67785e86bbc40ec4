// Package sagaflow holds what the whole repository shares from its root:
// the database schema, embedded so every binary can create its own tables.
package sagaflow

import (
	_ "embed"
	"fmt"
	"strings"
)

//go:embed schema.sql
var schemaSQL string

const sectionMarker = "-- section: "

// SchemaSection returns the DDL of one service's section of schema.sql
// ("orchestrator", "inventory", ...).
func SchemaSection(name string) (string, error) {
	var (
		out     strings.Builder
		current string
		found   bool
	)
	for _, line := range strings.SplitAfter(schemaSQL, "\n") {
		if rest, ok := strings.CutPrefix(line, sectionMarker); ok {
			current = strings.TrimSpace(rest)
			found = found || current == name
			continue
		}
		if current == name {
			out.WriteString(line)
		}
	}
	if !found {
		return "", fmt.Errorf("sagaflow: schema.sql has no section %q", name)
	}
	return out.String(), nil
}
