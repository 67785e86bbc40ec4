package api

import (
	"context"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/sagaflow/sagaflow/internal/contract"
)

// clientLimiter gives each client (its IP address: the API trusts no
// proxy's X-Forwarded-For) a token bucket of its own.
type clientLimiter struct {
	rate  rate.Limit
	burst int

	mu      sync.Mutex
	clients map[string]*clientBucket
	swept   time.Time
}

type clientBucket struct {
	lim  *rate.Limiter
	seen time.Time
}

func newClientLimiter(perSecond float64, burst int) *clientLimiter {
	return &clientLimiter{rate: rate.Limit(perSecond), burst: burst, clients: map[string]*clientBucket{}}
}

// allow takes a token of client's bucket; when there is none it says how
// long until there is.
func (l *clientLimiter) allow(client string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute {
		// Forget clients idle for a minute: their buckets are full again.
		for k, b := range l.clients {
			if now.Sub(b.seen) > time.Minute {
				delete(l.clients, k)
			}
		}
		l.swept = now
	}
	b := l.clients[client]
	if b == nil {
		b = &clientBucket{lim: rate.NewLimiter(l.rate, l.burst)}
		l.clients[client] = b
	}
	b.seen = now
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// limitProducts answers 429 with Retry-After (whole seconds, at least 1)
// to a client over its rate of GET /products/{sku}.
func (s *server) limitProducts(c *gin.Context) {
	if c.Request.Method != http.MethodGet || !strings.HasPrefix(c.Request.URL.Path, "/products/") {
		c.Next()
		return
	}
	ok, wait := s.limiter.allow(c.ClientIP(), time.Now())
	if !ok {
		after := int(math.Ceil(max(wait, time.Second).Seconds()))
		// Tarpit: the refusal itself waits a second (for at most
		// maxTarpitted requests at once), so a client that does not wait
		// by itself is slowed to a request per connection per second
		// instead of costing the server a refusal per microsecond.
		select {
		case s.tarpit <- struct{}{}:
			select {
			case <-time.After(time.Second):
			case <-c.Request.Context().Done():
			}
			<-s.tarpit
		default:
		}
		c.Header("Retry-After", strconv.Itoa(after))
		c.Header("X-Request-ID", uuid.NewString())
		c.AbortWithStatusJSON(http.StatusTooManyRequests, gin.H{"error": gin.H{"code": CodeRateLimited,
			"message": "too many requests from this client; retry after " + wait.Round(time.Millisecond).String()}})
		return
	}
	c.Next()
}

// maxTarpitted bounds the refused requests held before their answer.
const maxTarpitted = 4096

// productCache sends one query for a SKU however many clients ask at
// once, and, for a SKU read often (a flood), keeps inventory's answer for
// a short time: a public route that costs the inventory's database little
// per repeat, while a SKU read now and then is always read afresh (a
// customer who just ordered sees the stock move).
type productCache struct {
	ttl     time.Duration
	flights singleflight.Group

	mu      sync.Mutex
	entries map[string]cachedProduct
}

// hotReads is how many reads of a SKU within ttl make it hot: from the
// next one until the window ends, answers are reused.
const hotReads = 4

// cachedProduct is the last answer for a SKU and the window of reads it
// belongs to.
type cachedProduct struct {
	p       contract.Product
	err     error     // a not_found answer, kept too
	expires time.Time // the window's end
	reads   int       // within the window
}

func newProductCache(ttl time.Duration) *productCache {
	return &productCache{ttl: ttl, entries: map[string]cachedProduct{}}
}

// get returns the kept answer for a hot sku (more than hotReads reads
// within ttl), or asks fetch (once for every concurrent caller) and keeps
// a product or a not_found.
func (pc *productCache) get(ctx context.Context, sku string, fetch func(ctx context.Context) (contract.Product, error)) (contract.Product, error) {
	now := time.Now()
	pc.mu.Lock()
	if len(pc.entries) > 100_000 {
		pc.entries = map[string]cachedProduct{} // bounded: start afresh
	}
	e, ok := pc.entries[sku]
	if ok && now.Before(e.expires) {
		e.reads++
		pc.entries[sku] = e
		if e.reads > hotReads {
			pc.mu.Unlock()
			return e.p, e.err
		}
	}
	pc.mu.Unlock()
	v, err, _ := pc.flights.Do(sku, func() (any, error) {
		// Not the first caller's context: its cancellation must not fail
		// the others waiting on the same flight.
		p, err := fetch(context.WithoutCancel(ctx))
		if err == nil || ErrorOf(err).Status == http.StatusNotFound {
			pc.mu.Lock()
			e := pc.entries[sku]
			if now := time.Now(); !now.Before(e.expires) {
				e = cachedProduct{expires: now.Add(pc.ttl), reads: 1} // a new window
			}
			e.p, e.err = p, err
			pc.entries[sku] = e
			pc.mu.Unlock()
		}
		return p, err
	})
	p, _ := v.(contract.Product)
	return p, err
}

// forget drops sku's entry (after a change through the admin API).
func (pc *productCache) forget(sku string) {
	pc.mu.Lock()
	delete(pc.entries, sku)
	pc.mu.Unlock()
}
