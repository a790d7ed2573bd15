package app

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/twin"
)

// noPromStore is a store without PromQueryable.
type noPromStore struct{ store.Store }

// TestPrometheusAPIByStore: the query API is served over a store that
// serves PromQL, and says clearly that it is not over one that does not.
func TestPrometheusAPIByStore(t *testing.T) {
	es, err := embedded.Open(filepath.Join(t.TempDir(), "tsdb"), embedded.Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { es.Close() })
	cfg := config.Default()
	list := func() []twin.Info { return nil }
	logger := slog.New(slog.DiscardHandler)

	get := func(h http.Handler) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/prometheus/api/v1/status/buildinfo", nil))
		return rec
	}
	if rec := get(prometheusAPI(cfg, es, list, "v1.2.3", logger, nil)); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"version":"v1.2.3"`) {
		t.Errorf("embedded: %d %s; want 200 with the version", rec.Code, rec.Body)
	}
	cfg.Store = "postgres"
	rec := get(prometheusAPI(cfg, noPromStore{es}, list, "v1.2.3", logger, nil))
	if rec.Code != 501 || !strings.Contains(rec.Body.String(), `"errorType":"unavailable"`) || !strings.Contains(rec.Body.String(), "postgres store") {
		t.Errorf("store without PromQL: %d %s; want 501 unavailable naming the store", rec.Code, rec.Body)
	}
}
