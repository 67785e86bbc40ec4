package main

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/sagaflow/sagaflow/saga/service"
)

// Config is the orchestrator's configuration, read from the environment:
// what every orchestrator has (service.OrchestratorConfig) and the order
// API's. README.md lists every variable.
type Config struct {
	service.OrchestratorConfig
	// AdminToken guards /admin routes; empty disables them (default empty).
	AdminToken string `env:"ADMIN_TOKEN" help:"bearer token of the /admin routes, for the operator named admin; unset (and no ADMIN_TOKENS): the admin API is off"`
	// AdminTokens are named admin tokens (see ParseAdminTokens).
	AdminTokens string `env:"ADMIN_TOKENS" help:"named admin tokens, name=token or name=@file (the token is the file's first line), comma-separated: each operator's actions carry the name"`
	// adminTokens is AdminTokens parsed by Validate.
	adminTokens map[string]string
	// LedgerTimeout bounds each service's answer to the ledger (default 1s).
	LedgerTimeout time.Duration `env:"LEDGER_TIMEOUT" envDefault:"1s" help:"how long the ledger waits for each service; one that is away is marked unanswered"`
	// RPCTimeout bounds requests relayed to workers (default 5s).
	RPCTimeout time.Duration `env:"RPC_TIMEOUT" envDefault:"5s" help:"bound on a request relayed to a worker"`
	// ProductRate is GET /products/{sku} per second per client (default 20).
	ProductRate float64 `env:"PRODUCT_RATE" envDefault:"20" help:"GET /products/{sku} per second per client IP; more answer 429"`
	// ProductBurst is the burst allowed above ProductRate (default 40).
	ProductBurst int `env:"PRODUCT_BURST" envDefault:"40" help:"burst of GET /products/{sku} allowed above PRODUCT_RATE"`
	// ProductCacheTTL is the window in which a hot SKU (more than 4 reads)
	// is answered with the last answer (default 1s).
	ProductCacheTTL time.Duration `env:"PRODUCT_CACHE_TTL" envDefault:"1s" help:"the window in which a SKU read more than 4 times by GET /products/{sku} is answered with inventory's last answer"`
	// DeliveryTimeout is how long an order waits for its delivery to be
	// confirmed before it is stuck (default 720h, 30 days).
	DeliveryTimeout time.Duration `env:"DELIVERY_TIMEOUT" envDefault:"720h" help:"how long a shipped order waits for its delivery to be confirmed before it is stuck (a replay waits again)"`
	// MaxBodyBytes bounds request bodies (default 1048576).
	MaxBodyBytes int64 `env:"MAX_BODY_BYTES" envDefault:"1048576" help:"largest request body"`
}

// Validate reports every problem at once.
func (c *Config) Validate() []error {
	errs := c.OrchestratorConfig.Validate()
	positive := map[string]time.Duration{
		"RPC_TIMEOUT": c.RPCTimeout, "PRODUCT_CACHE_TTL": c.ProductCacheTTL, "LEDGER_TIMEOUT": c.LedgerTimeout,
		"DELIVERY_TIMEOUT": c.DeliveryTimeout,
	}
	for name, d := range positive {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s: want a positive duration, got %s", name, d))
		}
	}
	if c.ProductRate <= 0 || c.ProductBurst < 1 {
		errs = append(errs, fmt.Errorf("PRODUCT_RATE and PRODUCT_BURST: want positive, got %g and %d", c.ProductRate, c.ProductBurst))
	}
	tokens, err := ParseAdminTokens(c.AdminTokens)
	if err != nil {
		errs = append(errs, fmt.Errorf("ADMIN_TOKENS: %w", err))
	}
	c.adminTokens = tokens
	if c.MaxBodyBytes < 1024 {
		errs = append(errs, fmt.Errorf("MAX_BODY_BYTES: want at least 1024, got %d", c.MaxBodyBytes))
	}
	return errs
}

// operatorName is what an operator's name may be: it goes into logs and
// audit trails as it is.
var operatorName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// ParseAdminTokens reads ADMIN_TOKENS: comma-separated name=token pairs,
// where a token written @path is the first line of that file (a mounted
// secret). Names are distinct, and so are tokens: a token names one
// operator.
func ParseAdminTokens(spec string) (map[string]string, error) {
	out := map[string]string{}
	seen := map[string]string{}
	for _, pair := range strings.Split(spec, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		name, token, ok := strings.Cut(pair, "=")
		switch {
		case !ok:
			return nil, fmt.Errorf("%q is not name=token", name)
		case !operatorName.MatchString(name):
			return nil, fmt.Errorf("operator name %q: want letters, digits and . _ @ - (up to 64)", name)
		case out[name] != "":
			return nil, fmt.Errorf("operator %q is named twice", name)
		}
		if path, ok := strings.CutPrefix(token, "@"); ok {
			b, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("token of %s: %w", name, err)
			}
			token, _, _ = strings.Cut(string(b), "\n")
			token = strings.TrimSpace(token)
		}
		switch {
		case len(token) < 8:
			return nil, fmt.Errorf("token of %s: want at least 8 characters", name)
		case seen[token] != "":
			return nil, fmt.Errorf("operators %s and %s have the same token", seen[token], name)
		}
		out[name], seen[token] = token, name
	}
	return out, nil
}
