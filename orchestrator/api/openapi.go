package api

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/sagaflow/sagaflow/docs"
)

// Media types of the served OpenAPI document.
const (
	mediaJSON = "application/json"
	mediaYAML = "application/yaml"
)

// openAPIJSON serves the API's OpenAPI document (docs/openapi.yaml) as
// JSON.
func openAPIJSON(c *gin.Context) {
	doc, err := docs.OpenAPIJSON()
	if err != nil {
		abort(c, err)
		return
	}
	c.Data(http.StatusOK, mediaJSON, doc)
}

// openAPIYAML serves the API's OpenAPI document as written.
func openAPIYAML(c *gin.Context) {
	c.Data(http.StatusOK, mediaYAML, docs.OpenAPIYAML)
}
