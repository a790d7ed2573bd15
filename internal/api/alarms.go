package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/twinline/twinline/internal/alerting"
	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/twin"
)

// handleAlarms is GET /api/v1/alarms?state=active|all&machine=ID, newest
// first.
func (a *API) handleAlarms(w http.ResponseWriter, r *http.Request) {
	if !csvFormat(w, r) {
		return
	}
	q := r.URL.Query()
	all := false
	switch q.Get("state") {
	case "", "active":
	case "all":
		all = true
	default:
		badParam(w, "state", "must be active or all")
		return
	}
	list := a.alarms.List(all, q.Get("machine"))
	if id := identity(r); id.Restricted() {
		list = slices.DeleteFunc(list, func(al twin.Alarm) bool { return !a.machineVisible(id, al.Machine) })
	}
	if wantsCSV(r) {
		writeAlarmsCSV(w, list)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Count  int         `json:"count"`
		Alarms []alarmItem `json:"alarms"`
	}{len(list), a.withDelivery(r.Context(), list)})
}

// alarmItem is an alarm as GET /api/v1/alarms lists it: with its delivery
// state at Alertmanager and the webhook, when either is configured.
type alarmItem struct {
	twin.Alarm
	Delivery *alerting.Delivery `json:"delivery,omitempty"`
}

func (a *API) withDelivery(ctx context.Context, list []twin.Alarm) []alarmItem {
	items := make([]alarmItem, len(list))
	var states map[string]alerting.Delivery
	if a.delivery != nil && len(list) > 0 {
		ids := make([]string, len(list))
		for i := range list {
			ids[i] = list[i].ID
		}
		states = a.delivery(ctx, ids)
	}
	for i := range list {
		items[i].Alarm = list[i]
		if d, ok := states[list[i].ID]; ok {
			items[i].Delivery = &d
		}
	}
	return items
}

// handleAlarmAck is POST /api/v1/alarms/{id}/ack with {"note":"…"}. The
// acknowledgement records the verified identity; a "by" in the body is
// taken only when auth is open (anonymous), as the name an operator
// typed.
func (a *API) handleAlarmAck(w http.ResponseWriter, r *http.Request) {
	body, ok := readSmallBody(w, r)
	if !ok {
		return
	}
	var in struct {
		By   string `json:"by"`
		Note string `json:"note"`
	}
	if len(body) > 0 {
		if err := json.Unmarshal(body, &in); err != nil {
			problem.Write(w, &problem.Problem{Type: problem.TypeMalformedBody, Status: http.StatusBadRequest,
				Detail: `the body must be a JSON object {"note":"…"}: ` + err.Error()})
			return
		}
	}
	alarmID := r.PathValue("id")
	id := identity(r)
	if cur, ok := a.alarms.Get(alarmID); ok {
		if !a.machineVisible(id, cur.Machine) {
			a.twinError(w, fmt.Errorf("%w: alarm %q", twin.ErrNotFound, alarmID))
			return
		}
		note(r, cur.Machine, alarmID, nil)
	}
	by := id.Name
	if id.Kind == auth.KindAnonymous && in.By != "" {
		by = in.By
	}
	al, err := a.alarms.Ack(alarmID, by, in.Note, a.now())
	if errors.Is(err, twin.ErrConflict) {
		problem.Write(w, &problem.Problem{Type: problem.TypeConflict, Status: http.StatusConflict, Detail: err.Error()})
		return
	}
	if err != nil {
		a.twinError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, al) // the change went out on the stream already
}

// withAlarmStatus sets the machine's alarm flag: an active alarm other
// than the offline one (its status already says it is offline).
func (a *API) withAlarmStatus(m *twin.Machine) {
	m.Alarm = a.alarms != nil && a.alarms.Alarmed(m.ID)
}
