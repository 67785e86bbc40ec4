// Package api is the orchestrator's REST API (gin): orders, products,
// admin routes, health and sagaprom. docs/api.md and docs/openapi.yaml are
// its contract.
package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/contrib/instrumentation/github.com/gin-gonic/gin/otelgin"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/console"
	"github.com/sagaflow/sagaflow/saga/coordinator"
	"github.com/sagaflow/sagaflow/saga/pgstore"
	"github.com/sagaflow/sagaflow/saga/sagaprom"
	"github.com/sagaflow/sagaflow/saga/service"
)

// Deps are what the API works with.
type Deps struct {
	Coordinator *coordinator.Coordinator
	Store       *pgstore.Store
	Bus         *amqpbus.Bus
	DB          *pgxpool.Pool
	Registry    *prometheus.Registry
	Log         zerolog.Logger
	// AdminToken guards /admin routes, as the operator "admin"; with
	// AdminTokens empty too, the admin routes are refused.
	AdminToken string
	// AdminTokens are named tokens: operator name to token. The name of
	// the token a request carries is recorded with its actions.
	AdminTokens map[string]string
	// RPCTimeout bounds a request relayed to a worker (default 5s).
	RPCTimeout time.Duration
	// MaxBodyBytes bounds request bodies (default 1 MiB).
	MaxBodyBytes int64
	// LedgerTimeout bounds each service's answer to the ledger (default
	// 1s): one that is away is marked, not waited for.
	LedgerTimeout time.Duration
	// ProductRate is how many GET /products/{sku} one client (IP address)
	// may send per second (default 20), with bursts of ProductBurst
	// (default 40); more answer 429 with Retry-After.
	ProductRate  float64
	ProductBurst int
	// ProductCacheTTL is the window in which a SKU read more than
	// hotReads times is answered with inventory's last answer (default
	// 1s; stock moves, so keep it short).
	ProductCacheTTL time.Duration
}

type server struct {
	Deps
	rpc      rpc
	limiter  *clientLimiter
	tarpit   chan struct{}
	products *productCache
}

// New returns the API's HTTP handlers: the public API (orders, products,
// the OpenAPI document, health), for HTTP_ADDR, and the operators' routes
// (/admin/*), for the admin listener (ADMIN_ADDR), which also serves
// /metrics and the profiler.
func New(d Deps) (public, admin http.Handler) {
	if d.RPCTimeout <= 0 {
		d.RPCTimeout = 5 * time.Second
	}
	if d.MaxBodyBytes <= 0 {
		d.MaxBodyBytes = 1 << 20
	}
	if d.LedgerTimeout <= 0 {
		d.LedgerTimeout = time.Second
	}
	if d.ProductRate <= 0 {
		d.ProductRate = 20
	}
	if d.ProductBurst <= 0 {
		d.ProductBurst = 40
	}
	if d.ProductCacheTTL <= 0 {
		d.ProductCacheTTL = time.Second
	}
	s := &server{Deps: d, rpc: rpc{bus: d.Bus, timeout: d.RPCTimeout},
		limiter: newClientLimiter(d.ProductRate, d.ProductBurst), tarpit: make(chan struct{}, maxTarpitted),
		products: newProductCache(d.ProductCacheTTL)}
	gin.SetMode(gin.ReleaseMode)

	r := s.engine(s.limitProducts)
	r.POST("/orders", s.createOrder)
	r.GET("/orders", s.listOrders)
	r.GET("/orders/:id", s.getOrder)
	r.GET("/orders/:id/events", s.orderEvents)
	r.POST("/orders/:id/delivery", s.confirmDelivery)
	r.GET("/products/:sku", s.getProduct)
	r.GET("/openapi.json", openAPIJSON)
	r.GET("/openapi.yaml", openAPIYAML)
	s.health(r)

	a := s.engine()
	g := a.Group("/admin", s.requireAdmin)
	g.PUT("/products/:sku", s.putProduct)
	g.POST("/products/:sku/restock", s.restockProduct)
	g.GET("/orders/:id", s.getAdminOrder)
	g.GET("/orders/:id/ledger", s.ledger)
	g.GET("/sagas", s.listSagas)
	g.POST("/replays", s.bulkReplay)
	g.GET("/sagas/:id", s.getSaga)
	g.GET("/sagas/:id/events", s.sagaEvents)
	g.POST("/sagas/:id/replay", s.replaySaga)
	g.POST("/sagas/:id/cancel", s.cancelSaga)
	g.GET("/quarantine", s.listQuarantined)
	g.GET("/dead-letters", s.deadLetters)
	g.POST("/dead-letters/redrive", s.redrive)
	g.GET("/outbox", s.outbox)
	// The operator console (HTML, with its own login and sessions).
	ui := console.New(console.Options{Coordinator: d.Coordinator, Store: d.Store, Bus: d.Bus, Tokens: s.tokens(),
		Trail: s.consoleTrail, Ledger: func(ctx context.Context, id uuid.UUID) (json.RawMessage, error) {
			return json.Marshal(s.ledgerOf(ctx, d.Log, id))
		}, Log: d.Log, Prefix: "/ui", QueueOf: contract.QueueOf})
	a.Any("/ui/*page", gin.WrapH(ui))
	a.GET("/ui", func(c *gin.Context) { c.Redirect(http.StatusMovedPermanently, "/ui/") })
	return r, a
}

// tokens are the admin tokens by operator name (ADMIN_TOKEN is "admin").
func (s *server) tokens() map[string]string {
	out := map[string]string{}
	if s.AdminToken != "" {
		out[UnnamedOperator] = s.AdminToken
	}
	maps.Copy(out, s.AdminTokens)
	return out
}

// consoleTrail is a saga's audit trail for the console.
func (s *server) consoleTrail(ctx context.Context, id uuid.UUID) ([]console.TrailEvent, error) {
	var trail contract.OrderEventsReply
	if err := s.rpc.call(ctx, contract.AuditOrderEvents, contract.OrderRef{OrderID: id.String()}, &trail); err != nil {
		return nil, err
	}
	out := make([]console.TrailEvent, 0, len(trail.Events))
	for _, e := range trail.Events {
		te := console.TrailEvent{Seq: e.Seq, Type: e.Type, At: e.At, State: e.State, Step: e.Step, Reason: e.Reason}
		if e.Data != nil {
			te.Operator, te.Why = e.Data.Operator, e.Data.Reason
		}
		out = append(out, te)
	}
	return out, nil
}

// engine is a router with the middleware every route has (first) and
// JSON answers for unknown routes and methods.
func (s *server) engine(first ...gin.HandlerFunc) *gin.Engine {
	r := gin.New()
	// A client is its connection's address: X-Forwarded-For is anyone's to
	// write, and would let one client pass for thousands.
	_ = r.SetTrustedProxies(nil)
	r.HandleMethodNotAllowed = true
	r.ContextWithFallback = true
	r.Use(append(append([]gin.HandlerFunc{measure}, first...), otelgin.Middleware("sagaflow-orchestrator"), s.logging, s.recovery)...)
	r.NoRoute(func(c *gin.Context) {
		abort(c, errorf(http.StatusNotFound, CodeNotFound, "no route %s %s", c.Request.Method, c.Request.URL.Path))
	})
	r.NoMethod(func(c *gin.Context) {
		abort(c, errorf(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "%s is not allowed on %s", c.Request.Method, c.Request.URL.Path))
	})
	return r
}

// measure counts every request and its time by route pattern, method and
// status (sagaflow_http_requests_total, sagaflow_http_request_duration_seconds);
// a path no route matches counts as "unmatched" and an unusual method as
// "other", so that scanners cannot grow the label set.
func measure(c *gin.Context) {
	start := time.Now()
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "unmatched"
	}
	method := c.Request.Method
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
	default:
		method = "other" // any token is a method: keep the label set bounded
	}
	sagaprom.HTTPRequests.WithLabelValues(route, method, strconv.Itoa(c.Writer.Status())).Inc()
	sagaprom.HTTPDuration.WithLabelValues(route, method).Observe(time.Since(start).Seconds())
}

// health serves /healthz and /readyz.
func (s *server) health(r *gin.Engine) {
	r.GET("/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, service.Check(c.Request.Context(), s.DB, s.Bus)) })
	r.GET("/readyz", func(c *gin.Context) {
		st := service.Check(c.Request.Context(), s.DB, s.Bus)
		code := http.StatusOK
		if !st.OK() {
			code = http.StatusServiceUnavailable
		}
		c.JSON(code, st)
	})
}

const logKey = "sagaflow.log"

func logOf(c *gin.Context) *zerolog.Logger {
	if l, ok := c.Get(logKey); ok {
		return l.(*zerolog.Logger)
	}
	l := zerolog.Nop()
	return &l
}

// logging logs every request at debug level, and failures louder.
func (s *server) logging(c *gin.Context) {
	start := time.Now()
	// Every response names its request; the log lines about it carry the
	// same id, so that a client's report finds the error behind a 5xx.
	id := c.GetHeader("X-Request-ID")
	if keyProblem(id) != "" || id == "" || len(id) > 64 {
		id = uuid.NewString()
	}
	c.Header("X-Request-ID", id)
	log := s.Log.With().Str("request_id", id).Str("method", c.Request.Method).Str("path", c.Request.URL.Path).Logger()
	c.Set(logKey, &log)
	c.Next()
	status := c.Writer.Status()
	ev := log.Debug()
	if status >= 500 {
		ev = log.Warn()
	}
	ev.Int("status", status).Dur("took", time.Since(start)).Msg("request")
}

// recovery turns a panic into a JSON 500 instead of a dropped connection.
func (s *server) recovery(c *gin.Context) {
	defer func() {
		if p := recover(); p != nil {
			logOf(c).Error().Interface("panic", p).Msg("handler panicked")
			abort(c, errorf(http.StatusInternalServerError, CodeInternal, "internal error"))
		}
	}()
	c.Next()
}

// UnnamedOperator is the operator of the unnamed ADMIN_TOKEN.
const UnnamedOperator = "admin"

// requireAdmin checks Authorization: Bearer <token> against every admin
// token, each in constant time, and keeps the operator it names for the
// handler. With no token configured, the admin API is off.
func (s *server) requireAdmin(c *gin.Context) {
	if s.AdminToken == "" && len(s.AdminTokens) == 0 {
		abort(c, errorf(http.StatusForbidden, CodeForbidden, "the admin API is disabled: neither ADMIN_TOKEN nor ADMIN_TOKENS is set"))
		return
	}
	got, ok := strings.CutPrefix(c.GetHeader("Authorization"), "Bearer ")
	operator := ""
	if ok && got != "" {
		for name, token := range s.tokens() {
			if token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1 {
				operator = name
			}
		}
	}
	if operator == "" {
		c.Header("WWW-Authenticate", `Bearer realm="sagaflow-admin"`)
		abort(c, errorf(http.StatusUnauthorized, CodeUnauthorized, "a valid admin bearer token is required"))
		return
	}
	c.Set(operatorKey, operator)
	c.Next()
}

const operatorKey = "sagaflow.operator"

// operatorOf is the operator an admin request authenticated as.
func operatorOf(c *gin.Context) string { return c.GetString(operatorKey) }

// traceHeaders renders the request span's W3C trace context (the
// caller's traceparent continued, or a new trace) as message headers.
func traceHeaders(ctx context.Context) map[string]string {
	h := map[string]string{}
	otel.GetTextMapPropagator().Inject(ctx, propagation.MapCarrier(h))
	return h
}
