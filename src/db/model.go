package db

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"example.com/service/src/internal/fields"
)

// Model reads and writes rows of one table as values of T, a struct whose
// fields name their columns with db tags:
//
//	type Item struct {
//		ID      uuid.UUID       `db:"id"`
//		Name    string          `db:"name"`
//		Note    *string         `db:"note"`              // nullable
//		Tags    db.Array[string] `db:"tags"`             // varchar[]
//		Created time.Time       `db:"created,default"`   // zero: database default
//	}
//
// A field without a db tag is the column named by its lowercased name (as in
// sqlx); `db:"-"` skips a field; embedded structs contribute their fields.
// The key is the field tagged `,key` (`db:"_id,key"`, the Python seed's key
// column), or else the column "id". A zero key, and a zero field tagged
// `,default`, is left out of INSERT so that the column's database default
// applies.
//
// Dates, money and instants: a date column is a [Date], numeric a [Decimal],
// timestamptz a [Timestamp] (or time.Time); each travels in JSON as
// "YYYY-MM-DD", a decimal string and RFC 3339, and a pointer to it holds a
// nullable column.
//
// All SQL is built when the model is made. A Model is safe for concurrent
// use; [Model.In] gives the same operations inside a transaction. Extend a
// model by embedding it and adding queries built with [Model.Query] and
// [Model.Columns] (see models.ExampleItems).
type Model[T any] struct {
	t   *table
	run runner
}

// table is everything about T's table that is worked out once.
type table struct {
	name       string   // as given
	quoted     string   // "schema"."name"
	cols       []column // in struct order
	byName     map[string]int
	key        int    // index into cols of the key column
	tagged     int    // fields tagged ,key
	colList    string // "a", "b", ...
	selectByID string
	deleteByID string
	optional   []int    // cols left out of INSERT when zero
	inserts    sync.Map // uint64 mask of omitted optional cols -> insert SQL
	updates    sync.Map // sorted column names joined by NUL -> update SQL
	nUpdates   atomic.Int64
	names      string // valid column names, for error messages
}

type column struct {
	name    string
	quoted  string
	index   []int
	typ     reflect.Type
	dbDflt  bool // tagged ,default
	isKey   bool
	mutable bool
	// asBytes: a named []byte type such as json.RawMessage, scanned through
	// *[]byte, which database/sql fills with nil for NULL.
	asBytes bool
}

// NewModel returns the model of table (optionally schema-qualified,
// "schema.table") for rows of type T, running on c. It fails when T is not a
// struct, has no "id" column, or names a column twice.
func NewModel[T any](c *Client, table string) (*Model[T], error) {
	t, err := newTable(reflect.TypeFor[T](), table)
	if err != nil {
		return nil, err
	}
	return &Model[T]{t: t, run: c.db}, nil
}

// MustModel is NewModel that panics on error: for models declared in code,
// whose struct tags are fixed at compile time and covered by tests.
func MustModel[T any](c *Client, table string) *Model[T] {
	m, err := NewModel[T](c, table)
	if err != nil {
		panic(err)
	}
	return m
}

func newTable(rt reflect.Type, name string) (*table, error) {
	if rt.Kind() != reflect.Struct {
		return nil, fmt.Errorf("model of table %q: row type %s is not a struct", name, rt)
	}
	if name == "" {
		return nil, fmt.Errorf("model of %s: empty table name", rt)
	}
	t := &table{name: name, byName: map[string]int{}, key: -1}
	parts := strings.Split(name, ".")
	for i, p := range parts {
		if p == "" {
			return nil, fmt.Errorf("model of %s: bad table name %q", rt, name)
		}
		parts[i] = quoteIdent(p)
	}
	t.quoted = strings.Join(parts, ".")
	if err := t.addFields(rt); err != nil {
		return nil, fmt.Errorf("model of table %q with row type %s: %w", name, rt, err)
	}
	if t.key < 0 {
		return nil, fmt.Errorf("model of table %q: row type %s has no key: tag a field `,key` or name a column \"id\"", name, rt)
	}
	if t.tagged > 1 {
		return nil, fmt.Errorf("model of table %q: row type %s tags %d fields `,key`; one column is the key", name, rt, t.tagged)
	}
	if len(t.cols) > 64 {
		return nil, fmt.Errorf("model of table %q: %d columns, at most 64 are supported", name, len(t.cols))
	}
	quoted := make([]string, len(t.cols))
	names := make([]string, len(t.cols))
	for i, c := range t.cols {
		quoted[i], names[i] = c.quoted, c.name
		if c.isKey || c.dbDflt {
			t.optional = append(t.optional, i)
		}
	}
	slices.Sort(names)
	t.names = strings.Join(names, ", ")
	t.colList = strings.Join(quoted, ", ")
	key := t.cols[t.key].quoted
	t.selectByID = "SELECT " + t.colList + " FROM " + t.quoted + " WHERE " + key + " = $1"
	t.deleteByID = "DELETE FROM " + t.quoted + " WHERE " + key + " = $1 RETURNING " + t.colList
	return t, nil
}

func (t *table) addFields(rt reflect.Type) error {
	return fields.Walk(rt, "db", false, func(f fields.Field) error {
		if f.Anonymous && f.Type.Kind() == reflect.Pointer && f.Type.Elem().Kind() == reflect.Struct {
			return fmt.Errorf("embedded pointer %s: embed the struct by value", f.Name)
		}
		name := f.TagName
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if _, dup := t.byName[name]; dup {
			return fmt.Errorf("column %q named by two fields", name)
		}
		c := column{name: name, quoted: quoteIdent(name), index: f.Path, typ: f.Type, mutable: true}
		c.asBytes = f.Type != bytesType && f.Type.ConvertibleTo(bytesType) && f.Type.Kind() == reflect.Slice &&
			!reflect.PointerTo(f.Type).Implements(scannerType)
		keyTag := false
		for o := range strings.SplitSeq(f.TagOpts, ",") {
			switch o {
			case "":
			case "default":
				c.dbDflt = true
			case "key":
				keyTag = true
			default:
				return fmt.Errorf("field %s: unknown db tag option %q (known: default, key)", f.Name, o)
			}
		}
		switch {
		case keyTag:
			t.tagged++
			if t.key >= 0 {
				t.cols[t.key].isKey, t.cols[t.key].mutable = false, true // "id" is an ordinary column then
			}
			c.isKey, c.mutable = true, false
			t.key = len(t.cols)
		case name == "id" && t.tagged == 0:
			c.isKey, c.mutable = true, false
			t.key = len(t.cols)
		}
		t.byName[name] = len(t.cols)
		t.cols = append(t.cols, c)
		return nil
	})
}

var (
	bytesType    = reflect.TypeFor[[]byte]()
	bytesPtrType = reflect.TypeFor[*[]byte]()
	scannerType  = reflect.TypeFor[sql.Scanner]()
)

// quoteIdent quotes a PostgreSQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// In returns the model running on tx instead of the pool: the same
// operations, inside the transaction.
func (m *Model[T]) In(tx *Tx) *Model[T] {
	return &Model[T]{t: m.t, run: tx.tx}
}

// Table returns the table's name as given to NewModel.
func (m *Model[T]) Table() string { return m.t.name }

// Columns returns the model's quoted column list ("id", "name", ...) in the
// order [Model.Query] and [Model.QueryOne] scan them, to build SELECT or
// RETURNING clauses of a model's own queries.
func (m *Model[T]) Columns() string { return m.t.colList }

// QuotedTable returns the table's quoted name, for a model's own queries.
func (m *Model[T]) QuotedTable() string { return m.t.quoted }

// Create inserts row and returns it as stored, with the values the database
// filled in (the key when row's is zero, defaults of zero `,default` fields).
// A unique violation is a *ConflictError (ErrConflict).
func (m *Model[T]) Create(ctx context.Context, row T) (T, error) {
	v := reflect.ValueOf(&row).Elem()
	t := m.t
	var mask uint64
	for bit, ci := range t.optional {
		if v.FieldByIndex(t.cols[ci].index).IsZero() {
			mask |= 1 << bit
		}
	}
	query := t.insertSQL(mask)
	args := make([]any, 0, len(t.cols))
	for i, c := range t.cols {
		if t.omitted(mask, i) {
			continue
		}
		args = append(args, v.FieldByIndex(c.index).Interface())
	}
	var id any // nil when the database picks the key
	if kv := v.FieldByIndex(t.cols[t.key].index); !kv.IsZero() {
		id = kv.Interface()
	}
	out, err := m.one(ctx, query, args...)
	if err != nil {
		return out, fmt.Errorf("create in %s: %w", t.name, classify(err, t.name, id))
	}
	return out, nil
}

// omitted reports whether column i is left out of the INSERT for mask.
func (t *table) omitted(mask uint64, i int) bool {
	for bit, ci := range t.optional {
		if ci == i {
			return mask&(1<<bit) != 0
		}
	}
	return false
}

// insertSQL returns the INSERT for the given omitted optional columns,
// building it the first time that combination is seen.
func (t *table) insertSQL(mask uint64) string {
	if q, ok := t.inserts.Load(mask); ok {
		return q.(string)
	}
	var cols, params []string
	for i, c := range t.cols {
		if t.omitted(mask, i) {
			continue
		}
		cols = append(cols, c.quoted)
		params = append(params, "$"+strconv.Itoa(len(params)+1))
	}
	var q string
	if len(cols) == 0 {
		q = "INSERT INTO " + t.quoted + " DEFAULT VALUES RETURNING " + t.colList
	} else {
		q = "INSERT INTO " + t.quoted + " (" + strings.Join(cols, ", ") + ") VALUES (" +
			strings.Join(params, ", ") + ") RETURNING " + t.colList
	}
	t.inserts.Store(mask, q)
	return q
}

// Read returns the row whose key is id, or a *NotFoundError (ErrNotFound).
func (m *Model[T]) Read(ctx context.Context, id any) (T, error) {
	return m.byKey(ctx, "read from", m.t.selectByID, id)
}

// byKey runs query, whose one parameter is the key id, for one row.
func (m *Model[T]) byKey(ctx context.Context, verb, query string, id any) (T, error) {
	out, err := m.one(ctx, query, id)
	if err != nil {
		return out, fmt.Errorf("%s %s: %w", verb, m.t.name, classify(err, m.t.name, id))
	}
	return out, nil
}

// Update sets the columns named in changes (column name -> new value) on the
// row whose key is id, and returns the row as stored. Changes naming an
// unknown column or the key, or no changes at all, are refused with an
// *InvalidError (ErrInvalid) before any SQL runs. A missing row is a
// *NotFoundError, a unique violation a *ConflictError.
func (m *Model[T]) Update(ctx context.Context, id any, changes map[string]any) (T, error) {
	var zero T
	t := m.t
	if len(changes) == 0 {
		return zero, fmt.Errorf("update %s id %v: %w", t.name, id,
			&InvalidError{Table: t.name, Reason: "no changes given; name at least one of the columns " + t.names})
	}
	names := slices.Sorted(maps.Keys(changes)) // one statement text per set of columns
	for _, name := range names {
		ci, ok := t.byName[name]
		if !ok {
			return zero, fmt.Errorf("update %s id %v: %w", t.name, id, &InvalidError{
				Table:  t.name,
				Column: name, Reason: "no such column; the columns are " + t.names,
			})
		}
		if !t.cols[ci].mutable {
			return zero, fmt.Errorf("update %s id %v: %w", t.name, id, &InvalidError{
				Table:  t.name,
				Column: name, Reason: "the key cannot be changed",
			})
		}
	}
	query := t.updateSQL(names)
	args := make([]any, 0, len(names)+1)
	for _, name := range names {
		args = append(args, changes[name])
	}
	args = append(args, id)
	out, err := m.one(ctx, query, args...)
	if err != nil {
		return out, fmt.Errorf("update %s: %w", t.name, classify(err, t.name, id))
	}
	return out, nil
}

// Changes decodes changes that arrived as JSON (column name -> JSON value)
// into the Go types of T's fields, ready for [Model.Update]: a smallint
// column takes only a whole number that fits, a varchar column only a JSON
// string, a json.RawMessage column keeps the JSON value as it is, and null
// sets a nullable column (a pointer, slice or map field) to NULL. An unknown column or a value that does not
// decode is an *InvalidError (ErrInvalid) naming the column, before any SQL
// runs.
func (m *Model[T]) Changes(raw map[string]json.RawMessage) (map[string]any, error) {
	t := m.t
	out := make(map[string]any, len(raw))
	for name, value := range raw {
		ci, ok := t.byName[name]
		if !ok {
			return nil, &InvalidError{Table: t.name, Column: name, Reason: "no such column; the columns are " + t.names}
		}
		typ := t.cols[ci].typ
		if string(bytes.TrimSpace(value)) == "null" {
			switch typ.Kind() {
			case reflect.Pointer, reflect.Slice, reflect.Map, reflect.Interface:
				out[name] = reflect.Zero(typ).Interface() // NULL
				continue
			}
			return nil, &InvalidError{
				Table: t.name, Column: name,
				Reason: fmt.Sprintf("null given, but the column's Go type %s cannot hold NULL", typ),
			}
		}
		v := reflect.New(typ)
		if err := json.Unmarshal(value, v.Interface()); err != nil {
			return nil, &InvalidError{
				Table: t.name, Column: name,
				Reason: fmt.Sprintf("value %s does not fit the column's type (%s): %v", truncate(value, 40), t.cols[ci].typ, err),
			}
		}
		out[name] = v.Elem().Interface()
	}
	return out, nil
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "..."
}

// maxCachedUpdates bounds the cache of UPDATE statements per model; past it
// statements for new column sets are built per call.
const maxCachedUpdates = 256

// updateSQL returns the UPDATE of the (sorted, validated) columns names,
// building it the first time that set of columns is seen.
func (t *table) updateSQL(names []string) string {
	key := strings.Join(names, "\x00")
	if q, ok := t.updates.Load(key); ok {
		return q.(string)
	}
	var b strings.Builder
	b.WriteString("UPDATE " + t.quoted + " SET ")
	for i, name := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(t.cols[t.byName[name]].quoted + " = $" + strconv.Itoa(i+1))
	}
	b.WriteString(" WHERE " + t.cols[t.key].quoted + " = $" + strconv.Itoa(len(names)+1) + " RETURNING " + t.colList)
	q := b.String()
	if t.nUpdates.Add(1) <= maxCachedUpdates {
		t.updates.Store(key, q)
	}
	return q
}

// Delete deletes the row whose key is id and returns it, or a
// *NotFoundError (ErrNotFound) when there was none.
func (m *Model[T]) Delete(ctx context.Context, id any) (T, error) {
	return m.byKey(ctx, "delete from", m.t.deleteByID, id)
}

// Query runs a hand-written query that returns the model's columns in the
// order of [Model.Columns] (e.g. "SELECT "+m.Columns()+" FROM "+
// m.QuotedTable()+" WHERE ...") and returns its rows. It runs where the
// model runs: on the pool, or in the transaction given to In.
func (m *Model[T]) Query(ctx context.Context, query string, args ...any) ([]T, error) {
	rows, err := m.run.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, classify(err, m.t.name, nil)
	}
	defer rows.Close()
	var out []T
	ptrs := make([]any, len(m.t.cols))
	for rows.Next() {
		var row T
		m.t.targets(&row, ptrs)
		if err := rows.Scan(ptrs...); err != nil {
			return nil, fmt.Errorf("scan row of %s: %w", m.t.name, err)
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		return nil, classify(err, m.t.name, nil)
	}
	if out == nil {
		out = []T{}
	}
	return out, nil
}

// QueryOne is Query for a query that returns one row; none is a
// *NotFoundError (ErrNotFound) naming the table.
func (m *Model[T]) QueryOne(ctx context.Context, query string, args ...any) (T, error) {
	out, err := m.one(ctx, query, args...)
	return out, classify(err, m.t.name, nil)
}

// one runs query and scans its single row; errors are left unclassified.
func (m *Model[T]) one(ctx context.Context, query string, args ...any) (T, error) {
	var row T
	ptrs := make([]any, len(m.t.cols))
	m.t.targets(&row, ptrs)
	if err := m.run.QueryRowContext(ctx, query, args...).Scan(ptrs...); err != nil {
		var zero T
		return zero, err
	}
	return row, nil
}

// targets fills ptrs with pointers to row's fields, in column order.
func (t *table) targets(row any, ptrs []any) {
	v := reflect.ValueOf(row).Elem()
	for i, c := range t.cols {
		p := v.FieldByIndex(c.index).Addr()
		if c.asBytes {
			p = p.Convert(bytesPtrType)
		}
		ptrs[i] = p.Interface()
	}
}
