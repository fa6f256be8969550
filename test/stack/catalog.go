package stack

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"example.com/service/src/worker"
)

// Routes lists the service's routes as `service routes --json` prints them,
// so tests that must cover every route cover each new one too.
func (b *Binaries) Routes(t testing.TB) []worker.RouteJSON {
	t.Helper()
	out, err := exec.Command(b.Service, "routes", "--json").Output()
	if err != nil {
		t.Fatalf("%s routes --json: %v", b.Service, err)
	}
	var routes []worker.RouteJSON
	if err := json.Unmarshal(out, &routes); err != nil {
		t.Fatalf("%s routes --json printed what is not a route list: %v\n%s", b.Service, err, out)
	}
	if len(routes) == 0 {
		t.Fatalf("%s routes --json lists no route", b.Service)
	}
	return routes
}

// Names returns the names of the routes of kind (worker.KindRPC or
// worker.KindQueue).
func Names(routes []worker.RouteJSON, kind string) []string {
	var out []string
	for _, r := range routes {
		if r.Kind == kind {
			out = append(out, r.Name)
		}
	}
	return out
}

// WrongShape returns request data of a JSON type r's request schema does
// not allow (an array where it wants an object, a number where it wants a
// string, ...), or "" when it takes any JSON.
func WrongShape(r worker.RouteJSON) string {
	types := schemaTypes(r.RequestSchema, r.RequestSchema)
	switch {
	case len(types) == 0:
		return ""
	case types["object"]:
		return `[1, 2]`
	case types["array"]:
		return `"not an array"`
	case types["string"]:
		return `42`
	case types["integer"], types["number"], types["boolean"]:
		return `"not a number"`
	}
	return ""
}

// schemaTypes returns the JSON types schema allows besides null; empty for
// a schema that allows anything. root holds its definitions.
func schemaTypes(schema, root map[string]any) map[string]bool {
	if ref, ok := schema["$ref"].(string); ok {
		defs, _ := root["definitions"].(map[string]any)
		def, _ := defs[strings.TrimPrefix(ref, "#/definitions/")].(map[string]any)
		return schemaTypes(def, root)
	}
	out := map[string]bool{}
	if alts, ok := schema["oneOf"].([]any); ok {
		for _, a := range alts {
			m, _ := a.(map[string]any)
			inner := schemaTypes(m, root)
			if len(inner) == 0 && m["type"] != "null" {
				return nil // one alternative takes anything
			}
			for k := range inner {
				out[k] = true
			}
		}
		return out
	}
	switch t := schema["type"].(type) {
	case string:
		out[t] = true
	case []any:
		for _, e := range t {
			if s, ok := e.(string); ok {
				out[s] = true
			}
		}
	}
	delete(out, "null")
	return out
}
