package twin

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/telemetry"
)

// TestSiteFreshness: each site's series is the newest server time any of
// its machines was seen at; a registered machine never seen adds nothing,
// and machines without a site share site="".
func TestSiteFreshness(t *testing.T) {
	clk := &fakeClock{time.UnixMilli(5_000_000)}
	f := open(t, filepath.Join(t.TempDir(), "registry.json"), clk)
	for id, site := range map[string]string{"a1": "aachen", "a2": "aachen", "b1": "bonn", "b2": "bonn"} {
		if _, _, err := f.Put(id, Info{Site: site}); err != nil {
			t.Fatal(err)
		}
	}
	observe := func(received int64, machines ...string) {
		var samples []telemetry.Sample
		for _, m := range machines {
			samples = append(samples, telemetry.Sample{Machine: m, Metric: "x", Time: received, Value: 1})
		}
		f.live.Observe(&telemetry.Batch{Received: received}, samples)
	}
	observe(4_000_000, "a1", "a2")
	observe(4_500_000, "a2", "loose") // "loose" auto-registers without a site
	observe(3_000_000, "a1")          // older than what a1 sent before

	got := f.live.LastSeenBySite(f.List())
	want := map[string]int64{"aachen": 4_500_000, "": 4_500_000}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("LastSeenBySite (-want +got):\n%s", diff)
	}

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewSiteFreshness(f.live, f.Registry))
	exp := `
# HELP twinline_site_last_seen_timestamp_seconds Newest server time (Unix seconds) at which a machine of the site sent data that is now durable, since this replica started; machines without a site under site="".
# TYPE twinline_site_last_seen_timestamp_seconds gauge
twinline_site_last_seen_timestamp_seconds{site=""} 4500
twinline_site_last_seen_timestamp_seconds{site="aachen"} 4500
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(exp)); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}
}
