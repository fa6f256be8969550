package db

import (
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgtype"
)

// Array is a PostgreSQL array column (varchar[], int[], uuid[], ...) as a Go
// slice. NULL scans to a nil Array and a nil Array is written as NULL; an
// empty non-nil Array is the empty array '{}'. database/sql cannot scan
// arrays into plain slices (before Go 1.27), hence this type; writing needs
// no help: the pgx driver encodes the slice itself.
type Array[T any] []T

// typeMaps holds pgtype.Maps for decoding arrays; a Map caches scan plans and
// is not safe for concurrent use, so each Scan borrows one.
var typeMaps = sync.Pool{New: func() any { return pgtype.NewMap() }}

// Scan implements sql.Scanner. The driver hands arrays over in their text
// form ({a,"b c",NULL}); pgx's codecs decode it into []T.
func (a *Array[T]) Scan(src any) error {
	if src == nil {
		*a = nil
		return nil
	}
	var text []byte
	switch s := src.(type) {
	case string:
		text = []byte(s)
	case []byte:
		text = s
	default:
		return fmt.Errorf("scan array: got %T from the driver, want its text form", src)
	}
	m := typeMaps.Get().(*pgtype.Map)
	defer typeMaps.Put(m)
	var out []T
	t, ok := m.TypeForValue(&out)
	if !ok {
		return fmt.Errorf("scan array into %T: no PostgreSQL array type for its element type", out)
	}
	if err := m.Scan(t.OID, pgtype.TextFormatCode, text, &out); err != nil {
		return fmt.Errorf("scan array %q into %T: %w", text, out, err)
	}
	if out == nil {
		out = []T{} // '{}' is an empty array, not NULL
	}
	*a = out
	return nil
}

// JSON is a json or jsonb column decoded into a Go value of type T: the
// value is stored as T marshals with encoding/json and read back with
// json.Unmarshal. NULL scans to the zero JSON (Valid false) and a JSON with
// Valid false is written as NULL. For JSON passed through untouched, use
// json.RawMessage (nil is NULL) instead.
type JSON[T any] struct {
	V     T
	Valid bool
}

// NewJSON returns a valid JSON holding v.
func NewJSON[T any](v T) JSON[T] { return JSON[T]{V: v, Valid: true} }

// Scan implements sql.Scanner.
func (j *JSON[T]) Scan(src any) error {
	var b []byte
	switch s := src.(type) {
	case nil:
		*j = JSON[T]{}
		return nil
	case string:
		b = []byte(s)
	case []byte:
		b = s
	default:
		return fmt.Errorf("scan json: got %T from the driver, want text or bytes", src)
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("scan json into %T: %w", v, err)
	}
	*j = JSON[T]{V: v, Valid: true}
	return nil
}

// Value implements driver.Valuer: the JSON text, or nil for NULL.
func (j JSON[T]) Value() (driver.Value, error) {
	if !j.Valid {
		return nil, nil
	}
	b, err := json.Marshal(j.V)
	if err != nil {
		return nil, fmt.Errorf("encode %T as json: %w", j.V, err)
	}
	return b, nil
}

// MarshalJSON writes V, or null when not Valid.
func (j JSON[T]) MarshalJSON() ([]byte, error) {
	if !j.Valid {
		return []byte("null"), nil
	}
	return json.Marshal(j.V)
}

// UnmarshalJSON reads V; null makes j not Valid.
func (j *JSON[T]) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*j = JSON[T]{}
		return nil
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*j = JSON[T]{V: v, Valid: true}
	return nil
}
