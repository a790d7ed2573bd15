package app

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/twinline/twinline/internal/api"
	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/ratelimit"
)

// newRedisClient connects to --redis-url with short timeouts: an
// unreachable Redis must degrade twinline (local fan-out, store reads), not
// hold ingest up.
func newRedisClient(url string) (*redis.Client, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parsing --redis-url: %w", err)
	}
	opt.ContextTimeoutEnabled = true // the per-call timeouts bound network waits too
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout, opt.MaxRetries = time.Second, time.Second, time.Second, 1
	return redis.NewClient(opt), nil
}

// rateLimited reports whether per-client rate limits apply: always with
// "on", never with "off", and with "auto" unless the server listens on
// loopback only (a laptop, a test, a sidecar).
func rateLimited(cfg config.Config) bool {
	switch cfg.RateLimit {
	case "on":
		return true
	case "off":
		return false
	}
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return true
	}
	ip := net.ParseIP(host)
	return !(host == "localhost" || ip != nil && ip.IsLoopback())
}

// newLimiters builds the ingest and stream rate limiters (Redis-backed
// when rdb is not nil, so the limits hold across replicas).
func newLimiters(cfg config.Config, rdb redis.UniversalClient, logger *slog.Logger, reg prometheus.Registerer) (ingest, stream *ratelimit.Limiter, err error) {
	opts := func(name string, l ratelimit.Limit) ratelimit.Options {
		return ratelimit.Options{Name: name, Limit: l, Redis: rdb, Prefix: cfg.RedisPrefix, Logger: logger, Registerer: reg,
			Key: api.ClientKey}
	}
	if ingest, err = ratelimit.New(opts("ingest", ratelimit.Limit{Rate: cfg.IngestRate, Burst: cfg.IngestBurst})); err != nil {
		return nil, nil, fmt.Errorf("building the ingest rate limit: %w", err)
	}
	if stream, err = ratelimit.New(opts("stream", ratelimit.Limit{Rate: cfg.StreamRate, Burst: cfg.StreamBurst})); err != nil {
		return nil, nil, fmt.Errorf("building the stream rate limit: %w", err)
	}
	return ingest, stream, nil
}
