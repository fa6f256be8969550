package db_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"example.com/service/src/db"
)

func TestCRUD(t *testing.T) {
	c, ctx, things := newModel[Thing](t, thingSchema, "thing")

	before := time.Now().Add(-time.Minute)
	created, err := things.Create(ctx, Thing{Name: "a", Note: ptr("first"), Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	if created.ID == uuid.Nil {
		t.Error("create: the database default did not fill the id")
	}
	if created.CreatedAt.Before(before) {
		t.Errorf("create: created_at %v not filled by the database default now()", created.CreatedAt)
	}
	if created.Name != "a" || *created.Note != "first" || created.Count != 3 {
		t.Errorf("create returned %+v", created)
	}
	if n := count(t, c, "thing", "id = $1 AND name = 'a' AND note = 'first' AND count = 3", created.ID); n != 1 {
		t.Fatalf("create: %d matching rows stored, want 1", n)
	}

	// An id given by the caller is kept.
	own := uuid.New()
	b, err := things.Create(ctx, Thing{ID: own, Name: "b"})
	if err != nil || b.ID != own {
		t.Fatalf("create with id %v: got %v, %v", own, b.ID, err)
	}

	read, err := things.Read(ctx, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	if read.ID != created.ID || read.Name != "a" || *read.Note != "first" || !read.CreatedAt.Equal(created.CreatedAt) {
		t.Errorf("read %+v, want %+v", read, created)
	}
	// A string key works too.
	if r, err := things.Read(ctx, created.ID.String()); err != nil || r.ID != created.ID {
		t.Errorf("read by string id: %v, %v", r.ID, err)
	}

	updated, err := things.Update(ctx, created.ID, map[string]any{"note": "changed", "count": 7})
	if err != nil {
		t.Fatal(err)
	}
	if *updated.Note != "changed" || updated.Count != 7 || updated.Name != "a" {
		t.Errorf("update returned %+v", updated)
	}
	if n := count(t, c, "thing", "id = $1 AND name = 'a' AND note = 'changed' AND count = 7", created.ID); n != 1 {
		t.Error("update: the stored row does not hold the changes and the untouched name")
	}
	if n := count(t, c, "thing", "id = $1 AND note IS NULL", own); n != 1 {
		t.Error("update touched another row")
	}
	// Setting NULL through a nil value.
	if u, err := things.Update(ctx, created.ID, map[string]any{"note": nil}); err != nil || u.Note != nil {
		t.Errorf("update note to NULL: %+v, %v", u.Note, err)
	}

	list, err := things.List(ctx, db.ListOptions{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{created.ID.String(), own.String()}
	slices.Sort(ids)
	if len(list) != 2 || list[0].ID.String() != ids[0] || list[1].ID.String() != ids[1] {
		t.Errorf("list(10) = %v, want both rows ordered by id", list)
	}
	if one, err := things.List(ctx, db.ListOptions{Limit: 1}); err != nil || len(one) != 1 {
		t.Errorf("list(1) = %d rows, %v", len(one), err)
	}
	if _, err := things.List(ctx, db.ListOptions{Limit: -1}); !errors.Is(err, db.ErrInvalid) {
		t.Errorf("list(-1): %v, want ErrInvalid", err)
	}

	deleted, err := things.Delete(ctx, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	if deleted.ID != created.ID || deleted.Name != "a" || deleted.Count != 7 {
		t.Errorf("delete returned %+v, want the deleted row", deleted)
	}
	if n := count(t, c, "thing", "id = $1", created.ID); n != 0 {
		t.Error("delete: row still stored")
	}
	if n := count(t, c, "thing", "true"); n != 1 {
		t.Errorf("delete: %d rows left, want 1 (the other row)", n)
	}
}

func TestNotFound(t *testing.T) {
	c, ctx, things := newModel[Thing](t, thingSchema, "thing")
	if _, err := things.Create(ctx, Thing{Name: "present"}); err != nil {
		t.Fatal(err)
	}
	missing := uuid.New()
	ops := map[string]func() error{
		"read":   func() error { _, err := things.Read(ctx, missing); return err },
		"update": func() error { _, err := things.Update(ctx, missing, map[string]any{"name": "x"}); return err },
		"delete": func() error { _, err := things.Delete(ctx, missing); return err },
	}
	for name, op := range ops {
		err := op()
		if !errors.Is(err, db.ErrNotFound) {
			t.Errorf("%s of a missing id: %v, want ErrNotFound", name, err)
			continue
		}
		var nf *db.NotFoundError
		if !errors.As(err, &nf) || nf.Table != "thing" || nf.ID != missing {
			t.Errorf("%s: error %#v does not carry table thing and id %v", name, nf, missing)
		}
		if !strings.Contains(err.Error(), missing.String()) {
			t.Errorf("%s: message %q does not name the id", name, err)
		}
	}
	if n := count(t, c, "thing", "name = 'present'"); n != 1 {
		t.Error("a failed operation changed the other row")
	}
	// Hand-written queries: no row is ErrNotFound and sql.ErrNoRows.
	var s string
	err := c.Get(ctx, &s, `SELECT name FROM thing WHERE id = $1`, missing)
	if !errors.Is(err, db.ErrNotFound) || !errors.Is(err, errNoRows) {
		t.Errorf("Get with no row: %v", err)
	}
}

func TestConflict(t *testing.T) {
	c, ctx, things := newModel[Thing](t, thingSchema, "thing")
	first, err := things.Create(ctx, Thing{Name: "dup", Note: ptr("original")})
	if err != nil {
		t.Fatal(err)
	}

	_, err = things.Create(ctx, Thing{Name: "dup", Note: ptr("second")})
	var ce *db.ConflictError
	if !errors.Is(err, db.ErrConflict) || !errors.As(err, &ce) {
		t.Fatalf("duplicate name: %v, want ErrConflict", err)
	}
	if ce.Table != "thing" || ce.Constraint != "thing_name_key" {
		t.Errorf("conflict carries table %q constraint %q", ce.Table, ce.Constraint)
	}
	if !strings.Contains(err.Error(), "thing_name_key") || !strings.Contains(err.Error(), "(name)=(dup)") {
		t.Errorf("message %q names neither the constraint nor the key", err)
	}

	// Same key: conflict on the primary key, carrying the id.
	_, err = things.Create(ctx, Thing{ID: first.ID, Name: "other"})
	if !errors.As(err, &ce) || ce.Constraint != "thing_pkey" || ce.ID != first.ID {
		t.Errorf("duplicate id: %v (%#v), want conflict on thing_pkey with id", err, ce)
	}

	// An update into a taken name: conflict with the updated row's id.
	second, err := things.Create(ctx, Thing{Name: "free"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = things.Update(ctx, second.ID, map[string]any{"name": "dup"})
	if !errors.As(err, &ce) || ce.ID != second.ID {
		t.Errorf("update into a taken name: %v, want conflict carrying id %v", err, second.ID)
	}
	if n := count(t, c, "thing", "name = 'dup' AND note = 'original'"); n != 1 {
		t.Error("the original row was changed by a refused write")
	}
	if n := count(t, c, "thing", "true"); n != 2 {
		t.Errorf("%d rows stored, want 2", n)
	}
}

func TestInvalidInputFromDatabase(t *testing.T) {
	c, ctx, things := newModel[Thing](t, thingSchema, "thing")
	_, err := things.Create(ctx, Thing{Name: strings.Repeat("x", 256)})
	var ie *db.InvalidError
	if !errors.Is(err, db.ErrInvalid) || !errors.As(err, &ie) {
		t.Fatalf("256 characters into varchar(255): %v, want ErrInvalid", err)
	}
	if !strings.Contains(err.Error(), "too long") {
		t.Errorf("message %q does not say what was wrong", err)
	}
	if n := count(t, c, "thing", "true"); n != 0 {
		t.Error("a refused row was stored")
	}
}

// TestUpdateRefusesUnknownColumns: the keys of an update's changes become
// column names, so they are checked against the model's columns before any
// SQL is built; an injection attempt through a key is refused and changes
// nothing.
func TestUpdateRefusesUnknownColumns(t *testing.T) {
	c, ctx, things := newModel[Thing](t, thingSchema, "thing")
	row, err := things.Create(ctx, Thing{Name: "victim", Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	attacks := []string{
		`name" = 'pwned', "count`,
		`count = 99; DROP TABLE thing; --`,
		`name = 'x' WHERE true; --`,
		`Name`, // case matters: the column is name
		``,
	}
	for _, key := range attacks {
		_, err := things.Update(ctx, row.ID, map[string]any{key: "x", "count": 2})
		var ie *db.InvalidError
		if !errors.Is(err, db.ErrInvalid) || !errors.As(err, &ie) {
			t.Errorf("change key %q: %v, want ErrInvalid", key, err)
			continue
		}
		if ie.Column != key || !strings.Contains(err.Error(), "attrs, count, created_at, id, name, note, raw, seen_at, tags") {
			t.Errorf("change key %q: message %q does not name the key and list the columns", key, err)
		}
	}
	if _, err := things.Update(ctx, row.ID, map[string]any{"id": uuid.New()}); !errors.Is(err, db.ErrInvalid) {
		t.Errorf("changing the key: %v, want ErrInvalid", err)
	}
	if _, err := things.Update(ctx, row.ID, map[string]any{}); !errors.Is(err, db.ErrInvalid) {
		t.Errorf("no changes: %v, want ErrInvalid", err)
	}
	if n := count(t, c, "thing", "id = $1 AND name = 'victim' AND count = 1", row.ID); n != 1 {
		t.Error("the row changed although every update was refused")
	}

	// Refused before any SQL: on a closed client a query would fail with
	// "database is closed", yet the refusal comes back.
	closed := newClient(t, "")
	m := db.MustModel[Thing](closed, "thing")
	_ = closed.Close()
	_, err = m.Update(ctx, row.ID, map[string]any{"nope": 1})
	if !errors.Is(err, db.ErrInvalid) || strings.Contains(err.Error(), "closed") {
		t.Errorf("update with an unknown column on a closed client: %v, want ErrInvalid before any SQL", err)
	}
}

// Reserved words as table and column names work because identifiers are
// quoted; a value holding SQL is stored as text.
func TestQuotedIdentifiersAndValues(t *testing.T) {
	c := newClient(t, `CREATE TABLE "order" (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "select" text, "group" int)`)
	ctx := context.Background()
	type Order struct {
		ID     uuid.UUID `db:"id"`
		Select string    `db:"select"`
		Group  *int32    `db:"group"`
	}
	orders := db.MustModel[Order](c, "order")
	evil := `'); DROP TABLE "order"; --`
	o, err := orders.Create(ctx, Order{Select: evil})
	if err != nil {
		t.Fatal(err)
	}
	o, err = orders.Update(ctx, o.ID, map[string]any{"group": 5, "select": evil + evil})
	if err != nil {
		t.Fatal(err)
	}
	if o.Select != evil+evil || *o.Group != 5 {
		t.Errorf("update returned %+v", o)
	}
	if n := count(t, c, `"order"`, `"select" = $1`, evil+evil); n != 1 {
		t.Error("the value was not stored verbatim")
	}
}

func TestRoundTrips(t *testing.T) {
	c, ctx, things := newModel[Thing](t, thingSchema, "thing")

	tags := db.Array[string]{"plain", "with space", `quote"d`, "comma,and{brace}", `back\slash`, "", "NULL", "ünïcode ✓"}
	attrs := Attrs{Color: "red", Sizes: []int{1, 2, 3}, Extra: map[string]any{"nested": map[string]any{"ok": true}}}
	seen := time.Date(2024, 2, 29, 23, 59, 58, 123456000, time.FixedZone("UTC+5", 5*3600))
	in := Thing{Name: "full", Tags: tags, Attrs: db.NewJSON(attrs), Raw: []byte(`{"k": [1, "two", null]}`), SeenAt: &seen}
	created, err := things.Create(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	got, err := things.Read(ctx, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Tags, tags) {
		t.Errorf("varchar[]: got %q, want %q", got.Tags, tags)
	}
	if !got.Attrs.Valid || got.Attrs.V.Color != "red" || !slices.Equal(got.Attrs.V.Sizes, []int{1, 2, 3}) ||
		fmt.Sprint(got.Attrs.V.Extra) != "map[nested:map[ok:true]]" {
		t.Errorf("jsonb typed: got %+v", got.Attrs)
	}
	if string(got.Raw) != `{"k": [1, "two", null]}` {
		t.Errorf("jsonb raw: got %s", got.Raw)
	}
	if got.SeenAt == nil || !got.SeenAt.Equal(seen) {
		t.Errorf("timestamptz: got %v, want %v", got.SeenAt, seen)
	}
	// What the server stored, read by SQL: not just our own decoding.
	if n := count(t, c, "thing", `id = $1 AND tags[3] = 'quote"d' AND cardinality(tags) = 8 AND attrs->>'color' = 'red'
		AND attrs #>> '{extra,nested,ok}' = 'true' AND raw->'k'->>1 = 'two' AND seen_at = '2024-02-29 18:59:58.123456+00'`,
		created.ID); n != 1 {
		t.Error("the stored values differ from what was written")
	}

	// NULL and empty: nil Array and invalid JSON are NULL, an empty Array is '{}'.
	empty, err := things.Create(ctx, Thing{Name: "empty", Tags: db.Array[string]{}})
	if err != nil {
		t.Fatal(err)
	}
	nulls, err := things.Create(ctx, Thing{Name: "nulls"})
	if err != nil {
		t.Fatal(err)
	}
	if n := count(t, c, "thing", "id = $1 AND tags = '{}' AND attrs IS NULL AND raw IS NULL AND seen_at IS NULL AND note IS NULL", empty.ID); n != 1 {
		t.Error("empty array not stored as '{}' or nil values not stored as NULL")
	}
	if n := count(t, c, "thing", "id = $1 AND tags IS NULL", nulls.ID); n != 1 {
		t.Error("nil array not stored as NULL")
	}
	e, _ := things.Read(ctx, empty.ID)
	n, _ := things.Read(ctx, nulls.ID)
	if e.Tags == nil || len(e.Tags) != 0 || n.Tags != nil || n.Attrs.Valid || n.Raw != nil || n.SeenAt != nil || n.Note != nil {
		t.Errorf("read back: empty tags %#v, nulls %+v", e.Tags, n)
	}

	// Arrays and JSON through Update as well.
	u, err := things.Update(ctx, nulls.ID, map[string]any{"tags": []string{"x", "y"}, "attrs": db.NewJSON(Attrs{Color: "blue"})})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(u.Tags, db.Array[string]{"x", "y"}) || u.Attrs.V.Color != "blue" {
		t.Errorf("update arrays/json: got %+v", u)
	}
}

// TestConcurrentCRUD: 100 goroutines create, read, update, list and delete
// at once through one model (run with -race).
func TestConcurrentCRUD(t *testing.T) {
	c, ctx, things := newModel[Thing](t, thingSchema, "thing")
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			errs <- func() error {
				name := fmt.Sprintf("g%03d", i)
				row, err := things.Create(ctx, Thing{Name: name, Tags: db.Array[string]{name}})
				if err != nil {
					return err
				}
				if got, err := things.Read(ctx, row.ID); err != nil || got.Name != name {
					return fmt.Errorf("read %s: got %q: %w", name, got.Name, err)
				}
				if got, err := things.Update(ctx, row.ID, map[string]any{"count": int16(i)}); err != nil || got.Count != int16(i) {
					return fmt.Errorf("update %s: got %d: %w", name, got.Count, err)
				}
				if _, err := things.List(ctx, db.ListOptions{Limit: 5}); err != nil {
					return err
				}
				if i%2 == 0 {
					if got, err := things.Delete(ctx, row.ID); err != nil || got.Name != name {
						return fmt.Errorf("delete %s: got %q: %w", name, got.Name, err)
					}
				}
				return nil
			}()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := count(t, c, "thing", "true"); got != n/2 {
		t.Errorf("%d rows left, want %d (the odd goroutines' rows)", got, n/2)
	}
	if got := count(t, c, "thing", "count::int % 2 = 1 AND tags[1] = name"); got != n/2 {
		t.Errorf("%d rows hold their goroutine's update, want %d", got, n/2)
	}
}

func TestNewModelRefusesBadRowTypes(t *testing.T) {
	type noID struct {
		Name string `db:"name"`
	}
	type dup struct {
		ID uuid.UUID `db:"id"`
		A  string    `db:"x"`
		B  string    `db:"x"`
	}
	type badOpt struct {
		ID uuid.UUID `db:"id,primary"`
	}
	type twoKeys struct {
		A uuid.UUID `db:"a,key"`
		B uuid.UUID `db:"b,key"`
	}
	type base struct {
		ID uuid.UUID `db:"id"`
	}
	type embedsPointer struct {
		*base
		Name string `db:"name"`
	}
	cases := map[string]error{
		"embedded pointer": errOf(db.NewModel[embedsPointer](nil, "t")),
		"no id":            errOf(db.NewModel[noID](nil, "t")),
		"not struct":       errOf(db.NewModel[int](nil, "t")),
		"duplicate":        errOf(db.NewModel[dup](nil, "t")),
		"bad option":       errOf(db.NewModel[badOpt](nil, "t")),
		"bad table":        errOf(db.NewModel[Thing](nil, "a..b")),
		"two keys":         errOf(db.NewModel[twoKeys](nil, "t")),
	}
	want := map[string]string{
		"no id": "has no key: tag a field `,key` or name a column \"id\"", "not struct": "not a struct",
		"two keys": "tags 2 fields `,key`", "embedded pointer": "embedded pointer base: embed the struct by value",
		"duplicate": `column "x" named by two fields`, "bad option": `unknown db tag option "primary"`, "bad table": `bad table name "a..b"`,
	}
	for name, err := range cases {
		if err == nil || !strings.Contains(err.Error(), want[name]) {
			t.Errorf("%s: %v, want an error containing %q", name, err, want[name])
		}
	}
}

func errOf[T any](_ T, err error) error { return err }

// An embedded struct's fields are the row's columns; an embedded pointer to
// a type that is not a struct is one nullable column, named like any field.
func TestModelEmbedded(t *testing.T) {
	type base struct {
		ID uuid.UUID `db:"id"`
	}
	type Note string
	type noted struct {
		base
		*Note
		Name string `db:"name"`
	}
	c, ctx, m := newModel[noted](t, `CREATE TABLE noted (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), note text, name text NOT NULL)`, "noted")
	if got, want := m.Columns(), `"id", "note", "name"`; got != want {
		t.Errorf("columns %s, want %s", got, want)
	}
	n := Note("kept")
	with, err := m.Create(ctx, noted{Note: &n, Name: "with"})
	if err != nil {
		t.Fatal(err)
	}
	without, err := m.Create(ctx, noted{Name: "without"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.Read(ctx, with.ID); err != nil || got.Note == nil || *got.Note != "kept" {
		t.Errorf("read back %+v, %v: want note \"kept\"", got, err)
	}
	if count(t, c, "noted", "id = $1 AND note = 'kept'", with.ID) != 1 || count(t, c, "noted", "id = $1 AND note IS NULL", without.ID) != 1 {
		t.Error("the embedded *Note column is not stored as given (kept, NULL)")
	}
}

// Changes that arrive as JSON are decoded into the row type's field types
// before Update: what does not fit is refused naming the column, and null is
// NULL only where the column can hold it.
func TestUpdateWithJSONChanges(t *testing.T) {
	c, ctx, things := newModel[Thing](t, thingSchema, "thing")
	row, err := things.Create(ctx, Thing{Name: "json-changes", Note: ptr("note"), Raw: json.RawMessage(`{"a":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	changes, err := things.Changes(map[string]json.RawMessage{
		"count": json.RawMessage(`7`),
		"raw":   json.RawMessage(`"just a string"`),
		"tags":  json.RawMessage(`["x","y"]`),
		"note":  json.RawMessage(`null`),
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := things.Update(ctx, row.ID, changes)
	if err != nil {
		t.Fatal(err)
	}
	if got.Count != 7 || string(got.Raw) != `"just a string"` || len(got.Tags) != 2 || got.Note != nil {
		t.Errorf("after update: count %d, raw %s, tags %v, note %v", got.Count, got.Raw, got.Tags, got.Note)
	}
	if n := count(t, c, "thing", `id = $1 AND note IS NULL AND raw = '"just a string"'::jsonb`, row.ID); n != 1 {
		t.Errorf("stored row does not hold NULL note and the JSON string: %d rows match", n)
	}

	for _, tc := range []struct{ column, value, want string }{
		{"count", `8.5`, `column "count"`},
		{"count", `40000`, `column "count"`},
		{"name", `5`, `column "name"`},
		{"name", `null`, `cannot hold NULL`},
		{"nope", `1`, `no such column`},
	} {
		_, err := things.Changes(map[string]json.RawMessage{tc.column: json.RawMessage(tc.value)})
		var ie *db.InvalidError
		if !errors.As(err, &ie) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Changes(%s: %s) = %v, want an InvalidError saying %q", tc.column, tc.value, err, tc.want)
		}
	}
}
