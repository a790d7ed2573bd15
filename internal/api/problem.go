package api

import (
	"encoding/json"
	"net/http"

	"github.com/twinline/twinline/internal/problem"
)

func badParam(w http.ResponseWriter, name, reason string) {
	problem.Write(w, &problem.Problem{
		Type: problem.TypeInvalidParams, Status: http.StatusBadRequest,
		Detail:        "invalid parameter " + name + ": " + reason,
		InvalidParams: []problem.InvalidParam{{Name: name, Reason: reason}},
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
