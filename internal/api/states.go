package api

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/store"
)

// maxStateChanges bounds the changes one states query reads.
const maxStateChanges = 100_000

// stateInterval is one interval of GET …/states.
type stateInterval struct {
	Value      string `json:"value"`
	From       int64  `json:"from"`
	To         int64  `json:"to"`
	DurationMs int64  `json:"durationMs"`
}

// statesResponse is the body of GET /api/v1/machines/{id}/states.
type statesResponse struct {
	Machine   string           `json:"machine"`
	Name      string           `json:"name"`
	From      int64            `json:"from"`
	To        int64            `json:"to"`
	Intervals []stateInterval  `json:"intervals"`
	Totals    map[string]int64 `json:"totals"`
}

// handleStates answers a machine's state series over a range as the
// intervals of its values, clipped to [from, to] (the last one ending at
// to, or now when to is later: the future is not known), and the time in
// each value. The time before the series' first change is in no interval.
func (a *API) handleStates(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := a.getMachine(r, id); err != nil {
		a.twinError(w, err)
		return
	}
	ss, ok := a.store.(store.StateStore)
	if !ok {
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable,
			Detail: "the store keeps no state series"})
		return
	}
	q := r.URL.Query()
	var problems []problem.InvalidParam
	bad := func(name, reason string) {
		problems = append(problems, problem.InvalidParam{Name: name, Reason: reason})
	}
	name := q.Get("name")
	if name == "" {
		bad("name", "required")
	}
	now := a.now()
	from, to := parseRange(q, now, 24*time.Hour, bad)
	if len(problems) > 0 {
		writeInvalidParams(w, problems)
		return
	}
	release, ok := a.querySlot(w)
	if !ok {
		return
	}
	defer release()
	f, t := from.UnixMilli(), to.UnixMilli()
	changes, err := ss.States(r.Context(), id, name, f, t)
	if err != nil {
		if errors.Is(err, r.Context().Err()) {
			return // the client left
		}
		a.logger.Error("querying states", "machine", id, "name", name, "err", err)
		problem.Write(w, &problem.Problem{Type: problem.TypeStorage, Status: http.StatusServiceUnavailable, RetryAfter: 1, Detail: "querying the store: " + err.Error()})
		return
	}
	if len(changes) > maxStateChanges {
		problem.Write(w, &problem.Problem{Type: problem.TypeInvalidParams, Status: http.StatusBadRequest,
			Detail:        fmt.Sprintf("more than %d state changes in range; narrow it", maxStateChanges),
			InvalidParams: []problem.InvalidParam{{Name: "from", Reason: "range holds too many state changes"}}})
		return
	}
	resp := statesResponse{Machine: id, Name: name, From: f, To: t, Intervals: []stateInterval{}, Totals: map[string]int64{}}
	ivs := store.StateIntervals(changes, f, min(t, now.UnixMilli()))
	for _, iv := range ivs {
		resp.Intervals = append(resp.Intervals, stateInterval{Value: iv.Value, From: iv.From, To: iv.To, DurationMs: iv.To - iv.From})
	}
	resp.Totals = store.StateTotals(ivs)
	writeJSON(w, http.StatusOK, resp)
}
