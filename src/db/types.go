package db

import (
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/shopspring/decimal"
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
	text, ok, err := driverText(src, "array")
	if !ok {
		*a = nil
		return err
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
// json.Unmarshal. NULL, and a JSON null, scan to the zero JSON (Valid
// false), and a JSON with Valid false is written as NULL. For JSON passed
// through untouched, use json.RawMessage (nil is NULL) instead.
type JSON[T any] struct {
	V     T
	Valid bool
}

// NewJSON returns a valid JSON holding v.
func NewJSON[T any](v T) JSON[T] { return JSON[T]{V: v, Valid: true} }

// Scan implements sql.Scanner.
func (j *JSON[T]) Scan(src any) error {
	b, ok, err := driverText(src, "json")
	if !ok {
		*j = JSON[T]{}
		return err
	}
	if err := j.UnmarshalJSON(b); err != nil {
		return fmt.Errorf("scan json into %T: %w", j.V, err)
	}
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

// Decimal is a PostgreSQL numeric column as an exact decimal: no float
// rounding on the way in or out. It is shopspring's decimal.Decimal
// (github.com/shopspring/decimal), so its constructors (decimal.NewFromString,
// decimal.RequireFromString, decimal.NewFromInt) and arithmetic (Add, Mul,
// Round, Cmp, ...) apply. Its contract here:
//
//   - In JSON it is a string of its exact value: "12.5", "-0.001",
//     "1000000000000000000000000000000" (trailing zeros after the point are
//     dropped: numeric(11, 2)'s 12.50 comes out "12.5"; StringFixed(2) keeps
//     them). Do not set decimal.MarshalJSONWithoutQuotes: numbers read into a
//     float64 by the caller would lose digits.
//   - From JSON it takes a string or a number, reading the number's text
//     exactly: a Python service that encodes Decimal as float (as
//     cheese-drawer's transaction-service does) is read without further loss.
//   - A nullable column is a *Decimal: NULL and JSON null are nil. Scanning
//     NULL into a Decimal is an error; so is numeric's NaN or Infinity.
type Decimal = decimal.Decimal

// Date is a PostgreSQL date: a day, without time of day or zone. Its zero
// value is the zero Date (Year 0), which a `,default` field leaves to the
// column's default.
//
// In JSON (and as text) it is "YYYY-MM-DD", the form Python's
// date.isoformat writes and date.fromisoformat reads; years run from 1 to
// 9999, as Python's do. A nullable column is a *Date: NULL and JSON null
// are nil. PostgreSQL's 'infinity' and '-infinity' are refused when scanned.
type Date struct {
	Year  int
	Month time.Month
	Day   int
}

// DateOf returns the date of t in t's location.
func DateOf(t time.Time) Date {
	y, m, d := t.Date()
	return Date{y, m, d}
}

// ParseDate parses "YYYY-MM-DD". It refuses other forms and days that do
// not exist (2023-02-29).
func ParseDate(s string) (Date, error) {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil || len(s) != len(time.DateOnly) {
		return Date{}, fmt.Errorf("date %q: want YYYY-MM-DD, a day that exists", s)
	}
	return DateOf(t), nil
}

// String returns "YYYY-MM-DD".
func (d Date) String() string {
	return fmt.Sprintf("%04d-%02d-%02d", d.Year, int(d.Month), d.Day)
}

// IsZero reports whether d is the zero Date.
func (d Date) IsZero() bool { return d == Date{} }

// In returns midnight of d in loc.
func (d Date) In(loc *time.Location) time.Time {
	return time.Date(d.Year, d.Month, d.Day, 0, 0, 0, 0, loc)
}

// AddDays returns d plus n days (n may be negative).
func (d Date) AddDays(n int) Date { return DateOf(d.In(time.UTC).AddDate(0, 0, n)) }

// Compare returns -1, 0 or +1 as d is before, equal to or after e.
func (d Date) Compare(e Date) int { return d.In(time.UTC).Compare(e.In(time.UTC)) }

// MarshalText writes "YYYY-MM-DD" (and through it, JSON writes the
// string); a year outside 1..9999 is an error.
func (d Date) MarshalText() ([]byte, error) {
	if d.Year < 1 || d.Year > 9999 {
		return nil, fmt.Errorf("date %s: year outside 1..9999 cannot be written as YYYY-MM-DD", d)
	}
	return []byte(d.String()), nil
}

// UnmarshalText reads "YYYY-MM-DD" (and through it, JSON reads the string;
// JSON null leaves d unchanged).
func (d *Date) UnmarshalText(b []byte) error {
	v, err := ParseDate(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// Scan implements sql.Scanner for date columns.
func (d *Date) Scan(src any) error {
	return scanTime(src, "db.Date", "date", "it has no calendar day", func(t time.Time) { *d = DateOf(t) }, d.UnmarshalText)
}

// scanTime is the Scan of Date and Timestamp: the driver gives a
// time.Time (set), or PostgreSQL's text form (text), which may be one of
// the infinities that no Go value holds (infinite says why).
func scanTime(src any, goType, column, infinite string, set func(time.Time), text func([]byte) error) error {
	var b []byte
	switch s := src.(type) {
	case time.Time:
		set(s)
		return nil
	case string:
		b = []byte(s)
	case []byte:
		b = s
	case nil:
		return fmt.Errorf("scan NULL into %s: make the field a *%s for a nullable column", goType, goType)
	default:
		return fmt.Errorf("scan %T into %s: want a %s column", src, goType, column)
	}
	if s := string(b); s == "infinity" || s == "-infinity" {
		return fmt.Errorf("scan %s %s into %s: %s", column, s, goType, infinite)
	}
	return text(b)
}

// Value implements driver.Valuer: midnight UTC of d, which the driver
// writes as the date d.
func (d Date) Value() (driver.Value, error) {
	if d.Year < 1 || d.Year > 9999 {
		return nil, fmt.Errorf("date %s: year outside 1..9999", d)
	}
	return d.In(time.UTC), nil
}

// Timestamp is a PostgreSQL timestamptz: an instant, to the microsecond as
// PostgreSQL keeps it. It embeds time.Time, whose methods apply; its zero
// value (IsZero) is what a `,default` field leaves to the column's default.
//
// In JSON (and as text) it is RFC 3339 in UTC with exactly six fractional
// digits, "2024-02-29T23:59:59.123456+00:00": what Python's
// datetime.isoformat writes for an aware UTC datetime with microseconds, and
// what datetime.fromisoformat reads on every Python since 3.7 (3.9's
// accepts no "Z" and no other number of digits). Finer digits are dropped,
// when written to the database as well, so a value read back equals the
// one written. From JSON it takes any RFC 3339 time ("Z" or an offset, any
// fraction); a time without an offset is refused: its zone is unknown.
//
// A nullable column is a *Timestamp: NULL and JSON null are nil.
// PostgreSQL's 'infinity' and '-infinity' are refused when scanned.
type Timestamp struct{ time.Time }

// timestampLayout is RFC 3339 with six fractional digits and a numeric offset.
const timestampLayout = "2006-01-02T15:04:05.000000-07:00"

// NewTimestamp returns t as a Timestamp: in UTC, to the microsecond.
func NewTimestamp(t time.Time) Timestamp {
	return Timestamp{t.UTC().Truncate(time.Microsecond)}
}

// String returns the JSON form without quotes.
func (ts Timestamp) String() string {
	return ts.UTC().Truncate(time.Microsecond).Format(timestampLayout)
}

// MarshalText writes the RFC 3339 form (and through it, JSON the string).
func (ts Timestamp) MarshalText() ([]byte, error) {
	if y := ts.UTC().Year(); y < 1 || y > 9999 {
		return nil, fmt.Errorf("timestamp %s: year outside 1..9999", ts.Time)
	}
	return []byte(ts.String()), nil
}

// MarshalJSON writes the RFC 3339 form as a JSON string. (It is declared
// so that time.Time's own MarshalJSON, promoted by embedding, is not used.)
func (ts Timestamp) MarshalJSON() ([]byte, error) {
	b, err := ts.MarshalText()
	if err != nil {
		return nil, err
	}
	return append(append([]byte{'"'}, b...), '"'), nil
}

// UnmarshalText reads an RFC 3339 time with an offset.
func (ts *Timestamp) UnmarshalText(b []byte) error {
	t, err := time.Parse(time.RFC3339Nano, string(b))
	if err != nil {
		return fmt.Errorf("timestamp %q: want RFC 3339 with an offset, e.g. 2024-02-29T23:59:59.123456+00:00", b)
	}
	*ts = NewTimestamp(t)
	return nil
}

// UnmarshalJSON reads a JSON string holding an RFC 3339 time; null leaves
// ts unchanged.
func (ts *Timestamp) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("timestamp %s: want a JSON string in RFC 3339", b)
	}
	return ts.UnmarshalText([]byte(s))
}

// Scan implements sql.Scanner for timestamptz columns.
func (ts *Timestamp) Scan(src any) error {
	return scanTime(src, "db.Timestamp", "timestamptz", "it is no instant", func(t time.Time) { *ts = NewTimestamp(t) }, ts.UnmarshalText)
}

// Value implements driver.Valuer: the instant in UTC, to the microsecond.
func (ts Timestamp) Value() (driver.Value, error) {
	return ts.UTC().Truncate(time.Microsecond), nil
}

// driverText is what the driver scanned from a column read in its text
// form (what names the column's type in the error); ok is false for NULL
// and for a value of another type, which is an error.
func driverText(src any, what string) (text []byte, ok bool, err error) {
	switch s := src.(type) {
	case nil:
		return nil, false, nil
	case string:
		return []byte(s), true, nil
	case []byte:
		return s, true, nil
	}
	return nil, false, fmt.Errorf("scan %s: got %T from the driver, want its text form", what, src)
}
