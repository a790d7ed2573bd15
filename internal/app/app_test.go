package app

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/store/embedded"
)

// TestNewReportsStartupProblems: a second server on the same data directory
// and a bad configuration fail in New, before anything runs.
func TestNewReportsStartupProblems(t *testing.T) {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := New(ctx, cfg, slog.New(slog.DiscardHandler), "test")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	if _, err := New(context.Background(), cfg, slog.New(slog.DiscardHandler), "test"); !errors.Is(err, embedded.ErrLocked) {
		t.Errorf("second New on the same data dir: got %v, want ErrLocked", err)
	}
	resp, err := http.Get("http://" + a.Addr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/readyz = %d while running, want 200", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel = %v, want nil", err)
	}

	bad := cfg
	bad.LogCapacity = 1
	if _, err := New(context.Background(), bad, slog.New(slog.DiscardHandler), "test"); err == nil || !strings.Contains(err.Error(), "--log-capacity") {
		t.Errorf("New with a bad config: got %v, want an error naming --log-capacity", err)
	}
}
