package twin

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"
)

// Schema is the JSON Schema subset a registry entry may declare for a
// machine's desired document (Info.DesiredSchema) and for each command's
// params (CommandSpec.Params): type, properties (with required and
// additionalProperties), minimum and maximum, enum, maxLength and items.
// Keywords outside the subset are refused when the entry is stored, so a
// schema never silently means less than it says.
type Schema struct {
	// Type is one of object, number, integer, string, boolean, array;
	// empty allows any type (the other keywords still apply to the
	// types they are about).
	Type string `json:"type,omitempty"`
	// Properties constrain an object's fields; Required names the ones
	// that must be present.
	Properties map[string]*Schema `json:"properties,omitempty"`
	Required   []string           `json:"required,omitempty"`
	// AdditionalProperties false refuses fields Properties does not name
	// (nil or true allows them).
	AdditionalProperties *bool `json:"additionalProperties,omitempty"`
	// Minimum and Maximum bound a number, inclusive.
	Minimum *float64 `json:"minimum,omitempty"`
	Maximum *float64 `json:"maximum,omitempty"`
	// Enum lists the values allowed (compared as JSON values).
	Enum []any `json:"enum,omitempty"`
	// MaxLength bounds a string, in characters.
	MaxLength *int `json:"maxLength,omitempty"`
	// Items constrains each element of an array.
	Items *Schema `json:"items,omitempty"`
}

// FieldError is one value a Schema refuses: the field's path (dotted,
// "setpoints.temp", "[2]" for array elements; "" for the whole document)
// and why.
type FieldError struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

func (e FieldError) Error() string {
	if e.Field == "" {
		return e.Reason
	}
	return e.Field + ": " + e.Reason
}

// maxSchemaDepth bounds how deep a schema (and so a validation) nests.
const maxSchemaDepth = 16

var schemaTypes = []string{"object", "number", "integer", "string", "boolean", "array"}

// check reports what is wrong with the schema itself, at path.
func (s *Schema) check(path string, depth int) []error {
	if s == nil {
		return nil
	}
	at := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...))
	}
	if depth > maxSchemaDepth {
		return []error{at("nested deeper than %d levels", maxSchemaDepth)}
	}
	var errs []error
	if s.Type != "" && !slices.Contains(schemaTypes, s.Type) {
		errs = append(errs, at("type %q is not one of %s", s.Type, strings.Join(schemaTypes, ", ")))
	}
	for _, v := range []*float64{s.Minimum, s.Maximum} {
		if v != nil && (math.IsNaN(*v) || math.IsInf(*v, 0)) {
			errs = append(errs, at("minimum and maximum must be finite"))
		}
	}
	if s.Minimum != nil && s.Maximum != nil && *s.Minimum > *s.Maximum {
		errs = append(errs, at("minimum (%g) is above maximum (%g)", *s.Minimum, *s.Maximum))
	}
	if s.MaxLength != nil && *s.MaxLength < 0 {
		errs = append(errs, at("maxLength must not be negative"))
	}
	for _, r := range s.Required {
		if _, ok := s.Properties[r]; !ok && s.AdditionalProperties != nil && !*s.AdditionalProperties {
			errs = append(errs, at("required field %q is not in properties, and additionalProperties is false", r))
		}
	}
	names := make([]string, 0, len(s.Properties))
	for name := range s.Properties {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if name == "" {
			errs = append(errs, at("empty property name"))
			continue
		}
		errs = append(errs, s.Properties[name].check(join(path, name), depth+1)...)
	}
	errs = append(errs, s.Items.check(path+"[]", depth+1)...)
	return errs
}

// Validate reports every field of v (a value as encoding/json decodes it
// into an any: map[string]any, []any, float64, string, bool, nil) that s
// refuses, in a stable order; nil when v conforms. A nil Schema allows
// everything. A null value is a removal in a merge patch and is never
// refused here; validate the document after the patch is applied.
func (s *Schema) Validate(v any) []FieldError {
	var out []FieldError
	s.validate("", v, &out)
	return out
}

func (s *Schema) validate(path string, v any, out *[]FieldError) {
	if s == nil || v == nil {
		return
	}
	bad := func(format string, args ...any) {
		*out = append(*out, FieldError{Field: path, Reason: fmt.Sprintf(format, args...)})
	}
	if got := jsonType(v); s.Type != "" && got != s.Type && (s.Type != "number" || got != "integer") {
		if s.Type == "integer" && got == "number" {
			bad("must be an integer, got %v", v)
		} else {
			bad("must be of type %s, got %s", s.Type, got)
		}
		return
	}
	if len(s.Enum) > 0 && !slices.ContainsFunc(s.Enum, func(e any) bool { return jsonEqual(e, v) }) {
		bad("must be one of %s", enumText(s.Enum))
	}
	switch x := v.(type) {
	case float64:
		if s.Minimum != nil && x < *s.Minimum {
			bad("must be at least %g, got %g", *s.Minimum, x)
		}
		if s.Maximum != nil && x > *s.Maximum {
			bad("must be at most %g, got %g", *s.Maximum, x)
		}
	case string:
		if s.MaxLength != nil && utf8.RuneCountInString(x) > *s.MaxLength {
			bad("must be at most %d characters long", *s.MaxLength)
		}
	case map[string]any:
		for _, r := range s.Required {
			if _, ok := x[r]; !ok {
				*out = append(*out, FieldError{Field: join(path, r), Reason: "is required"})
			}
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p, ok := s.Properties[k]
			if !ok {
				if s.AdditionalProperties != nil && !*s.AdditionalProperties {
					*out = append(*out, FieldError{Field: join(path, k), Reason: "is not allowed by the schema"})
				}
				continue
			}
			p.validate(join(path, k), x[k], out)
		}
	case []any:
		for i, e := range x {
			s.Items.validate(fmt.Sprintf("%s[%d]", path, i), e, out)
		}
	}
}

// jsonType is the schema type of a decoded JSON value: a whole float64 is
// "integer" (which "number" also accepts).
func jsonType(v any) string {
	switch x := v.(type) {
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case string:
		return "string"
	case bool:
		return "boolean"
	case float64:
		if x == math.Trunc(x) && !math.IsInf(x, 0) {
			return "integer"
		}
		return "number"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

// jsonEqual compares two decoded JSON values.
func jsonEqual(a, b any) bool {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !jsonEqual(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		return ok && slices.EqualFunc(x, y, jsonEqual)
	case int:
		return jsonEqual(float64(x), b)
	}
	if y, ok := b.(int); ok {
		return jsonEqual(a, float64(y))
	}
	return a == b
}

func enumText(enum []any) string {
	parts := make([]string, len(enum))
	for i, e := range enum {
		if s, ok := e.(string); ok {
			parts[i] = fmt.Sprintf("%q", s)
		} else {
			parts[i] = fmt.Sprint(e)
		}
	}
	return strings.Join(parts, ", ")
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// CommandSpec declares one command a machine supports: what it does, and
// the schema its params must follow (nil: any params).
type CommandSpec struct {
	Description string  `json:"description,omitempty"`
	Params      *Schema `json:"params,omitempty"`
}

// OEESpec says how to compute a machine's OEE (ISO 22400): the state
// series that tells running from stopped, and the counters of parts.
//
//	availability = run time / planned production time
//	performance  = IdealCycleSeconds × total count / run time
//	quality      = good count / total count
//
// Planned production time is the time in any state but PlannedStopStates;
// run time is the time in RunningStates. TotalCount and GoodCount are
// metrics that count parts up (a counter that drops is a reset: counted
// from its new value).
type OEESpec struct {
	StateMetric       string   `json:"stateMetric"`
	RunningStates     []string `json:"runningStates"`
	PlannedStopStates []string `json:"plannedStopStates,omitempty"`
	TotalCount        string   `json:"totalCount,omitempty"`
	GoodCount         string   `json:"goodCount,omitempty"`
	IdealCycleSeconds float64  `json:"idealCycleSeconds,omitempty"`
}

const maxCommands = 64

// checkControl reports what is wrong with the control part of an entry:
// desired schema, commands and OEE.
func (in Info) checkControl() []error {
	var errs []error
	if in.DesiredSchema != nil {
		if in.DesiredSchema.Type != "" && in.DesiredSchema.Type != "object" {
			errs = append(errs, errors.New("desiredSchema: the desired document is an object: type must be \"object\""))
		}
		errs = append(errs, in.DesiredSchema.check("desiredSchema", 0)...)
	}
	if len(in.Commands) > maxCommands {
		errs = append(errs, fmt.Errorf("commands: more than %d", maxCommands))
	}
	names := make([]string, 0, len(in.Commands))
	for name := range in.Commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if name == "" || len(name) > 64 || strings.ContainsAny(name, "/+# ") || textProblem(name) != "" {
			errs = append(errs, fmt.Errorf("commands: name %q must be 1 to 64 characters without '/', '+', '#' or spaces", name))
			continue
		}
		c := in.Commands[name]
		if len(c.Description) > maxTextLen {
			errs = append(errs, fmt.Errorf("commands.%s.description: longer than %d bytes", name, maxTextLen))
		}
		if c.Params != nil && c.Params.Type != "" && c.Params.Type != "object" {
			errs = append(errs, fmt.Errorf("commands.%s.params: params are an object: type must be \"object\"", name))
		}
		errs = append(errs, c.Params.check("commands."+name+".params", 0)...)
	}
	if o := in.OEE; o != nil {
		if o.StateMetric == "" {
			errs = append(errs, errors.New("oee.stateMetric: required"))
		}
		if len(o.RunningStates) == 0 {
			errs = append(errs, errors.New("oee.runningStates: at least one state"))
		}
		for _, s := range o.RunningStates {
			if slices.Contains(o.PlannedStopStates, s) {
				errs = append(errs, fmt.Errorf("oee: state %q is both running and a planned stop", s))
			}
		}
		if o.IdealCycleSeconds < 0 || math.IsNaN(o.IdealCycleSeconds) || math.IsInf(o.IdealCycleSeconds, 0) {
			errs = append(errs, errors.New("oee.idealCycleSeconds: must be a finite number ≥ 0"))
		}
		if o.GoodCount != "" && o.TotalCount == "" {
			errs = append(errs, errors.New("oee.goodCount: needs totalCount"))
		}
	}
	return errs
}
