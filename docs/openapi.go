// Package docs holds the contract of the order system's REST API:
// openapi.yaml (OpenAPI 3.1), which api.md explains in prose, embedded for
// the orchestrator to serve and the tests to check the API against.
package docs

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/goccy/go-yaml"
)

// OpenAPIYAML is openapi.yaml: the OpenAPI 3.1 description of the
// orchestrator's REST API, which api.md explains in prose.
//
//go:embed openapi.yaml
var OpenAPIYAML []byte

// openAPIJSON converts the document once, on first use.
var openAPIJSON = sync.OnceValues(func() ([]byte, error) {
	compact, err := yaml.YAMLToJSON(OpenAPIYAML)
	if err != nil {
		return nil, fmt.Errorf("docs: openapi.yaml: %w", err)
	}
	var out bytes.Buffer
	// Indenting also checks that the conversion produced valid JSON.
	if err := json.Indent(&out, compact, "", "  "); err != nil {
		return nil, fmt.Errorf("docs: openapi.yaml as JSON: %w", err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
})

// OpenAPIJSON returns the OpenAPI document as indented JSON, with the keys
// in the order openapi.yaml has them. It is converted on the first
// call; later calls return the same bytes, which callers must not modify.
func OpenAPIJSON() ([]byte, error) {
	return openAPIJSON()
}
