package e2e

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestEventsWithoutTimestamp: the README's NDJSON example (two events of
// oven-02 without a timestamp, gzip) stores both values, in order; so do
// line-protocol lines without a timestamp and JSON events posted one after
// the other; a retried event with an id stays a duplicate although it gets
// another server time.
func TestEventsWithoutTimestamp(t *testing.T) {
	s := start(t, "")
	readme := gzipped([]byte("{\"machineId\":\"oven-02\",\"temp\":181.2}\n{\"machineId\":\"oven-02\",\"temp\":181.9}\n"))
	r := s.do("POST", "/api/v1/events", "application/x-ndjson", readme, "Content-Encoding", "gzip")
	if r.status != 202 || strings.TrimSpace(string(r.body)) != `{"accepted":2,"duplicates":0}` {
		t.Fatalf("README example: %d %s, want 202 {\"accepted\":2,\"duplicates\":0}", r.status, r.body)
	}
	for _, v := range []string{"182.0", "182.1", "182.2"} {
		if r := s.do("POST", "/api/v1/events", "application/json", []byte(`{"machineId":"oven-02","temp":`+v+`}`)); r.status != 202 {
			t.Fatalf("post: %d %s", r.status, r.body)
		}
	}
	checkSeries(t, s, "oven-02", "temp", []float64{181.2, 181.9, 182.0, 182.1, 182.2})

	if r := s.do("POST", "/write?precision=ms", "", []byte("flow,host=pump-05 lpm=33.5\nflow,host=pump-05 lpm=34\nflow,host=pump-05 lpm=34.5\n")); r.status != 204 {
		t.Fatalf("line protocol: %d %s", r.status, r.body)
	}
	checkSeries(t, s, "pump-05", "flow_lpm", []float64{33.5, 34, 34.5})

	retry := []byte(`{"machineId":"press-07","id":"e-1","temp":71.4}`)
	for i, want := range []string{`{"accepted":1,"duplicates":0}`, `{"accepted":0,"duplicates":1}`} {
		if r := s.do("POST", "/api/v1/events", "application/json", retry); r.status != 202 || strings.TrimSpace(string(r.body)) != want {
			t.Fatalf("post %d of an event with an id: %d %s, want %s", i+1, r.status, r.body, want)
		}
	}
	checkSeries(t, s, "press-07", "temp", []float64{71.4})
}

// checkSeries fails unless the raw samples of machine's metric are want,
// at strictly increasing times.
func checkSeries(t *testing.T, s *server, machine, metric string, want []float64) {
	t.Helper()
	got := s.series(machine, metric)
	if diff := cmp.Diff(got.V, want); diff != "" {
		t.Errorf("%s %s values (-got +want):\n%s", machine, metric, diff)
	}
	if !slices.IsSorted(got.T) || len(slices.Compact(slices.Clone(got.T))) != len(got.T) {
		t.Errorf("%s %s times not strictly increasing: %v", machine, metric, got.T)
	}
}
