package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/twin"
)

// The fleet list's limits (GET /api/v1/machines).
const (
	// maxFleetLimit is the largest page a client may ask for; without
	// limit the answer is the whole fleet, as before pagination.
	maxFleetLimit = 10_000
	// maxAttrFilters bounds the attr.KEY=VALUE parameters of one query.
	maxAttrFilters = 16
	// maxFleetText bounds q and each attribute key and value (bytes).
	maxFleetText = 256
)

// cursorPrefix versions the opaque cursor: base64url("m1:" + last id).
const cursorPrefix = "m1:"

// attrFilter is one attr.KEY=VALUE parameter: the registry attribute KEY
// equals VALUE (a string attribute equal to it, or a number or boolean
// attribute whose JSON text VALUE is).
type attrFilter struct{ key, value string }

// fleetQuery is a parsed GET /api/v1/machines query.
type fleetQuery struct {
	sites, lines []string // any of them ("": every one)
	// online, offline, alarm: any of the statuses asked for.
	online, offline, alarm bool
	anyStatus              bool
	q                      string // lower-cased substring of id or name
	attrs                  []attrFilter
	limit                  int    // 0: all
	after                  string // the id the page starts after; "" from the first
}

// parseFleetQuery reads the fleet list's parameters; every problem is
// reported. Other parameters (format, for one) are left to others.
func parseFleetQuery(q url.Values) (fleetQuery, []problem.InvalidParam) {
	var f fleetQuery
	var problems []problem.InvalidParam
	bad := func(name, reason string) {
		problems = append(problems, problem.InvalidParam{Name: name, Reason: reason})
	}
	f.sites, f.lines = q["site"], q["line"]
	for _, v := range q["status"] {
		for s := range strings.SplitSeq(v, ",") {
			switch strings.TrimSpace(s) {
			case twin.StatusOnline:
				f.online = true
			case twin.StatusOffline:
				f.offline = true
			case "alarm":
				f.alarm = true
			default:
				bad("status", fmt.Sprintf("%q is not one of online, offline, alarm", s))
			}
		}
	}
	f.anyStatus = !f.online && !f.offline && !f.alarm
	if len(q["q"]) > 1 {
		bad("q", "given more than once")
	}
	if s := q.Get("q"); len(s) > maxFleetText {
		bad("q", fmt.Sprintf("longer than %d bytes", maxFleetText))
	} else {
		f.q = strings.ToLower(s)
	}
	for name, vs := range q {
		key, ok := strings.CutPrefix(name, "attr.")
		if !ok {
			continue
		}
		switch {
		case key == "":
			bad(name, "needs an attribute name: attr.KEY=VALUE")
			continue
		case len(key) > maxFleetText:
			bad(name, fmt.Sprintf("attribute name longer than %d bytes", maxFleetText))
			continue
		}
		for _, v := range vs {
			if len(v) > maxFleetText {
				bad(name, fmt.Sprintf("value longer than %d bytes", maxFleetText))
				continue
			}
			f.attrs = append(f.attrs, attrFilter{key, v})
		}
	}
	if len(f.attrs) > maxAttrFilters {
		bad("attr", fmt.Sprintf("more than %d attr.KEY=VALUE filters", maxAttrFilters))
	}
	// Map order is random: keep the filters (and so the problems and the
	// database queries) in one order.
	sort.Slice(f.attrs, func(i, j int) bool {
		if f.attrs[i].key != f.attrs[j].key {
			return f.attrs[i].key < f.attrs[j].key
		}
		return f.attrs[i].value < f.attrs[j].value
	})
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxFleetLimit {
			bad("limit", fmt.Sprintf("must be an integer from 1 to %d", maxFleetLimit))
		}
		f.limit = n
	}
	if s := q.Get("cursor"); s != "" {
		id, ok := decodeCursor(s)
		if !ok {
			bad("cursor", "is not a cursor of this API: pass the next value of the previous page as it is")
		}
		f.after = id
	}
	return f, problems
}

// encodeCursor makes the cursor of the page after the machine id.
func encodeCursor(id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + id))
}

func decodeCursor(s string) (string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return "", false
	}
	id, ok := strings.CutPrefix(string(b), cursorPrefix)
	return id, ok && id != ""
}

// attrMatches reports whether an attribute value v is want: a string
// equal to it, or a number or boolean whose JSON text want is ("2" and
// "2.0" are the number 2). The PostgreSQL registry answers the same
// through JSONB containment (attrCandidates).
func attrMatches(v any, want string) bool {
	switch x := v.(type) {
	case string:
		return x == want
	case float64:
		f, ok := jsonNumber(want)
		return ok && f == x
	case bool:
		return want == strconv.FormatBool(x)
	}
	return false
}

// jsonNumber parses s when it is a JSON number.
func jsonNumber(s string) (float64, bool) {
	if s == "" || !(s[0] == '-' || s[0] >= '0' && s[0] <= '9') || !json.Valid([]byte(s)) {
		return 0, false
	}
	f, err := strconv.ParseFloat(s, 64)
	return f, err == nil
}

// attrCandidates are the JSON values an attribute equal to want may hold:
// the string, and the number or boolean its text is.
func attrCandidates(want string) []any {
	out := []any{want}
	if _, ok := jsonNumber(want); ok {
		out = append(out, json.Number(want))
	}
	if want == "true" || want == "false" {
		out = append(out, want == "true")
	}
	return out
}

// AttributeIndexFunc returns the ids of the registered machines whose
// attributes contain attrs (JSON containment), in id order: an index of
// the registry store (postgres.Registry.WithAttributes).
type AttributeIndexFunc func(ctx context.Context, attrs map[string]any) ([]string, error)

// indexedAttrs asks the attribute index for the machines that pass every
// attribute filter: one query when each filter has one candidate value
// (a string), else one per candidate, united per filter and intersected.
func (a *API) indexedAttrs(ctx context.Context, attrs []attrFilter) (map[string]struct{}, error) {
	var set map[string]struct{}
	single := map[string]any{}
	for _, af := range attrs {
		cands := attrCandidates(af.value)
		if len(cands) == 1 {
			if prev, ok := single[af.key]; ok && prev != af.value {
				return map[string]struct{}{}, nil // one key, two strings: nothing
			}
			single[af.key] = af.value
			continue
		}
		union := map[string]struct{}{}
		for _, c := range cands {
			ids, err := a.attrIndex(ctx, map[string]any{af.key: c})
			if err != nil {
				return nil, err
			}
			for _, id := range ids {
				union[id] = struct{}{}
			}
		}
		set = intersect(set, union)
	}
	if len(single) > 0 || set == nil {
		ids, err := a.attrIndex(ctx, single)
		if err != nil {
			return nil, err
		}
		found := make(map[string]struct{}, len(ids))
		for _, id := range ids {
			found[id] = struct{}{}
		}
		set = intersect(set, found)
	}
	return set, nil
}

// intersect returns the ids in both sets; a nil set is every id.
func intersect(set, other map[string]struct{}) map[string]struct{} {
	if set == nil {
		return other
	}
	for id := range set {
		if _, ok := other[id]; !ok {
			delete(set, id)
		}
	}
	return set
}

// fleetPage is the part of the fleet a fleet query selected, in id order.
type fleetPage struct {
	entries []*twin.Entry // in the registry's shared listing
	alarms  []bool        // alarms[i]: entries[i] has an active alarm
	view    twin.View
	// next is the cursor of the next page; "" when no machine follows.
	next string
}

// selectFleet runs a fleet query over the registry's listing: the
// identity's sites, then the filters, from the cursor on, up to the limit.
// A machine registered (or deleted) during a walk of pages shows up (or
// not) whether or not the walk has passed it; one that exists during the
// whole walk is in exactly one page, since pages follow id order.
func (a *API) selectFleet(ctx context.Context, ident auth.Identity, f fleetQuery) (fleetPage, error) {
	var indexed map[string]struct{}
	if len(f.attrs) > 0 && a.attrIndex != nil {
		var err error
		if indexed, err = a.indexedAttrs(ctx, f.attrs); err != nil {
			return fleetPage{}, err
		}
	}
	all := a.registry.Listing()
	start := 0
	if f.after != "" {
		start = sort.Search(len(all), func(i int) bool { return all[i].ID > f.after })
	}
	p := fleetPage{view: a.live.View()}
	if f.limit > 0 {
		p.entries = make([]*twin.Entry, 0, min(f.limit, len(all)-start))
	}
	var alarmed map[string]struct{}
	if a.alarms != nil {
		alarmed = a.alarms.AlarmedSet()
	}
	restricted := ident.Restricted()
	for i := start; i < len(all); i++ {
		e := &all[i]
		if restricted && !ident.SeesSite(e.Site) ||
			len(f.sites) > 0 && !contains(f.sites, e.Site) ||
			len(f.lines) > 0 && !contains(f.lines, e.Line) ||
			f.q != "" && !containsFold(e.ID, f.q) && !containsFold(e.Name, f.q) {
			continue
		}
		if indexed != nil {
			if _, ok := indexed[e.ID]; !ok {
				continue
			}
		} else if !attrsMatch(e.Attributes, f.attrs) {
			continue
		}
		_, alarm := alarmed[e.ID]
		if !f.anyStatus && !(f.alarm && alarm) {
			st := p.view.Status(e.ID)
			if !(f.online && st == twin.StatusOnline || f.offline && st == twin.StatusOffline) {
				continue
			}
		}
		if f.limit > 0 && len(p.entries) == f.limit {
			p.next = encodeCursor(p.entries[len(p.entries)-1].ID)
			break
		}
		p.entries = append(p.entries, e)
		p.alarms = append(p.alarms, alarm)
	}
	return p, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func attrsMatch(attrs map[string]any, fs []attrFilter) bool {
	for _, af := range fs {
		v, ok := attrs[af.key]
		if !ok || !attrMatches(v, af.value) {
			return false
		}
	}
	return true
}

// containsFold reports whether s contains lower, which is lower-case,
// ignoring case; ASCII s is compared without allocating.
func containsFold(s, lower string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x80 {
			return strings.Contains(strings.ToLower(s), lower)
		}
	}
	n := len(lower)
	for i := 0; i+n <= len(s); i++ {
		j := 0
		for j < n {
			c := s[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != lower[j] {
				break
			}
			j++
		}
		if j == n {
			return true
		}
	}
	return false
}

// machines returns the page's twins as Machine values (for answers other
// than the JSON list, which writeFleet encodes without them).
func (a *API) machines(p fleetPage) []twin.Machine {
	infos := make([]twin.Info, len(p.entries))
	for i := range p.entries {
		infos[i] = p.entries[i].Info
	}
	ms := a.live.Machines(infos)
	for i := range ms {
		ms[i].Alarm = p.alarms[i]
	}
	return ms
}

// fleetBufs recycles the fleet list's encoding buffers (megabytes for a
// large fleet).
var fleetBufs = sync.Pool{New: func() any { return new([]byte) }}

// fleetChunk is the fewest machines one goroutine encodes: a large fleet
// is encoded by up to GOMAXPROCS goroutines, each its share.
const fleetChunk = 1024

// writeFleet writes a fleet page as {"count":N,"machines":[...],"next":
// "cursor"}: count is the number of machines in this answer, next is there
// when more follow. Each twin is encoded by twin.View.AppendMachines (the
// entry's cached JSON and its live state, without building a Machine),
// a large page in parallel parts written in order.
func writeFleet(w http.ResponseWriter, p fleetPage) {
	n := len(p.entries)
	parts := 1
	if n >= 2*fleetChunk {
		parts = max(1, min(runtime.GOMAXPROCS(0), n/fleetChunk))
	}
	bufs := make([]*[]byte, parts)
	encode := func(k int) {
		bp := fleetBufs.Get().(*[]byte)
		b := (*bp)[:0]
		lo, hi := k*n/parts, (k+1)*n/parts
		b = p.view.AppendMachines(b, p.entries[lo:hi], p.alarms[lo:hi])
		*bp = b
		bufs[k] = bp
	}
	var wg sync.WaitGroup
	for k := 1; k < parts; k++ {
		wg.Go(func() { encode(k) })
	}
	encode(0)
	wg.Wait()

	head := strconv.AppendInt([]byte(`{"count":`), int64(n), 10)
	head = append(head, `,"machines":[`...)
	tail := []byte("]")
	if p.next != "" {
		tail = append(tail, `,"next":"`...)
		tail = append(tail, p.next...) // base64url: nothing to escape
		tail = append(tail, '"')
	}
	tail = append(tail, "}\n"...)
	size := len(head) + len(tail)
	for k, bp := range bufs {
		if k > 0 && len(*bp) > 0 {
			size++
		}
		size += len(*bp)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(size))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(head)
	for k, bp := range bufs {
		if k > 0 && len(*bp) > 0 {
			_, _ = w.Write([]byte{','})
		}
		_, _ = w.Write(*bp)
		if cap(*bp) <= 64<<20 {
			fleetBufs.Put(bp)
		}
	}
	_, _ = w.Write(tail)
}
