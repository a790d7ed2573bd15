package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestWireUpToDate fails when web/src/lib/wire.ts is not what the API
// documents generate: a document was changed without make generate.
func TestWireUpToDate(t *testing.T) {
	if err := run("../../internal/api/openapi.json", "../../internal/api/asyncapi.json", "../../web/src/lib/wire.ts", true); err != nil {
		t.Fatal(err)
	}
}

func TestGenerate(t *testing.T) {
	openapi := `{"components":{"schemas":{
		"Note":{"type":"object","required":["id"],"properties":{"id":{"type":"string"},"text":{"type":"string"}}},
		"Box":{"allOf":[{"$ref":"#/components/schemas/Note"},{"type":"object","properties":{"n":{"type":["integer","null"]}}}]}}}}`
	asyncapi := `{"channels":{"live":{"messages":{"ping":{"$ref":"#/components/messages/ping"}}}},
		"components":{"messages":{"ping":{"payload":{"$ref":"#/components/schemas/Ping"}}},"schemas":{
		"Note":{"type":"object","required":["id"],"properties":{"id":{"type":"string","description":"Its id."},"text":{"type":"string"}},"additionalProperties":false},
		"Ping":{"type":"object","required":["type","tags"],"properties":{"type":{"type":"string","const":"ping"},
			"tags":{"type":"array","items":{"type":"string","enum":["a","b"]}},
			"by":{"type":"object","additionalProperties":{"$ref":"#/components/schemas/Note"}},
			"odd-name":{"type":"boolean"}}}}}}`
	got, err := generate([]byte(openapi), []byte(asyncapi))
	if err != nil {
		t.Fatal(err)
	}
	want := header + `
export type Box = Note & {
  n?: number | null;
};

export interface Note {
  /** Its id. */
  id: string;
  text?: string;
}

export interface Ping {
  by?: Record<string, Note>;
  "odd-name"?: boolean;
  tags: ('a' | 'b')[];
  type: 'ping';
}

/** Every message of the live channel. */
export type LiveMessages =
  | Ping;
`
	if diff := cmp.Diff(string(got), want); diff != "" {
		t.Errorf("generated (-got +want):\n%s", diff)
	}
}

// TestGenerateRefusesDiverging: a schema in both documents must have the
// same properties in both.
func TestGenerateRefusesDiverging(t *testing.T) {
	openapi := `{"components":{"schemas":{"Note":{"type":"object","properties":{"id":{"type":"string"}}}}}}`
	asyncapi := `{"components":{"schemas":{"Note":{"type":"object","properties":{"ID":{"type":"string"}}}}}}`
	_, err := generate([]byte(openapi), []byte(asyncapi))
	if err == nil || !strings.Contains(err.Error(), "Note differs") {
		t.Errorf("diverging Note: %v, want an error", err)
	}
}
