package app

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/twinline/twinline/internal/api"
	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/ratelimit"
)

// tracesLimit is the relay's rate per identity: a dashboard tab exports a
// batch of render spans every second at most (web/src/lib/otel.ts), and
// one identity may have a few tabs open.
var tracesLimit = ratelimit.Limit{Rate: 5, Burst: 20}

// newTracesLimit is the relay's per-client rate limit (nil when rate
// limits are off), shared across replicas with Redis like the others.
func newTracesLimit(cfg config.Config, rdb redis.UniversalClient, logger *slog.Logger, reg prometheus.Registerer) (func(http.Handler) http.Handler, error) {
	if !rateLimited(cfg) {
		return nil, nil
	}
	l, err := ratelimit.New(ratelimit.Options{Name: "traces", Limit: tracesLimit, Redis: rdb, Prefix: cfg.RedisPrefix,
		Logger: logger, Registerer: reg, Key: api.ClientKey})
	if err != nil {
		return nil, fmt.Errorf("building the traces rate limit: %w", err)
	}
	return l.Middleware, nil
}
