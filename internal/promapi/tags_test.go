package promapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/promapi"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// TestTagAttributesAsLabels: attributes set from line-protocol tags
// (Registry.MergeAttributes) label the PromQL series when named in
// --prometheus-attributes, and a tag that changes relabels them.
func TestTagAttributesAsLabels(t *testing.T) {
	s, err := embedded.Open(filepath.Join(t.TempDir(), "tsdb"), embedded.Options{MaxFuture: -1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	reg, err := twin.OpenRegistryFile(filepath.Join(t.TempDir(), "registry.json"), time.Now, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	for i, fleet := range []string{"South", "North"} {
		id := fmt.Sprintf("truck_%d", i)
		if _, _, err := reg.MergeAttributes(id, map[string]string{"fleet": fleet, "driver": "Trish"}); err != nil {
			t.Fatal(err)
		}
		if err := s.Append(context.Background(), []telemetry.Sample{{Machine: id, Metric: "readings_velocity", Time: at.UnixMilli(), Value: float64(10 + i)}}); err != nil {
			t.Fatal(err)
		}
	}
	h := promapi.New(s.PromQueryable(), reg.List, promapi.Options{Attributes: []string{"fleet"}})
	query := func(q string) map[string]string { // machine → fleet label
		t.Helper()
		form := url.Values{"query": {q}, "time": {fmt.Sprint(at.Unix())}}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/prometheus/api/v1/query?"+form.Encode(), nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", q, rec.Code, rec.Body)
		}
		var ans struct {
			Data struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
				} `json:"result"`
			} `json:"data"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, r := range ans.Data.Result {
			out[r.Metric["machine"]] = r.Metric["fleet"]
		}
		return out
	}
	if got := query(`readings_velocity{fleet="South"}`); len(got) != 1 || got["truck_0"] != "South" {
		t.Fatalf(`fleet="South": %v`, got)
	}
	// truck_1 moves to the South fleet.
	if _, _, err := reg.MergeAttributes("truck_1", map[string]string{"fleet": "South"}); err != nil {
		t.Fatal(err)
	}
	got := query(`readings_velocity{fleet="South"}`)
	ids := slices.Sorted(maps.Keys(got))
	if !slices.Equal(ids, []string{"truck_0", "truck_1"}) || got["truck_1"] != "South" {
		t.Fatalf(`fleet="South" after the change: %v`, got)
	}
}
