package main

import (
	"bytes"
	"context"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseEnvThenFlags(t *testing.T) {
	var (
		dataDir   string
		retention = 24 * time.Hour
		tags      []string
	)
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.StringVar(&dataDir, "data-dir", "./data", "")
	durationVar(fs, &retention, "retention", "")
	listVar(fs, &tags, "lp-machine-tags", "")

	t.Setenv("TWINLINE_DATA_DIR", "/from/env")
	t.Setenv("TWINLINE_RETENTION", "30d")
	t.Setenv("TWINLINE_LP_MACHINE_TAGS", "host, machine")
	if err := parse(fs, []string{"--data-dir", "/from/flag"}); err != nil {
		t.Fatal(err)
	}
	if got, want := dataDir, "/from/flag"; got != want {
		t.Errorf("data-dir = %q, want %q (flag wins over env)", got, want)
	}
	if got, want := retention, 30*24*time.Hour; got != want {
		t.Errorf("retention = %s, want %s", got, want)
	}
	if diff := cmp.Diff(tags, []string{"host", "machine"}); diff != "" {
		t.Errorf("tags (-got +want):\n%s", diff)
	}
}

// A repeatable list flag: each use adds, commas split, and the command
// line replaces the environment's items.
func TestParseRepeatableList(t *testing.T) {
	for _, tc := range []struct {
		env  string
		args []string
		want []string
	}{
		{"", []string{"--url", "http://a", "--url", "http://b,http://c"}, []string{"http://a", "http://b", "http://c"}},
		{"http://e1,http://e2", nil, []string{"http://e1", "http://e2"}},
		{"http://e1", []string{"--url", "http://a", "--url", "http://b"}, []string{"http://a", "http://b"}},
	} {
		var urls []string
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.Var(newAppendListValue(&urls), "url", "")
		if tc.env != "" {
			t.Setenv("TWINLINE_URL", tc.env)
		}
		if err := parse(fs, tc.args); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(urls, tc.want); diff != "" {
			t.Errorf("env %q args %q (-got +want):\n%s", tc.env, tc.args, diff)
		}
	}
}

func TestParseReportsEveryBadEnv(t *testing.T) {
	var n int
	var d time.Duration
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.IntVar(&n, "log-capacity", 1, "")
	durationVar(fs, &d, "retention", "")
	t.Setenv("TWINLINE_LOG_CAPACITY", "lots")
	t.Setenv("TWINLINE_RETENTION", "forever")
	err := parse(fs, nil)
	if err == nil {
		t.Fatal("parse() = nil, want errors")
	}
	for _, want := range []string{"TWINLINE_LOG_CAPACITY", "TWINLINE_RETENTION"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestServeRejectsBadConfigAtOnce(t *testing.T) {
	var stderr bytes.Buffer
	err := run(context.Background(), []string{"serve", "--listen", "nope", "--log-capacity", "3", "--log-level", "loud"}, &bytes.Buffer{}, &stderr)
	if err == nil {
		t.Fatal("serve with a bad config succeeded")
	}
	for _, want := range []string{"--listen", "--log-capacity", "--log-level"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestVersionAndUnknownCommand(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "twinline ") {
		t.Errorf("version printed %q", out.String())
	}
	if err := run(context.Background(), []string{"frobnicate"}, &out, &out); err == nil || !strings.Contains(err.Error(), "frobnicate") {
		t.Errorf("unknown command: got %v", err)
	}
}
