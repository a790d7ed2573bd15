package control

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/twin"
)

var t0 = time.UnixMilli(1_765_000_000_000).UTC()

func newTestTwins(t *testing.T, schema *twin.Schema) (*Twins, *time.Time, *[]Change) {
	t.Helper()
	s, err := OpenTwinFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := t0
	tw := NewTwins(s, func(string) *twin.Schema { return schema }, func() time.Time { return now }, slog.New(slog.DiscardHandler))
	var changes []Change
	tw.Subscribe(func(c Change) { changes = append(changes, c) })
	return tw, &now, &changes
}

func TestMerge(t *testing.T) {
	tests := []struct {
		name      string
		doc       string
		patch     string
		want      string
		changed   bool
		wantTimes string // metadata after the patch, at time 2 (doc's fields at 1)
	}{
		{"add", `{}`, `{"a":1}`, `{"a":1}`, true, `{"a":{"updatedAt":2}}`},
		{"same value", `{"a":1}`, `{"a":1}`, `{"a":1}`, false, `{"a":{"updatedAt":1}}`},
		{"replace", `{"a":1,"b":2}`, `{"a":3}`, `{"a":3,"b":2}`, true, `{"a":{"updatedAt":2},"b":{"updatedAt":1}}`},
		{"null removes", `{"a":1,"b":2}`, `{"a":null}`, `{"b":2}`, true, `{"b":{"updatedAt":1}}`},
		{"null of absent", `{"b":2}`, `{"a":null}`, `{"b":2}`, false, `{"b":{"updatedAt":1}}`},
		{"nested merge", `{"o":{"x":1,"y":2}}`, `{"o":{"y":3,"z":null}}`, `{"o":{"x":1,"y":3}}`, true,
			`{"o":{"x":{"updatedAt":1},"y":{"updatedAt":2}}}`},
		{"nested unchanged", `{"o":{"x":1}}`, `{"o":{"x":1}}`, `{"o":{"x":1}}`, false, `{"o":{"x":{"updatedAt":1}}}`},
		{"object replaces scalar, nulls dropped", `{"o":5}`, `{"o":{"x":1,"n":null}}`, `{"o":{"x":1}}`, true,
			`{"o":{"x":{"updatedAt":2}}}`},
		{"array replaced whole", `{"a":[1,2]}`, `{"a":[1]}`, `{"a":[1]}`, true, `{"a":{"updatedAt":2}}`},
		{"array unchanged", `{"a":[1,{"b":2}]}`, `{"a":[1,{"b":2}]}`, `{"a":[1,{"b":2}]}`, false, `{"a":{"updatedAt":1}}`},
		{"scalar replaces object", `{"o":{"x":1}}`, `{"o":"flat"}`, `{"o":"flat"}`, true, `{"o":{"updatedAt":2}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var doc, patch, want map[string]any
			mustJSON(t, tt.doc, &doc)
			mustJSON(t, tt.patch, &patch)
			mustJSON(t, tt.want, &want)
			meta := timesOf(doc, 1)
			got, gotTimes, changed := merge(doc, meta, patch, 2)
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("document (-got +want):\n%s", diff)
			}
			if changed != tt.changed {
				t.Errorf("changed = %v, want %v", changed, tt.changed)
			}
			b, err := json.Marshal(gotTimes)
			if err != nil {
				t.Fatal(err)
			}
			var gt, wt any
			mustJSON(t, string(b), &gt)
			mustJSON(t, tt.wantTimes, &wt)
			if diff := cmp.Diff(gt, wt); diff != "" {
				t.Errorf("metadata (-got +want):\n%s", diff)
			}
			// merge never changes its inputs.
			var again map[string]any
			mustJSON(t, tt.doc, &again)
			if diff := cmp.Diff(doc, again); diff != "" {
				t.Errorf("merge changed its input (-got +want):\n%s", diff)
			}
		})
	}
}

// timesOf is metadata with every field of doc at time at.
func timesOf(doc map[string]any, at int64) FieldTimes {
	out := FieldTimes{}
	for k, v := range doc {
		if m, ok := v.(map[string]any); ok {
			out[k] = FieldTime{Fields: timesOf(m, at)}
		} else {
			out[k] = FieldTime{UpdatedAt: at}
		}
	}
	return out
}

func TestDelta(t *testing.T) {
	tests := []struct{ name, desired, reported, want string }{
		{"matches", `{"a":1,"b":"x"}`, `{"a":1,"b":"x","fw":"1.2"}`, `null`},
		{"differs and missing", `{"a":1,"b":"x"}`, `{"a":2}`, `{"a":1,"b":"x"}`},
		{"nested by field", `{"o":{"x":1,"y":2}}`, `{"o":{"x":1,"y":3}}`, `{"o":{"y":2}}`},
		{"nested matches", `{"o":{"x":1}}`, `{"o":{"x":1,"z":0}}`, `null`},
		{"object vs scalar", `{"o":{"x":1}}`, `{"o":1}`, `{"o":{"x":1}}`},
		{"arrays whole", `{"a":[1,2,3]}`, `{"a":[1,2]}`, `{"a":[1,2,3]}`},
		{"equal arrays", `{"a":[1,[2]]}`, `{"a":[1,[2]]}`, `null`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d, r, want map[string]any
			mustJSON(t, tt.desired, &d)
			mustJSON(t, tt.reported, &r)
			mustJSON(t, tt.want, &want)
			if diff := cmp.Diff(delta(d, r), want); diff != "" {
				t.Errorf("delta (-got +want):\n%s", diff)
			}
		})
	}
}

func TestFieldTimeJSON(t *testing.T) {
	in := Metadata{
		Desired: FieldTimes{"a": {UpdatedAt: 5}, "updatedAt": {Fields: FieldTimes{"updatedAt": {UpdatedAt: 6}}},
			"empty": {Fields: FieldTimes{}}},
		Reported: FieldTimes{},
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"desired":{"a":{"updatedAt":5},"empty":{},"updatedAt":{"updatedAt":{"updatedAt":6}}},"reported":{}}`
	if string(b) != want {
		t.Errorf("encoded = %s, want %s", b, want)
	}
	var got Metadata
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, in); diff != "" {
		t.Errorf("decoded (-got +want):\n%s", diff)
	}
}

func TestPatchDesired(t *testing.T) {
	schema := &twin.Schema{Type: "object", AdditionalProperties: ptr(false), Properties: map[string]*twin.Schema{
		"tempSetpoint": {Type: "number", Minimum: ptr(20.0), Maximum: ptr(250.0)},
		"mode":         {Type: "string", Enum: []any{"auto", "manual"}},
		"pid":          {Type: "object"},
		"big":          {Type: "string"},
	}}
	ctx := context.Background()
	tw, now, changes := newTestTwins(t, schema)

	got, err := tw.PatchDesired(ctx, "press-07", []byte(`{"tempSetpoint":180,"mode":"auto"}`), nil, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 1 || got.ReportedVersion != 0 {
		t.Errorf("versions after the first patch = %d.%d, want 1.0", got.Version, got.ReportedVersion)
	}
	*now = now.Add(time.Second)
	if _, err := tw.PatchReported(ctx, "press-07", []byte(`{"tempSetpoint":175,"mode":"auto","fw":"1.2"}`), "device"); err != nil {
		t.Fatal(err)
	}
	got, err = tw.Get(ctx, "press-07")
	if err != nil {
		t.Fatal(err)
	}
	var want Twin
	mustJSON(t, `{"machine":"press-07","desired":{"tempSetpoint":180,"mode":"auto"},
		"reported":{"tempSetpoint":175,"mode":"auto","fw":"1.2"},"delta":{"tempSetpoint":180},"version":1,"reportedVersion":1,
		"metadata":{"desired":{"tempSetpoint":{"updatedAt":1765000000000},"mode":{"updatedAt":1765000000000}},
		"reported":{"tempSetpoint":{"updatedAt":1765000001000},"mode":{"updatedAt":1765000001000},"fw":{"updatedAt":1765000001000}}}}`, &want)
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("twin (-got +want):\n%s", diff)
	}

	v := func(n uint64) *uint64 { return &n }
	steps := []struct {
		name        string
		patch       string
		ifMatch     *uint64
		wantErr     error
		wantFields  []twin.FieldError
		wantVersion uint64
	}{
		{"no change keeps the version", `{"mode":"auto"}`, nil, nil, nil, 1},
		{"stale If-Match", `{"mode":"manual"}`, v(0), ErrVersionMismatch, nil, 1},
		{"current If-Match", `{"mode":"manual"}`, v(1), nil, nil, 2},
		{"schema: maximum", `{"tempSetpoint":300}`, nil, ErrInvalid,
			[]twin.FieldError{{Field: "tempSetpoint", Reason: "must be at most 250, got 300"}}, 2},
		{"schema: unknown field and enum", `{"mode":"turbo","color":"red"}`, nil, ErrInvalid,
			[]twin.FieldError{{Field: "color", Reason: "is not allowed by the schema"}, {Field: "mode", Reason: `must be one of "auto", "manual"`}}, 2},
		{"not JSON", `{"mode":`, nil, ErrMalformed, nil, 2},
		{"not an object", `[1]`, nil, ErrMalformed, nil, 2},
		{"too deep", `{"pid":` + nest(MaxDocDepth) + `}`, nil, ErrMalformed, nil, 2},
		{"too large", `{"big":"` + string(make([]byte, 0)) + repeat("x", MaxDocBytes) + `"}`, nil, ErrMalformed, nil, 2},
		{"NUL", `{"mode":"auto\u0000"}`, nil, ErrInvalid, nil, 2},
		{"remove", `{"tempSetpoint":null}`, nil, nil, nil, 3},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			before := len(*changes)
			got, err := tw.PatchDesired(ctx, "press-07", []byte(s.patch), s.ifMatch, "alice")
			if !errors.Is(err, s.wantErr) {
				t.Fatalf("err = %v, want %v", err, s.wantErr)
			}
			var ve *ValidationError
			if s.wantFields != nil {
				if !errors.As(err, &ve) {
					t.Fatalf("err = %v, want a ValidationError", err)
				}
				if diff := cmp.Diff(ve.Fields, s.wantFields); diff != "" {
					t.Errorf("fields (-got +want):\n%s", diff)
				}
			}
			cur, _ := tw.Get(ctx, "press-07")
			if cur.Version != s.wantVersion {
				t.Errorf("version = %d, want %d", cur.Version, s.wantVersion)
			}
			if err == nil && got.Version != cur.Version {
				t.Errorf("returned version %d, stored %d", got.Version, cur.Version)
			}
			wantChanges := 0
			if cur.Version > 0 && s.wantErr == nil && s.name != "no change keeps the version" {
				wantChanges = 1
			}
			if n := len(*changes) - before; n != wantChanges {
				t.Errorf("%d changes told, want %d", n, wantChanges)
			} else if n == 1 {
				c := (*changes)[len(*changes)-1]
				if c.Kind != ChangeDesired || c.By != "alice" || c.Twin.Version != cur.Version {
					t.Errorf("change = %+v, want desired by alice at version %d", c, cur.Version)
				}
			}
		})
	}
}

func TestPatchReportedNoSchema(t *testing.T) {
	ctx := context.Background()
	tw, _, changes := newTestTwins(t, &twin.Schema{Type: "object", AdditionalProperties: ptr(false)})
	got, err := tw.PatchReported(ctx, "m", []byte(`{"anything":{"goes":[1,2]}}`), "dev")
	if err != nil {
		t.Fatal(err)
	}
	if got.ReportedVersion != 1 || got.Version != 0 {
		t.Errorf("versions = %d.%d, want 0.1", got.Version, got.ReportedVersion)
	}
	if _, err := tw.PatchReported(ctx, "m", []byte(`{"anything":{"goes":[1,2]}}`), "dev"); err != nil {
		t.Fatal(err)
	}
	if len(*changes) != 1 || (*changes)[0].Kind != ChangeReported {
		t.Errorf("changes = %+v, want one reported change (the repeat changes nothing)", *changes)
	}
}

func TestDelete(t *testing.T) {
	ctx := context.Background()
	tw, _, changes := newTestTwins(t, nil)
	if _, err := tw.PatchDesired(ctx, "m", []byte(`{"a":1}`), nil, ""); err != nil {
		t.Fatal(err)
	}
	if err := tw.Delete(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	got, err := tw.Get(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, Twin{Machine: "m", Desired: map[string]any{}, Reported: map[string]any{}, Delta: map[string]any{},
		Metadata: Metadata{Desired: FieldTimes{}, Reported: FieldTimes{}}}); diff != "" {
		t.Errorf("twin after Delete (-got +want):\n%s", diff)
	}
	last := (*changes)[len(*changes)-1]
	if last.Kind != ChangeDeleted || last.Machine != "m" {
		t.Errorf("last change = %+v, want deleted m", last)
	}
}

func TestWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		tw, _, _ := newTestTwins(t, nil)
		if _, err := tw.PatchDesired(ctx, "m", []byte(`{"a":1}`), nil, ""); err != nil {
			t.Fatal(err)
		}
		// Already past: at once.
		got, err := tw.Wait(ctx, "m", 0)
		if err != nil || got.Version != 1 {
			t.Fatalf("Wait(after 0) = version %d, %v; want 1", got.Version, err)
		}
		// Times out: the current twin, no error, after the deadline.
		start := time.Now()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		got, err = tw.Wait(wctx, "m", 1)
		cancel()
		if err != nil || got.Version != 1 || time.Since(start) != 30*time.Second {
			t.Errorf("Wait on timeout = version %d, %v after %v; want version 1, nil after 30s", got.Version, err, time.Since(start))
		}
		// Woken by a change; a reported change does not answer.
		done := make(chan Twin)
		go func() {
			got, _ := tw.Wait(ctx, "m", 1)
			done <- got
		}()
		synctest.Wait()
		if _, err := tw.PatchReported(ctx, "m", []byte(`{"a":1}`), ""); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		select {
		case got := <-done:
			t.Fatalf("Wait answered on a reported change: %+v", got)
		default:
		}
		if _, err := tw.PatchDesired(ctx, "m", []byte(`{"a":2}`), nil, ""); err != nil {
			t.Fatal(err)
		}
		if got := <-done; got.Version != 2 {
			t.Errorf("woken Wait = version %d, want 2", got.Version)
		}
	})
}

// TestWaitEndsWithRun: once Run returns (shutdown), waiting long-polls
// are answered at once with the current twin.
func TestWaitEndsWithRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tw, _, _ := newTestTwins(t, nil)
		ctx, cancel := context.WithCancel(context.Background())
		ran := make(chan error)
		go func() { ran <- tw.Run(ctx) }()
		waited := make(chan time.Duration)
		start := time.Now()
		go func() {
			got, err := tw.Wait(context.Background(), "m", 0)
			if err != nil || got.Version != 0 {
				t.Errorf("Wait = version %d, %v; want 0, nil", got.Version, err)
			}
			waited <- time.Since(start)
		}()
		synctest.Wait()
		time.Sleep(5 * time.Second) // fake time: the Wait is still waiting
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
		if d := <-waited; d != 5*time.Second {
			t.Errorf("Wait answered after %v, want 5s (when Run returned)", d)
		}
		// After Run, a Wait answers at once.
		if _, err := tw.Wait(context.Background(), "m", 0); err != nil {
			t.Error(err)
		}
	})
}

func TestTwinFilesSurviveAsWritten(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenTwinFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	tw := NewTwins(s, nil, func() time.Time { return t0 }, slog.New(slog.DiscardHandler))
	if _, err := tw.PatchDesired(context.Background(), "a/b ..", []byte(`{"x":1}`), nil, ""); err != nil {
		t.Fatal(err)
	}
	files, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, f.Name())
	}
	if diff := cmp.Diff(names, []string{"m-a%2Fb+...json"}); diff != "" {
		t.Errorf("files (-got +want):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); err == nil {
		t.Errorf("a machine id with / made a directory")
	}
}

func mustJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decoding %s: %v", s, err)
	}
}

func nest(n int) string {
	s := "1"
	for range n {
		s = `{"a":` + s + `}`
	}
	return s
}

func repeat(s string, n int) string {
	b := make([]byte, 0, n*len(s))
	for range n {
		b = append(b, s...)
	}
	return string(b)
}

func ptr[T any](v T) *T { return &v }
