package app

import (
	"testing"

	"github.com/twinline/twinline/internal/config"
)

func TestRateLimited(t *testing.T) {
	tests := []struct {
		mode, listen string
		want         bool
	}{
		{"auto", "127.0.0.1:8080", false},
		{"auto", "[::1]:8080", false},
		{"auto", "localhost:8080", false},
		{"auto", "0.0.0.0:8080", true},
		{"auto", ":8080", true},
		{"auto", "10.0.0.5:8080", true},
		{"on", "127.0.0.1:8080", true},
		{"off", "0.0.0.0:8080", false},
	}
	for _, tt := range tests {
		cfg := config.Default()
		cfg.RateLimit, cfg.Listen = tt.mode, tt.listen
		if got := rateLimited(cfg); got != tt.want {
			t.Errorf("rateLimited(%s, %s) = %v, want %v", tt.mode, tt.listen, got, tt.want)
		}
	}
}
