// Package ginctx is a handler that hands its *gin.Context to a function
// taking a context.Context, once, for the check of archtest.
package ginctx

import (
	"context"

	"github.com/gin-gonic/gin"
)

func wait(ctx context.Context) { <-ctx.Done() }

func useGin(c *gin.Context) { _ = c }

// Handler has one violation (wait(c)) and two right calls.
func Handler(c *gin.Context) {
	wait(c)
	wait(c.Request.Context())
	useGin(c)
}
