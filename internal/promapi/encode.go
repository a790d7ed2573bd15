package promapi

import (
	"net/http"

	jsoniter "github.com/json-iterator/go"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/util/jsonutil"
)

// The JSON answers follow Prometheus' web/api/v1 (json_codec.go), whose
// number formatting (util/jsonutil) they use; that package itself is not
// imported: it pulls in Prometheus' rules, scrape and web trees.

var jsonAPI = jsoniter.ConfigCompatibleWithStandardLibrary

// errorType is a Prometheus API error type and its HTTP status.
type errorType struct {
	name   string
	status int
}

// Prometheus' error types (web/api/v1/api.go) and their status codes.
var (
	errBadData     = errorType{"bad_data", http.StatusBadRequest}
	errExec        = errorType{"execution", http.StatusUnprocessableEntity}
	errCostLimit   = errorType{"cost_limit", http.StatusUnprocessableEntity}
	errCanceled    = errorType{"canceled", 499}
	errTimeout     = errorType{"timeout", http.StatusServiceUnavailable}
	errInternal    = errorType{"internal", http.StatusInternalServerError}
	errNotFound    = errorType{"not_found", http.StatusNotFound}
	errUnavailable = errorType{"unavailable", http.StatusNotImplemented}
)

// writeError writes a Prometheus error answer.
func writeError(w http.ResponseWriter, typ errorType, msg string) {
	st := jsonAPI.BorrowStream(nil)
	defer jsonAPI.ReturnStream(st)
	st.WriteObjectStart()
	st.WriteObjectField("status")
	st.WriteString("error")
	st.WriteMore()
	st.WriteObjectField("errorType")
	st.WriteString(typ.name)
	st.WriteMore()
	st.WriteObjectField("error")
	st.WriteString(msg)
	st.WriteObjectEnd()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(typ.status)
	w.Write(st.Buffer())
}

// writeSuccess writes {"status":"success","data":…} with the warnings and
// infos, data written by data.
//
// The answer streams to w (a large matrix is not held whole): data may
// call flush between items.
func writeSuccess(w http.ResponseWriter, data func(*jsoniter.Stream), warnings, infos []string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	st := jsonAPI.BorrowStream(w)
	defer jsonAPI.ReturnStream(st)
	st.WriteObjectStart()
	st.WriteObjectField("status")
	st.WriteString("success")
	st.WriteMore()
	st.WriteObjectField("data")
	data(st)
	for _, f := range []struct {
		name string
		v    []string
	}{{"warnings", warnings}, {"infos", infos}} {
		if len(f.v) > 0 {
			st.WriteMore()
			st.WriteObjectField(f.name)
			st.WriteVal(f.v)
		}
	}
	st.WriteObjectEnd()
	st.Flush()
}

// flushAt is the buffered size at which a streamed answer is written out.
const flushAt = 64 << 10

// flush writes the stream's buffer to its writer once it holds flushAt
// bytes; a write error stays in the stream (st.Error) and ends the
// writing there.
func flush(st *jsoniter.Stream) {
	if st.Buffered() >= flushAt {
		st.Flush()
	}
}

// value returns a writer of any JSON value.
func value(v any) func(*jsoniter.Stream) {
	return func(st *jsoniter.Stream) { st.WriteVal(v) }
}

// queryData writes {"resultType":…,"result":…} of a PromQL result.
func queryData(v parser.Value) func(*jsoniter.Stream) {
	return func(st *jsoniter.Stream) {
		st.WriteObjectStart()
		st.WriteObjectField("resultType")
		st.WriteString(string(v.Type()))
		st.WriteMore()
		st.WriteObjectField("result")
		switch v := v.(type) {
		case promql.Matrix:
			st.WriteArrayStart()
			for i, s := range v {
				if i > 0 {
					st.WriteMore()
				}
				writeSeries(st, s)
				flush(st)
			}
			st.WriteArrayEnd()
		case promql.Vector:
			st.WriteArrayStart()
			for i, s := range v {
				if i > 0 {
					st.WriteMore()
				}
				writeSample(st, s)
				flush(st)
			}
			st.WriteArrayEnd()
		case promql.Scalar:
			writePoint(st, v.T, v.V)
		case promql.String:
			st.WriteArrayStart()
			jsonutil.MarshalTimestamp(v.T, st)
			st.WriteMore()
			st.WriteString(v.V)
			st.WriteArrayEnd()
		default:
			st.WriteNil()
		}
		st.WriteObjectEnd()
	}
}

func writeLabels(st *jsoniter.Stream, ls labels.Labels) {
	st.WriteObjectStart()
	first := true
	ls.Range(func(l labels.Label) {
		if !first {
			st.WriteMore()
		}
		first = false
		st.WriteObjectField(l.Name)
		st.WriteString(l.Value)
	})
	st.WriteObjectEnd()
}

func writePoint(st *jsoniter.Stream, t int64, v float64) {
	st.WriteArrayStart()
	jsonutil.MarshalTimestamp(t, st)
	st.WriteMore()
	jsonutil.MarshalFloat(v, st)
	st.WriteArrayEnd()
}

// writeSeries writes a series of a matrix; twinline stores floats only.
func writeSeries(st *jsoniter.Stream, s promql.Series) {
	st.WriteObjectStart()
	st.WriteObjectField("metric")
	writeLabels(st, s.Metric)
	st.WriteMore()
	st.WriteObjectField("values")
	st.WriteArrayStart()
	for i, p := range s.Floats {
		if i > 0 {
			st.WriteMore()
		}
		writePoint(st, p.T, p.F)
	}
	st.WriteArrayEnd()
	st.WriteObjectEnd()
}

func writeSample(st *jsoniter.Stream, s promql.Sample) {
	st.WriteObjectStart()
	st.WriteObjectField("metric")
	writeLabels(st, s.Metric)
	st.WriteMore()
	st.WriteObjectField("value")
	writePoint(st, s.T, s.F)
	st.WriteObjectEnd()
}

// writeLabelSets writes a list of label sets (the series API).
func writeLabelSets(sets []labels.Labels) func(*jsoniter.Stream) {
	return func(st *jsoniter.Stream) {
		st.WriteArrayStart()
		for i, ls := range sets {
			if i > 0 {
				st.WriteMore()
			}
			writeLabels(st, ls)
			flush(st)
		}
		st.WriteArrayEnd()
	}
}
