package api

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/twin"
)

const maxNotesListed = 1000

// handleNotesPost is POST /api/v1/machines/{id}/notes: a note pinned to a
// machine, stored durably, then pushed to the machine's stream subscribers.
func (a *API) handleNotesPost(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := a.getMachine(r, id); err != nil {
		a.twinError(w, err)
		return
	}
	body, ok := readSmallBody(w, r)
	if !ok {
		return
	}
	var in struct {
		Text   string `json:"text"`
		Author string `json:"author"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		problem.Write(w, &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest,
			Detail: `the body must be a JSON object {"text":"…","author":"…"}: ` + err.Error()})
		return
	}
	// The author is the verified identity; a typed name only when auth
	// is open.
	if ident := identity(r); ident.Kind != auth.KindAnonymous || in.Author == "" {
		in.Author = ident.Name
	}
	n, err := a.notes.Add(id, in.Text, in.Author)
	if err != nil {
		a.twinError(w, err)
		return
	}
	note(r, id, n.ID, map[string]any{"chars": len(in.Text)})
	a.publish(n)
	writeJSON(w, http.StatusCreated, n)
}

// handleNotesGet is GET /api/v1/machines/{id}/notes[?limit=N]: the latest
// notes, oldest first.
func (a *API) handleNotesGet(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := a.getMachine(r, id); err != nil {
		a.twinError(w, err)
		return
	}
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxNotesListed {
			badParam(w, "limit", "must be an integer from 1 to "+strconv.Itoa(maxNotesListed))
			return
		}
		limit = n
	}
	notes := a.notes.List(id, limit)
	if notes == nil {
		notes = []twin.Note{}
	}
	writeJSON(w, http.StatusOK, struct {
		Machine string      `json:"machine"`
		Notes   []twin.Note `json:"notes"`
	}{id, notes})
}
