package worker

import (
	"encoding"
	"encoding/json"
	"reflect"
	"strings"
	"time"

	"example.com/service/src/internal/fields"
)

// jsonField is a struct field as encoding/json sees it.
type jsonField struct {
	name      string
	typ       reflect.Type
	omitempty bool
}

// jsonFields lists the fields encoding/json encodes and decodes for struct
// type t: exported fields by their json tag name (or Go name), "-" left
// out, embedded structs' fields promoted (through pointers too), the first
// of two fields with one name kept.
func jsonFields(t reflect.Type) []jsonField {
	var out []jsonField
	seen := map[string]bool{}
	// The only error is embedding deeper than fields.MaxDepth: the fields
	// found above it stand.
	_ = fields.Walk(t, "json", true, func(f fields.Field) error {
		name := f.TagName
		if name == "" {
			name = f.Name
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, jsonField{name: name, typ: f.Type, omitempty: f.Has("omitempty") || f.Has("omitzero")})
		}
		return nil
	})
	return out
}

var (
	rawMessageType    = reflect.TypeFor[json.RawMessage]()
	timeType          = reflect.TypeFor[time.Time]()
	jsonMarshalerType = reflect.TypeFor[json.Marshaler]()
	textMarshalerType = reflect.TypeFor[encoding.TextMarshaler]()
)

// schemaOf returns the JSON Schema (draft 7, as AsyncAPI 3 embeds it) of the
// JSON encoding/json makes of type t. Named struct types become definitions
// in defs, referenced by name, so recursive types terminate. A type with its
// own MarshalJSON is described as any value, a TextMarshaler as a string.
func schemaOf(t reflect.Type, defs map[string]any) map[string]any {
	if t == nil {
		return map[string]any{}
	}
	switch {
	case t == rawMessageType:
		return map[string]any{} // any JSON
	case t == timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case t.Implements(jsonMarshalerType) || reflect.PointerTo(t).Implements(jsonMarshalerType):
		return map[string]any{}
	case t.Implements(textMarshalerType) || reflect.PointerTo(t).Implements(textMarshalerType):
		s := map[string]any{"type": "string"}
		if t.PkgPath() == "github.com/google/uuid" && t.Name() == "UUID" {
			s["format"] = "uuid"
		}
		return s
	}
	switch t.Kind() {
	case reflect.Pointer:
		inner := schemaOf(t.Elem(), defs)
		return map[string]any{"oneOf": []any{inner, map[string]any{"type": "null"}}}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return map[string]any{"type": "string", "contentEncoding": "base64"}
		}
		return map[string]any{"type": []any{"array", "null"}, "items": schemaOf(t.Elem(), defs)}
	case reflect.Map:
		return map[string]any{"type": []any{"object", "null"}, "additionalProperties": schemaOf(t.Elem(), defs)}
	case reflect.Struct:
		name := t.Name()
		if name != "" {
			key := defName(t)
			if _, ok := defs[key]; !ok {
				defs[key] = nil // mark: being built (recursion)
				defs[key] = structSchema(t, defs)
			}
			return map[string]any{"$ref": "#/components/schemas/" + key}
		}
		return structSchema(t, defs)
	}
	return map[string]any{} // interface{}: any JSON
}

func structSchema(t reflect.Type, defs map[string]any) map[string]any {
	props := map[string]any{}
	var required []any
	for _, f := range jsonFields(t) {
		props[f.name] = schemaOf(f.typ, defs)
		if !f.omitempty && f.typ.Kind() != reflect.Pointer {
			required = append(required, f.name)
		}
	}
	s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
	if len(required) > 0 {
		s["required"] = required
	}
	return s
}

// defName names a struct type in components/schemas: its package's last
// element and its name, e.g. models.ExampleItem (generic instances
// flattened to letters, digits and dots).
func defName(t reflect.Type) string {
	pkg := t.PkgPath()
	if i := strings.LastIndex(pkg, "/"); i >= 0 {
		pkg = pkg[i+1:]
	}
	name := t.Name()
	if pkg != "" {
		name = pkg + "." + name
	}
	return key(name)
}

// key makes s a key of an AsyncAPI map: letters, digits, dots, dashes and
// underscores stay, anything else becomes an underscore.
func key(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			return r
		}
		return '_'
	}, s)
}
