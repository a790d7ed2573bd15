package twin

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSchemaValidate(t *testing.T) {
	const schemaJSON = `{"type":"object","required":["mode"],"additionalProperties":false,"properties":{
		"tempSetpoint":{"type":"number","minimum":20,"maximum":250},
		"count":{"type":"integer","minimum":0},
		"mode":{"type":"string","enum":["auto","manual"]},
		"label":{"type":"string","maxLength":3},
		"on":{"type":"boolean"},
		"steps":{"type":"array","items":{"type":"integer","maximum":10}},
		"pid":{"type":"object","properties":{"p":{"type":"number"}},"additionalProperties":false},
		"level":{"enum":[1,"high",{"x":[1]}]},
		"free":{}
	}}`
	var s Schema
	if err := json.Unmarshal([]byte(schemaJSON), &s); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		doc  string
		want []FieldError
	}{
		{"conforms", `{"mode":"auto","tempSetpoint":180,"count":3,"label":"abc","on":true,"steps":[1,2],"pid":{"p":0.5},"level":"high","free":[{"a":null}]}`, nil},
		{"bounds inclusive", `{"mode":"manual","tempSetpoint":250,"count":0}`, nil},
		{"integer accepted as number", `{"mode":"auto","tempSetpoint":20}`, nil},
		{"null is never refused", `{"mode":"auto","tempSetpoint":null,"label":null}`, nil},
		{"required missing", `{"tempSetpoint":100}`, []FieldError{{"mode", "is required"}}},
		{"below minimum", `{"mode":"auto","tempSetpoint":19.5}`, []FieldError{{"tempSetpoint", "must be at least 20, got 19.5"}}},
		{"above maximum", `{"mode":"auto","tempSetpoint":251}`, []FieldError{{"tempSetpoint", "must be at most 250, got 251"}}},
		{"wrong type", `{"mode":"auto","tempSetpoint":"hot"}`, []FieldError{{"tempSetpoint", "must be of type number, got string"}}},
		{"not an integer", `{"mode":"auto","count":1.5}`, []FieldError{{"count", "must be an integer, got 1.5"}}},
		{"enum", `{"mode":"turbo"}`, []FieldError{{"mode", `must be one of "auto", "manual"`}}},
		{"enum of mixed values", `{"mode":"auto","level":{"x":[1]}}`, nil},
		{"enum compares as JSON", `{"mode":"auto","level":{"x":[2]}}`, []FieldError{{"level", `must be one of 1, "high", map[x:[1]]`}}},
		{"maxLength counts characters", `{"mode":"auto","label":"äöü"}`, nil},
		{"too long", `{"mode":"auto","label":"abcd"}`, []FieldError{{"label", "must be at most 3 characters long"}}},
		{"array items", `{"mode":"auto","steps":[1,11,"x"]}`, []FieldError{{"steps[1]", "must be at most 10, got 11"}, {"steps[2]", "must be of type integer, got string"}}},
		{"nested unknown field", `{"mode":"auto","pid":{"p":1,"d":2}}`, []FieldError{{"pid.d", "is not allowed by the schema"}}},
		{"unknown field", `{"mode":"auto","color":"red"}`, []FieldError{{"color", "is not allowed by the schema"}}},
		{"every problem, in order", `{"zeta":1,"tempSetpoint":1000,"label":"long!","mode":"x"}`, []FieldError{
			{"label", "must be at most 3 characters long"}, {"mode", `must be one of "auto", "manual"`},
			{"tempSetpoint", "must be at most 250, got 1000"}, {"zeta", "is not allowed by the schema"}}},
		{"not an object", `[1]`, []FieldError{{"", "must be of type object, got array"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var doc any
			if err := json.Unmarshal([]byte(tt.doc), &doc); err != nil {
				t.Fatal(err)
			}
			got := s.Validate(doc)
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("Validate(%s) (-got +want):\n%s", tt.doc, diff)
			}
		})
	}
	t.Run("nil schema allows everything", func(t *testing.T) {
		var none *Schema
		if got := none.Validate(map[string]any{"x": []any{1.0}}); got != nil {
			t.Errorf("nil Schema refused: %v", got)
		}
	})
	t.Run("field error text", func(t *testing.T) {
		if got, want := (FieldError{Field: "a.b", Reason: "is required"}).Error(), "a.b: is required"; got != want {
			t.Errorf("Error() = %q, want %q", got, want)
		}
		if got, want := (FieldError{Reason: "bad"}).Error(), "bad"; got != want {
			t.Errorf("Error() = %q, want %q", got, want)
		}
	})
}

func TestCheckControl(t *testing.T) {
	num := func(v float64) *float64 { return &v }
	no := false
	deep := &Schema{Type: "object"}
	for range maxSchemaDepth + 1 {
		deep = &Schema{Type: "object", Properties: map[string]*Schema{"n": deep}}
	}
	many := map[string]CommandSpec{}
	for i := range maxCommands + 1 {
		many["c"+strconv.Itoa(i)] = CommandSpec{}
	}
	tests := []struct {
		name string
		in   Info
		want []string // the errors' texts
	}{
		{"none", Info{}, nil},
		{"all good", Info{
			DesiredSchema: &Schema{Type: "object", Properties: map[string]*Schema{"t": {Type: "number", Minimum: num(20), Maximum: num(250)}}},
			Commands:      map[string]CommandSpec{"reset": {Description: "reset a counter", Params: &Schema{Type: "object"}}, "stop": {}},
			OEE:           &OEESpec{StateMetric: "state", RunningStates: []string{"RUNNING"}, PlannedStopStates: []string{"PLANNED"}, TotalCount: "parts_total", GoodCount: "parts_good", IdealCycleSeconds: 2.5},
		}, nil},
		{"desired not an object", Info{DesiredSchema: &Schema{Type: "array"}},
			[]string{`desiredSchema: the desired document is an object: type must be "object"`}},
		{"schema problems, all reported", Info{DesiredSchema: &Schema{Properties: map[string]*Schema{
			"a": {Type: "float"},
			"b": {Minimum: num(5), Maximum: num(1)},
			"c": {Maximum: num(math.Inf(1))},
			"d": {MaxLength: new(int)},
			"e": {Type: "array", Items: &Schema{Type: "date"}},
			"":  {},
		}}}, []string{
			`desiredSchema: empty property name`,
			`desiredSchema.a: type "float" is not one of object, number, integer, string, boolean, array`,
			`desiredSchema.b: minimum (5) is above maximum (1)`,
			`desiredSchema.c: minimum and maximum must be finite`,
			`desiredSchema.e[]: type "date" is not one of object, number, integer, string, boolean, array`,
		}},
		{"negative maxLength", Info{DesiredSchema: &Schema{Properties: map[string]*Schema{"s": {MaxLength: func() *int { n := -1; return &n }()}}}},
			[]string{"desiredSchema.s: maxLength must not be negative"}},
		{"required outside closed properties", Info{DesiredSchema: &Schema{Required: []string{"x"}, AdditionalProperties: &no}},
			[]string{`desiredSchema: required field "x" is not in properties, and additionalProperties is false`}},
		{"too deep", Info{DesiredSchema: deep}, []string{"desiredSchema" + strings.Repeat(".n", maxSchemaDepth+1) + ": nested deeper than 16 levels"}},
		{"bad command names", Info{Commands: map[string]CommandSpec{"": {}, "a/b": {}, "has space": {}, strings.Repeat("x", 65): {}, "ok": {}}}, []string{
			`commands: name "" must be 1 to 64 characters without '/', '+', '#' or spaces`,
			`commands: name "a/b" must be 1 to 64 characters without '/', '+', '#' or spaces`,
			`commands: name "has space" must be 1 to 64 characters without '/', '+', '#' or spaces`,
			`commands: name "` + strings.Repeat("x", 65) + `" must be 1 to 64 characters without '/', '+', '#' or spaces`,
		}},
		{"command params", Info{Commands: map[string]CommandSpec{
			"a": {Params: &Schema{Type: "string"}},
			"b": {Params: &Schema{Type: "object", Properties: map[string]*Schema{"n": {Type: "nope"}}}},
			"c": {Description: strings.Repeat("d", maxTextLen+1)},
		}}, []string{
			`commands.a.params: params are an object: type must be "object"`,
			`commands.b.params.n: type "nope" is not one of object, number, integer, string, boolean, array`,
			`commands.c.description: longer than 256 bytes`,
		}},
		{"too many commands", Info{Commands: many}, []string{"commands: more than 64"}},
		{"oee", Info{OEE: &OEESpec{RunningStates: []string{"RUN"}, PlannedStopStates: []string{"RUN"}, GoodCount: "good", IdealCycleSeconds: -1}}, []string{
			"oee.stateMetric: required",
			`oee: state "RUN" is both running and a planned stop`,
			"oee.idealCycleSeconds: must be a finite number ≥ 0",
			"oee.goodCount: needs totalCount",
		}},
		{"oee without running states", Info{OEE: &OEESpec{StateMetric: "state", IdealCycleSeconds: math.NaN()}}, []string{
			"oee.runningStates: at least one state",
			"oee.idealCycleSeconds: must be a finite number ≥ 0",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, err := range tt.in.checkControl() {
				got = append(got, err.Error())
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("checkControl (-got +want):\n%s", diff)
			}
		})
	}
}
