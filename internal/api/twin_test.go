package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/hub"
	"github.com/twinline/twinline/internal/twin"
)

// twinEnv is the matrix env with m1 declaring a desired schema, and a
// device certificate bound to m2 (secret "device-m2").
func twinEnv(t *testing.T) *matrixEnv {
	t.Helper()
	env := newMatrixEnvFor(t, auth.AllScopes, 0, false)
	maxT := 250.0
	if _, _, err := env.twins.Put("m1", twin.Info{Name: "Press 1", Site: "lyon", DesiredSchema: &twin.Schema{Type: "object",
		Properties: map[string]*twin.Schema{"tempSetpoint": {Type: "number", Maximum: &maxT}}}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := env.twins.Put("m2", twin.Info{Name: "Press 2", Site: "lyon"}); err != nil {
		t.Fatal(err)
	}
	verify := env.api.auth.Verify
	env.api.auth.Verify = func(secret string) (auth.Identity, error) {
		if secret == "device-m2" {
			return auth.Identity{Name: "m2-cert", Kind: auth.KindCertificate, Scopes: auth.ScopeIngest, Machine: "m2"}, nil
		}
		return verify(secret)
	}
	return env
}

func TestTwinRoutes(t *testing.T) {
	env := twinEnv(t)
	as := func(secret string, h ...string) []string {
		return append([]string{"Authorization", "Bearer " + secret}, h...)
	}
	steps := []struct {
		name       string
		method     string
		req        matrixRequest
		header     []string
		wantStatus int
		wantETag   string
		wantBody   string // a part of the body
	}{
		{"get never written", "GET", matrixRequest{path: "/api/v1/machines/m1/twin"}, as(secretRight), 200, `"0.0"`,
			`{"machine":"m1","desired":{},"reported":{},"delta":{},"version":0,"reportedVersion":0,"metadata":{"desired":{},"reported":{}}}`},
		{"unknown machine", "GET", matrixRequest{path: "/api/v1/machines/nope/twin"}, as(secretRight), 404, "", "not-found"},
		{"patch desired", "PATCH", matrixRequest{path: "/api/v1/machines/m1/twin/desired", contentType: "application/merge-patch+json",
			body: `{"tempSetpoint":180,"mode":"auto"}`}, as(secretRight, "If-Match", `"0"`), 200, `"1.0"`, `"delta":{"mode":"auto","tempSetpoint":180}`},
		{"stale If-Match", "PATCH", matrixRequest{path: "/api/v1/machines/m1/twin/desired", contentType: "application/json",
			body: `{"mode":"manual"}`}, as(secretRight, "If-Match", `W/"0.0"`), 412, `"1.0"`, "precondition-failed"},
		{"bad If-Match", "PATCH", matrixRequest{path: "/api/v1/machines/m1/twin/desired", contentType: "application/json",
			body: `{"mode":"manual"}`}, as(secretRight, "If-Match", `7`), 400, "", "If-Match"},
		{"schema refuses", "PATCH", matrixRequest{path: "/api/v1/machines/m1/twin/desired", contentType: "application/json",
			body: `{"tempSetpoint":999}`}, as(secretRight), 422, "", `"invalidParams":[{"name":"tempSetpoint","reason":"must be at most 250, got 999"}]`},
		{"not an object", "PATCH", matrixRequest{path: "/api/v1/machines/m1/twin/desired", contentType: "application/json",
			body: `[1]`}, as(secretRight), 400, "", "malformed-body"},
		{"current If-Match with reported part", "PATCH", matrixRequest{path: "/api/v1/machines/m1/twin/desired", contentType: "application/json",
			body: `{"mode":"manual"}`}, as(secretRight, "If-Match", `"1.0"`), 200, `"2.0"`, `"mode":"manual"`},
		{"reported", "PATCH", matrixRequest{path: "/api/v1/machines/m1/twin/reported", contentType: "application/json",
			body: `{"tempSetpoint":180,"fw":"1.2"}`}, as(secretRight), 200, `"2.1"`, `"delta":{"mode":"manual"}`},
		{"long-poll past version", "GET", matrixRequest{path: "/api/v1/machines/m1/twin/desired?version=1"}, as(secretRight), 200, `"2.1"`,
			`{"machine":"m1","version":2,"desired":{"mode":"manual","tempSetpoint":180}}`},
		{"long-poll bad wait", "GET", matrixRequest{path: "/api/v1/machines/m1/twin/desired?wait=2m"}, as(secretRight), 400, "", "wait"},
		{"device: other machine", "PATCH", matrixRequest{path: "/api/v1/machines/m1/twin/reported", contentType: "application/json",
			body: `{"x":1}`}, as("device-m2"), 403, "", "m2 only"},
		{"device: own machine", "PATCH", matrixRequest{path: "/api/v1/machines/m2/twin/reported", contentType: "application/json",
			body: `{"x":1}`}, as("device-m2"), 200, `"0.1"`, `"reported":{"x":1}`},
		{"device: own long-poll", "GET", matrixRequest{path: "/api/v1/machines/m2/twin/desired"}, as("device-m2"), 200, `"0.1"`, `"version":0`},
		{"device: no desired patch", "PATCH", matrixRequest{path: "/api/v1/machines/m2/twin/desired", contentType: "application/json",
			body: `{"x":1}`}, as("device-m2"), 403, "", "operate"},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			w := env.do(s.method, s.req, s.header...)
			if w.Code != s.wantStatus || !strings.Contains(w.Body.String(), s.wantBody) {
				t.Errorf("got %d %s; want %d containing %s", w.Code, w.Body, s.wantStatus, s.wantBody)
			}
			if got := w.Header().Get("ETag"); got != s.wantETag {
				t.Errorf("ETag = %q, want %q", got, s.wantETag)
			}
		})
	}

	// Audited: the two accepted desired patches, with the documents
	// before and after.
	var details []map[string]any
	for _, e := range env.audit.entries {
		if e.Action == "twin.desired" && e.Outcome == "ok" {
			b, _ := json.Marshal(e.Detail)
			var d map[string]any
			_ = json.Unmarshal(b, &d)
			details = append(details, d)
			if e.Machine != "m1" {
				t.Errorf("audit entry machine = %q, want m1", e.Machine)
			}
		}
	}
	want := []map[string]any{
		{"before": map[string]any{}, "after": map[string]any{"tempSetpoint": 180.0, "mode": "auto"}, "version": 1.0},
		{"before": map[string]any{"tempSetpoint": 180.0, "mode": "auto"}, "after": map[string]any{"tempSetpoint": 180.0, "mode": "manual"}, "version": 2.0},
	}
	if diff := cmp.Diff(details, want); diff != "" {
		t.Errorf("audit details (-got +want):\n%s", diff)
	}
}

func TestTwinLongPoll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		env := twinEnv(t)
		auth := []string{"Authorization", "Bearer " + secretRight}
		// Times out: the current document, 200.
		w := env.do("GET", matrixRequest{path: "/api/v1/machines/m1/twin/desired?version=0&wait=30s"}, auth...)
		if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"version":0`) {
			t.Fatalf("timed-out long-poll: %d %s", w.Code, w.Body)
		}
		// Answered by a patch.
		done := make(chan string)
		go func() {
			w := env.do("GET", matrixRequest{path: "/api/v1/machines/m1/twin/desired?version=0&wait=60s"}, auth...)
			done <- w.Body.String()
		}()
		synctest.Wait()
		w = env.do("PATCH", matrixRequest{path: "/api/v1/machines/m1/twin/desired", contentType: "application/json", body: `{"tempSetpoint":100}`}, auth...)
		if w.Code != http.StatusOK {
			t.Fatalf("patch: %d %s", w.Code, w.Body)
		}
		if got, want := strings.TrimSpace(<-done), `{"machine":"m1","version":1,"desired":{"tempSetpoint":100}}`; got != want {
			t.Errorf("long-poll answer = %s, want %s", got, want)
		}
	})
}

// TestTwinStreamData: the twin the app publishes on the stream
// (control.Twin) is the hub's TwinData, member for member.
func TestTwinStreamData(t *testing.T) {
	tw := control.Twin{Machine: "m", Desired: map[string]any{"a": 1.0}, Reported: map[string]any{}, Delta: map[string]any{"a": 1.0},
		Version: 1, Metadata: control.Metadata{Desired: control.FieldTimes{"a": {UpdatedAt: 5}}, Reported: control.FieldTimes{}}}
	for name, v := range map[string]any{"change": tw, "deleted": hub.TwinData{Machine: "m", Deleted: true}} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var got hub.TwinData
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("%s: %s does not decode strictly into hub.TwinData: %v", name, b, err)
		}
		again, err := json.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(string(again), string(b)); diff != "" {
			t.Errorf("%s: hub.TwinData re-encodes differently (-got +want):\n%s", name, diff)
		}
	}
}
