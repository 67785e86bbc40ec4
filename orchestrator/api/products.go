package api

import (
	"context"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/sagaflow/sagaflow/internal/contract"
)

// Limits of a product.
const (
	maxPriceCents = 100_000_000 // one million in currency units
	maxStock      = 1_000_000_000
)

func skuParam(c *gin.Context) (string, error) {
	sku := c.Param("sku")
	if !skuRE.MatchString(sku) {
		return "", invalid("sku must be 1-64 letters, digits, '.', '_' or '-'")
	}
	return sku, nil
}

// getProduct asks inventory, over RPC, for a product and its stock.
func (s *server) getProduct(c *gin.Context) {
	sku, err := skuParam(c)
	if err != nil {
		abort(c, err)
		return
	}
	p, err := s.products.get(c, sku, func(ctx context.Context) (contract.Product, error) {
		var p contract.Product
		err := s.rpc.call(ctx, contract.InventoryGetProduct, contract.ProductRef{SKU: sku}, &p)
		return p, err
	})
	if err != nil {
		abort(c, err)
		return
	}
	c.JSON(http.StatusOK, p)
}

// ProductRequest is the body of PUT /admin/products/{sku}.
type ProductRequest struct {
	Name       *string `json:"name"`
	PriceCents *int64  `json:"price_cents"`
	Available  *int64  `json:"available"`
}

// putProduct creates a product or sets its name, price and available stock
// (relayed to inventory).
func (s *server) putProduct(c *gin.Context) {
	sku, err := skuParam(c)
	if err != nil {
		abort(c, err)
		return
	}
	var req ProductRequest
	if err := s.readJSON(c, &req); err != nil {
		abort(c, err)
		return
	}
	var errs []string
	if req.Name == nil {
		errs = append(errs, "name is required")
	} else if p := textProblem("name", *req.Name, maxTextLen, true); p != "" {
		errs = append(errs, p)
	}
	if req.PriceCents == nil || *req.PriceCents < 0 || *req.PriceCents > maxPriceCents {
		errs = append(errs, "price_cents is required, between 0 and 100000000")
	}
	if req.Available == nil || *req.Available < 0 || *req.Available > maxStock {
		errs = append(errs, "available is required, between 0 and 1000000000")
	}
	if len(errs) > 0 {
		abort(c, invalid("%s", strings.Join(errs, "; ")))
		return
	}
	var p contract.Product
	if err := s.rpc.call(c, contract.InventoryUpsertProduct, contract.UpsertProduct{
		SKU: sku, Name: *req.Name, PriceCents: *req.PriceCents, Available: *req.Available,
	}, &p); err != nil {
		abort(c, err)
		return
	}
	s.products.forget(sku)
	c.JSON(http.StatusOK, p)
}
