package api

import (
	"context"
	"net/http"
	"strconv"
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
	p, err := s.products.get(c.Request.Context(), sku, func(ctx context.Context) (contract.Product, error) {
		var p contract.Product
		err := s.rpc.call(ctx, contract.InventoryGetProduct, contract.ProductRef{SKU: sku}, &p)
		return p, err
	})
	if err != nil {
		abort(c, err)
		return
	}
	c.Header("ETag", etag(p.Version))
	c.JSON(http.StatusOK, p)
}

// etag is a product version as an entity tag.
func etag(version int64) string { return `"` + strconv.FormatInt(version, 10) + `"` }

// ifMatch reads If-Match: the version a PUT applies to ("" or absent: any).
func ifMatch(c *gin.Context) (int64, error) {
	h := strings.TrimPrefix(strings.TrimSpace(c.GetHeader("If-Match")), "W/")
	if h == "" || h == "*" {
		return 0, nil
	}
	v, err := strconv.ParseInt(strings.Trim(h, `"`), 10, 64)
	if err != nil || v < 1 {
		return 0, invalid(`If-Match must be a product version as GET /products/{sku} gives it in ETag ("3")`)
	}
	return v, nil
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
	version, err := ifMatch(c)
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
	if err := s.rpc.call(c.Request.Context(), contract.InventoryUpsertProduct, contract.UpsertProduct{
		SKU: sku, Name: *req.Name, PriceCents: *req.PriceCents, Available: *req.Available, IfVersion: version,
	}, &p); err != nil {
		abort(c, err)
		return
	}
	s.products.forget(sku)
	c.Header("ETag", etag(p.Version))
	c.JSON(http.StatusOK, p)
}

// maxDelta bounds one restock.
const maxDelta = 1_000_000_000

// RestockRequest is the body of POST /admin/products/{sku}/restock.
type RestockRequest struct {
	Delta *int64 `json:"delta"`
}

// restockProduct adds to (or, negative, removes from) a product's
// available stock, relative to what it is when inventory applies it. An
// Idempotency-Key makes a retry answer the first request's result instead
// of restocking twice; a broker's redelivery has one effect either way.
func (s *server) restockProduct(c *gin.Context) {
	sku, err := skuParam(c)
	if err != nil {
		abort(c, err)
		return
	}
	key := c.GetHeader("Idempotency-Key")
	if p := keyProblem(key); p != "" {
		abort(c, invalid("%s", p))
		return
	}
	var req RestockRequest
	if err := s.readJSON(c, &req); err != nil {
		abort(c, err)
		return
	}
	if req.Delta == nil || *req.Delta == 0 || *req.Delta > maxDelta || *req.Delta < -maxDelta {
		abort(c, invalid("delta is required: a non-zero whole number between -%d and %d", maxDelta, maxDelta))
		return
	}
	id := ""
	if key != "" {
		id = "restock:" + sku + ":" + key
	}
	var p contract.Product
	if err := s.rpc.callAs(c.Request.Context(), id, contract.InventoryRestock, contract.RestockProduct{SKU: sku, Delta: *req.Delta}, &p); err != nil {
		abort(c, err)
		return
	}
	s.products.forget(sku)
	c.Header("ETag", etag(p.Version))
	c.JSON(http.StatusOK, p)
}
