package api

import (
	"encoding/json"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/hub"
	"github.com/twinline/twinline/internal/twin"
)

// jsonSchema is the part of a JSON Schema the documents' checks read.
type jsonSchema struct {
	Ref                  string                 `json:"$ref"`
	Type                 any                    `json:"type"` // a name, or a list of names
	Const                string                 `json:"const"`
	Format               string                 `json:"format"`
	Properties           map[string]*jsonSchema `json:"properties"`
	Required             []string               `json:"required"`
	Items                *jsonSchema            `json:"items"`
	AdditionalProperties json.RawMessage        `json:"additionalProperties"`
}

// typeName is the schema's type: "number|null" for a list.
func (s *jsonSchema) typeName() string {
	switch t := s.Type.(type) {
	case string:
		return t
	case []any:
		var names []string
		for _, n := range t {
			names = append(names, n.(string))
		}
		return strings.Join(names, "|")
	}
	return ""
}

// asyncAPI is the part of the AsyncAPI document the checks read.
type asyncAPI struct {
	AsyncAPI string `json:"asyncapi"`
	Channels map[string]struct {
		Address  string                       `json:"address"`
		Messages map[string]map[string]string `json:"messages"`
	} `json:"channels"`
	Components struct {
		Messages map[string]struct {
			Name    string     `json:"name"`
			Payload jsonSchema `json:"payload"`
		} `json:"messages"`
		Schemas map[string]*jsonSchema `json:"schemas"`
	} `json:"components"`
}

func loadAsyncAPI(t *testing.T) asyncAPI {
	t.Helper()
	var doc asyncAPI
	if err := json.Unmarshal(asyncapiDoc, &doc); err != nil {
		t.Fatalf("asyncapi.json: %v", err)
	}
	return doc
}

// TestAsyncAPIServed: GET /api/asyncapi.json answers the AsyncAPI 3.0
// document, next to the OpenAPI one.
func TestAsyncAPIServed(t *testing.T) {
	a := newTestAPI(t, &fakeLog{real: eventlog.New(10, nil)})
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, httptest.NewRequest("GET", "/api/asyncapi.json", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET /api/asyncapi.json: %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	var doc asyncAPI
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil || doc.AsyncAPI != "3.0.0" {
		t.Errorf("served document: asyncapi %q, %v; want 3.0.0", doc.AsyncAPI, err)
	}
}

// TestAsyncAPIMatchesGo: the stream channel lists every message type of
// the hub, and the schema of each is its Go type's: the same JSON names,
// required exactly when the field is not omitempty, of matching types,
// down to the nested types. A renamed or added field on either side fails.
func TestAsyncAPIMatchesGo(t *testing.T) {
	doc := loadAsyncAPI(t)
	stream, ok := doc.Channels["stream"]
	if !ok || stream.Address != "/api/v1/stream" {
		t.Fatalf("no stream channel at /api/v1/stream: %+v", doc.Channels)
	}
	var fromGo, fromDoc []string
	for typ, v := range hub.Messages() {
		fromGo = append(fromGo, string(typ))
		m, ok := doc.Components.Messages[string(typ)]
		if !ok {
			continue // reported by the diff below
		}
		goType := reflect.TypeOf(v)
		if want := "#/components/schemas/" + goType.Name(); m.Payload.Ref != want {
			t.Errorf("message %s: payload %q, want %q", typ, m.Payload.Ref, want)
			continue
		}
		s := doc.Components.Schemas[goType.Name()]
		if s == nil || s.Properties["type"] == nil || s.Properties["type"].Const != string(typ) {
			t.Errorf("schema %s: no type property with const %q", goType.Name(), typ)
		}
		checkStruct(t, doc.Components.Schemas, goType, map[string]bool{})
	}
	for name, ref := range stream.Messages {
		fromDoc = append(fromDoc, name)
		if ref["$ref"] != "#/components/messages/"+name {
			t.Errorf("stream message %s: $ref %q", name, ref["$ref"])
		}
	}
	slices.Sort(fromGo)
	slices.Sort(fromDoc)
	if diff := cmp.Diff(fromGo, fromDoc); diff != "" {
		t.Errorf("hub message types vs the stream channel's messages (-go +doc):\n%s", diff)
	}
}

// checkStruct checks the schema named like the struct typ against it.
func checkStruct(t *testing.T, schemas map[string]*jsonSchema, typ reflect.Type, seen map[string]bool) {
	t.Helper()
	name := typ.Name()
	if seen[name] {
		return
	}
	seen[name] = true
	s := schemas[name]
	if s == nil {
		t.Errorf("no schema %s for Go type %v", name, typ)
		return
	}
	if string(s.AdditionalProperties) != "false" {
		t.Errorf("schema %s: additionalProperties %s, want false (the Go type has no more)", name, s.AdditionalProperties)
	}
	var props, required []string
	for f := range typ.Fields() {
		tag := f.Tag.Get("json")
		jsonName, opts, _ := strings.Cut(tag, ",")
		if jsonName == "-" || !f.IsExported() {
			continue
		}
		props = append(props, jsonName)
		if opts != "omitempty" && opts != "omitzero" {
			required = append(required, jsonName)
		}
		p := s.Properties[jsonName]
		if p == nil {
			continue // reported by the diff below
		}
		checkValue(t, schemas, name+"."+jsonName, f.Type, p, seen)
	}
	var docProps []string
	for p := range s.Properties {
		docProps = append(docProps, p)
	}
	docRequired := slices.Clone(s.Required)
	for _, l := range [][]string{props, required, docProps, docRequired} {
		slices.Sort(l)
	}
	if diff := cmp.Diff(props, docProps); diff != "" {
		t.Errorf("schema %s: properties (-go +doc):\n%s", name, diff)
	}
	if diff := cmp.Diff(required, docRequired); diff != "" {
		t.Errorf("schema %s: required (-go, not omitempty +doc):\n%s", name, diff)
	}
}

// checkValue checks the schema s of the value at path against typ.
func checkValue(t *testing.T, schemas map[string]*jsonSchema, path string, typ reflect.Type, s *jsonSchema, seen map[string]bool) {
	t.Helper()
	if typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	want := ""
	switch {
	case typ == reflect.TypeFor[time.Time]():
		if s.typeName() != "string" || s.Format != "date-time" {
			t.Errorf("%s: %s %s, want a date-time string", path, s.typeName(), s.Format)
		}
		return
	case typ == reflect.TypeFor[json.RawMessage]() || typ.Kind() == reflect.Interface:
		// Any JSON value: the schema constrains no type.
		if s.typeName() != "" {
			t.Errorf("%s: type %q, want any JSON value (no type)", path, s.typeName())
		}
		return
	case typ == reflect.TypeFor[hub.Float]():
		want = "number|null"
	case typ == reflect.TypeFor[hub.MessageType]():
		if s.typeName() != "string" || s.Const == "" {
			t.Errorf("%s: want a string const", path)
		}
		return
	case typ.Kind() == reflect.Struct:
		ref, ok := strings.CutPrefix(s.Ref, "#/components/schemas/")
		if !ok || ref != typ.Name() {
			t.Errorf("%s: $ref %q, want the schema %s", path, s.Ref, typ.Name())
			return
		}
		checkStruct(t, schemas, typ, seen)
		return
	case typ.Kind() == reflect.Slice:
		if s.typeName() != "array" || s.Items == nil {
			t.Errorf("%s: %q, want an array", path, s.typeName())
			return
		}
		checkValue(t, schemas, path+"[]", typ.Elem(), s.Items, seen)
		return
	case typ.Kind() == reflect.Map:
		var items jsonSchema
		if s.typeName() != "object" || json.Unmarshal(s.AdditionalProperties, &items) != nil {
			t.Errorf("%s: %q, want an object with additionalProperties", path, s.typeName())
			return
		}
		checkValue(t, schemas, path+"{}", typ.Elem(), &items, seen)
		return
	case typ.Kind() == reflect.Interface:
		return // any JSON value (a document's field)
	case typ.Kind() == reflect.String:
		want = "string"
	case typ.Kind() == reflect.Bool:
		want = "boolean"
	case typ.Kind() == reflect.Float64:
		want = "number"
	case typ.Kind() >= reflect.Int && typ.Kind() <= reflect.Uint64:
		want = "integer"
	default:
		t.Errorf("%s: Go type %v has no check", path, typ)
		return
	}
	if got := s.typeName(); got != want {
		t.Errorf("%s: type %q, want %q (Go %v)", path, got, want, typ)
	}
}

// TestAlarmAndNoteSchemas: the stream carries alarms and notes as the HTTP
// API answers them: the AsyncAPI and OpenAPI schemas name the same
// properties, and the hub's types have the JSON names of twin's (the
// conversion between them compiles only with the same fields).
func TestAlarmAndNoteSchemas(t *testing.T) {
	var openapi struct {
		Components struct {
			Schemas map[string]*jsonSchema `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openapiDoc, &openapi); err != nil {
		t.Fatal(err)
	}
	doc := loadAsyncAPI(t)
	for _, name := range []string{"Alarm", "Note", "Command", "CommandTransition"} {
		a, o := doc.Components.Schemas[name], openapi.Components.Schemas[name]
		if diff := cmp.Diff(a.Properties, o.Properties); diff != "" {
			t.Errorf("%s: AsyncAPI vs OpenAPI properties (-async +open):\n%s", name, diff)
		}
		if diff := cmp.Diff(a.Required, o.Required); diff != "" {
			t.Errorf("%s: AsyncAPI vs OpenAPI required (-async +open):\n%s", name, diff)
		}
	}
	for _, pair := range [][2]reflect.Type{
		{reflect.TypeFor[hub.Alarm](), reflect.TypeFor[twin.Alarm]()},
		{reflect.TypeFor[hub.Note](), reflect.TypeFor[twin.Note]()},
	} {
		var tags [2][]string
		for i, typ := range pair {
			for f := range typ.Fields() {
				tags[i] = append(tags[i], f.Name+" "+f.Tag.Get("json"))
			}
		}
		if diff := cmp.Diff(tags[0], tags[1]); diff != "" {
			t.Errorf("%v vs %v JSON names (-hub +twin):\n%s", pair[0], pair[1], diff)
		}
	}
	// The conversions the app makes.
	_ = twin.Alarm(hub.Alarm{})
	_ = hub.Note(twin.Note{})
}
