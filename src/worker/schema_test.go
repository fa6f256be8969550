package worker

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"
)

type schemaNode struct {
	Name     string          `json:"name"`
	Note     *string         `json:"note"`
	Tags     []string        `json:"tags,omitempty"`
	When     time.Time       `json:"when"`
	ID       uuid.UUID       `json:"id"`
	Raw      json.RawMessage `json:"raw"`
	Children []*schemaNode   `json:"children"`
	Skip     int             `json:"-"`
	schemaEmbedded
}

type schemaEmbedded struct {
	Level int `json:"level"`
}

func TestSchemaOf(t *testing.T) {
	defs := map[string]any{}
	ref := schemaOf(reflect.TypeFor[schemaNode](), defs)
	if ref["$ref"] != "#/components/schemas/worker.schemaNode" {
		t.Fatalf("named struct: %v", ref)
	}
	s := defs["worker.schemaNode"].(map[string]any)
	props := s["properties"].(map[string]any)
	want := map[string]string{
		"name": `{"type":"string"}`, "when": `{"format":"date-time","type":"string"}`,
		"id": `{"format":"uuid","type":"string"}`, "raw": `{}`, "level": `{"type":"integer"}`,
		"note":     `{"oneOf":[{"type":"string"},{"type":"null"}]}`,
		"children": `{"items":{"oneOf":[{"$ref":"#/components/schemas/worker.schemaNode"},{"type":"null"}]},"type":["array","null"]}`,
	}
	for name, w := range want {
		got, _ := json.Marshal(props[name])
		if string(got) != w {
			t.Errorf("%s: %s, want %s", name, got, w)
		}
	}
	if _, ok := props["Skip"]; ok {
		t.Error(`a json:"-" field is described`)
	}
	req, _ := json.Marshal(s["required"])
	if string(req) != `["name","when","id","raw","children","level"]` {
		t.Errorf("required %s: a pointer and an omitempty field are optional, the rest required", req)
	}
}
