package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/twin"
)

// commandSpecs reads a machine's commands from the registry, as app does.
func commandSpecs(r *twin.Registry) func(string) map[string]twin.CommandSpec {
	return func(machine string) map[string]twin.CommandSpec {
		in, err := r.Get(machine)
		if err != nil {
			return nil
		}
		return in.Commands
	}
}

func decodeCommand(t *testing.T, body []byte) control.Command {
	t.Helper()
	var c control.Command
	if err := json.Unmarshal(body, &c); err != nil {
		t.Fatalf("decoding %s: %v", body, err)
	}
	return c
}

// TestCommandRoutes: an operator creates (idempotently), a device fetches
// and answers, a reader lists without marking; bad input is a problem
// naming the field.
func TestCommandRoutes(t *testing.T) {
	// "right" is an operator and a device (ingest) of lyon; "wrong" a
	// plain reader.
	env := newMatrixEnvFor(t, auth.ScopeOperate|auth.ScopeIngest, auth.ScopeRead, false)
	operator := []string{"Authorization", "Bearer " + secretRight}
	reader := []string{"Authorization", "Bearer " + secretWrong}
	const base = "/api/v1/machines/m1/commands"

	create := func(body string, header ...string) (int, http.Header, []byte) {
		w := env.do("POST", matrixRequest{path: base, contentType: "application/json", body: body}, append(operator, header...)...)
		return w.Code, w.Header(), w.Body.Bytes()
	}
	code, h, body := create(`{"name":"stop","timeout":"30s"}`, "Idempotency-Key", "op-1")
	if code != http.StatusAccepted {
		t.Fatalf("create: %d %s", code, body)
	}
	cmd := decodeCommand(t, body)
	if h.Get("Location") != base+"/"+cmd.ID || cmd.State != control.StatePending || cmd.TimeoutMs != 30000 || cmd.CreatedBy != "right" {
		t.Errorf("create: Location %q, command %+v", h.Get("Location"), cmd)
	}
	if n := env.audit.count("command.create"); n != 1 {
		t.Errorf("command.create audited %d times, want 1", n)
	}
	code, _, body = create(`{"name":"stop","timeout":"30s"}`, "Idempotency-Key", "op-1")
	if again := decodeCommand(t, body); code != http.StatusOK || again.ID != cmd.ID {
		t.Errorf("repeat with the key: %d %s; want 200 with %s", code, body, cmd.ID)
	}

	problems := []struct {
		name, method, path, body string
		status                   int
		field                    string
	}{
		{"unknown command", "POST", base, `{"name":"explode"}`, 422, "name"},
		{"timeout out of bounds", "POST", base, `{"name":"stop","timeout":"48h"}`, 422, "timeout"},
		{"timeout malformed", "POST", base, `{"name":"stop","timeout":"soon"}`, 400, "timeout"},
		{"unknown field", "POST", base, `{"name":"stop","when":"now"}`, 400, ""},
		{"bad state filter", "GET", base + "?state=done", "", 400, "state"},
		{"wait too long", "GET", base + "?state=pending&wait=2m", "", 400, "wait"},
		{"unknown command id", "GET", base + "/c-nope", "", 404, ""},
		{"device sends pending", "POST", base + "/" + cmd.ID + "/response", `{"state":"pending"}`, 422, "state"},
	}
	for _, p := range problems {
		t.Run(p.name, func(t *testing.T) {
			ct := ""
			if p.body != "" {
				ct = "application/json"
			}
			w := env.do(p.method, matrixRequest{path: p.path, contentType: ct, body: p.body}, operator...)
			if w.Code != p.status || w.Header().Get("Content-Type") != "application/problem+json" {
				t.Fatalf("got %d %s %s; want %d problem", w.Code, w.Header().Get("Content-Type"), w.Body, p.status)
			}
			if p.field != "" && !strings.Contains(w.Body.String(), `"name":"`+p.field+`"`) {
				t.Errorf("the problem does not name %s: %s", p.field, w.Body)
			}
		})
	}

	// A reader's "fetch" only lists: nothing is marked delivered.
	w := env.do("GET", matrixRequest{path: base + "?state=pending&wait=5s"}, reader...)
	var list struct {
		Machine  string            `json:"machine"`
		Commands []control.Command `json:"commands"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || w.Code != 200 {
		t.Fatalf("reader's list: %d %s", w.Code, w.Body)
	}
	if len(list.Commands) != 2 || env.effects().commands != "pending pending " {
		t.Errorf("reader's list: %d commands, states now %q; want 2, both still pending", len(list.Commands), env.effects().commands)
	}

	// The device's fetch hands them out, delivered, oldest first.
	w = env.do("GET", matrixRequest{path: base + "?state=pending&wait=0s"}, operator...)
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || w.Code != 200 {
		t.Fatalf("device's fetch: %d %s", w.Code, w.Body)
	}
	var got []string
	for _, c := range list.Commands {
		got = append(got, string(c.State)+" via "+c.History[len(c.History)-1].Via)
	}
	if diff := cmp.Diff(got, []string{"delivered via http", "delivered via http"}); diff != "" || list.Commands[1].ID != cmd.ID {
		t.Errorf("device's fetch (-got +want):\n%s", diff)
	}

	respond := func(body string) (int, []byte) {
		w := env.do("POST", matrixRequest{path: base + "/" + cmd.ID + "/response", contentType: "application/json", body: body}, operator...)
		return w.Code, w.Body.Bytes()
	}
	if code, body := respond(`{"state":"accepted"}`); code != 200 || decodeCommand(t, body).State != control.StateAccepted {
		t.Errorf("accepted: %d %s", code, body)
	}
	code, body = respond(`{"state":"succeeded","result":{"stoppedAt":"12:00"},"reason":"ok"}`)
	done := decodeCommand(t, body)
	if code != 200 || done.State != control.StateSucceeded || string(done.Result) != `{"stoppedAt":"12:00"}` || done.History[len(done.History)-1].By != "right" {
		t.Errorf("succeeded: %d %s", code, body)
	}
	if code, body := respond(`{"state":"failed"}`); code != http.StatusConflict {
		t.Errorf("an answer after the end: %d %s; want 409", code, body)
	}
	w = env.do("GET", matrixRequest{path: base + "/" + cmd.ID}, reader...)
	if diff := cmp.Diff(decodeCommand(t, w.Body.Bytes()), done); w.Code != 200 || diff != "" {
		t.Errorf("GET the command: %d (-got +want):\n%s", w.Code, diff)
	}
}
