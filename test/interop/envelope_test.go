//go:build interop

package interop

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
	"strings"
)

// envelope is a reply body: {"success": true, "data": ...} or
// {"success": false, "error": {...}}, read without losing any number.
type envelope struct {
	Success bool
	Data    json.RawMessage
	Error   map[string]json.RawMessage
	keys    []string // top-level keys
}

func parseEnvelope(raw []byte) (envelope, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return envelope{}, fmt.Errorf("reply is not a JSON object: %w: %s", err, tail(string(raw), 200))
	}
	var e envelope
	for k := range m {
		e.keys = append(e.keys, k)
	}
	slices.Sort(e.keys)
	if err := json.Unmarshal(m["success"], &e.Success); err != nil {
		return e, fmt.Errorf(`reply has no boolean "success": %s`, tail(string(raw), 200))
	}
	e.Data = m["data"]
	if e.Error == nil && m["error"] != nil {
		if err := json.Unmarshal(m["error"], &e.Error); err != nil {
			return e, fmt.Errorf(`reply's "error" is not an object: %s`, m["error"])
		}
	}
	return e, nil
}

// str returns the error member key as a string ("" when absent or not a string).
func (e envelope) str(key string) string {
	var s string
	_ = json.Unmarshal(e.Error[key], &s)
	return s
}

// errorFields are the members of a failure reply's "error", as the Python
// library sends them, and the JSON kind of each.
var errorFields = []struct{ name, kind string }{
	{"type", "string"}, {"message", "string"}, {"args", "array"}, {"trace", "string"},
}

func jsonKind(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "absent"
	}
	switch raw[0] {
	case '"':
		return "string"
	case '[':
		return "array"
	case '{':
		return "object"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// wantFailure checks that e is a failure whose error has every member the
// Python library sends (type, message, args, trace) with its JSON kind, and,
// when typ is not empty, that its type is typ.
func wantFailure(e envelope, typ string) error {
	if e.Success {
		return fmt.Errorf("reply is a success (data %s), want a failure", tail(string(e.Data), 100))
	}
	var problems []string
	for _, f := range errorFields {
		if k := jsonKind(e.Error[f.name]); k != f.kind {
			problems = append(problems, fmt.Sprintf("error.%s is %s, want %s", f.name, k, f.kind))
		}
	}
	if typ != "" && e.str("type") != typ {
		problems = append(problems, fmt.Sprintf("error.type is %q, want %q (message %q)", e.str("type"), typ, e.str("message")))
	}
	if len(problems) > 0 {
		return fmt.Errorf("failure envelope differs from the Python library's: %s", strings.Join(problems, "; "))
	}
	return nil
}

// wantSuccess checks that e is a success and returns its data.
func wantSuccess(e envelope) (json.RawMessage, error) {
	if !e.Success {
		return nil, fmt.Errorf("reply is a failure: type %q, message %q", e.str("type"), e.str("message"))
	}
	return e.Data, nil
}

// sameJSON reports whether a and b hold the same JSON value; numbers are
// compared by their text, so no precision is lost.
func sameJSON(a, b []byte) bool {
	var x, y any
	da, db := json.NewDecoder(bytes.NewReader(a)), json.NewDecoder(bytes.NewReader(b))
	da.UseNumber()
	db.UseNumber()
	if da.Decode(&x) != nil || db.Decode(&y) != nil {
		return false
	}
	return equalJSON(x, y)
}

func equalJSON(x, y any) bool {
	switch x := x.(type) {
	case map[string]any:
		y, ok := y.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !equalJSON(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := y.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !equalJSON(x[i], y[i]) {
				return false
			}
		}
		return true
	case json.Number:
		y, ok := y.(json.Number)
		return ok && sameNumber(string(x), string(y))
	default:
		return x == y
	}
}

// sameNumber reports whether two JSON numbers have the same exact value
// ("1e30" and "1000000000000000000000000000000" do; float rounding does not).
func sameNumber(a, b string) bool {
	x, okA := new(big.Rat).SetString(a)
	y, okB := new(big.Rat).SetString(b)
	return okA && okB && x.Cmp(y) == 0
}
