package problem

import (
	"encoding/json"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestWrite(t *testing.T) {
	tests := []struct {
		name        string
		p           Problem
		contentType string
		retryAfter  string
		title       string
	}{
		{"plain", Problem{Type: TypeNotFound, Status: 404}, "application/problem+json", "", "Not Found"},
		{"retry", Problem{Type: TypeOverloaded, Status: 503, RetryAfter: 2}, "application/problem+json", "2", "Service Unavailable"},
		{"influx", Problem{Type: TypeInvalidItems, Status: 400, Code: "invalid", Title: "Some items were rejected"}, "application/json", "", "Some items were rejected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			Write(rec, &tt.p)
			if rec.Code != tt.p.Status {
				t.Errorf("status = %d, want %d", rec.Code, tt.p.Status)
			}
			if got := rec.Header().Get("Content-Type"); got != tt.contentType {
				t.Errorf("Content-Type = %q, want %q", got, tt.contentType)
			}
			if got := rec.Header().Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
			}
			var got map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			want := map[string]any{"type": tt.p.Type, "title": tt.title, "status": float64(tt.p.Status)}
			if tt.p.Code != "" {
				want["code"] = tt.p.Code
			}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("body (-got +want):\n%s", diff)
			}
		})
	}
}
