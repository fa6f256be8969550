package models_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"example.com/service/src/db"
	"example.com/service/src/models"
	"example.com/service/src/testenv"
)

// loadSchema runs the package's .sql files, in lexical order, on c.
func loadSchema(ctx context.Context, c *db.Client) error {
	files, err := fs.Glob(models.Schema, "*.sql")
	if err != nil {
		return err
	}
	slices.Sort(files)
	for _, f := range files {
		b, err := fs.ReadFile(models.Schema, f)
		if err != nil {
			return err
		}
		if _, err := c.Exec(ctx, string(b)); err != nil {
			return fmt.Errorf("load %s: %w", f, err)
		}
	}
	return nil
}

// newClient gives the test its own database with the models' schema.
func newClient(t *testing.T) *db.Client {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL; skipped with -short")
	}
	name := testenv.CreateDatabase(t, "modelstest_")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := db.Open(ctx, db.Config{URL: testenv.PostgresURL(name)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := loadSchema(ctx, c); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestSchemaMatchesRowTypes: each model's table, as the .sql files create
// it, has exactly the columns of the model's Go row type. (A table of the
// .sql files without a model here is named in the log, not a failure:
// adding a table breaks no test.)
func TestSchemaMatchesRowTypes(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	tables, err := c.Tables(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checked := map[string]string{
		"simple":       models.NewSimples(c).Columns(),
		"example_item": models.NewExampleItems(c).Columns(),
	}
	for _, table := range tables {
		if _, ok := checked[table]; !ok {
			t.Logf("table %s has no model in this test: add it to the map above to check its columns against its row type", table)
		}
	}
	for table, cols := range checked {
		if !slices.Contains(tables, table) {
			t.Errorf("no .sql file creates table %s, which a model reads and writes (tables: %q)", table, tables)
			continue
		}
		var got []string
		if err := c.Select(ctx, &got, `SELECT quote_ident(column_name) FROM information_schema.columns
			WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position`, table); err != nil {
			t.Fatal(err)
		}
		for i, g := range got {
			if !strings.HasPrefix(g, `"`) {
				got[i] = `"` + g + `"`
			}
		}
		if strings.Join(got, ", ") != cols {
			t.Errorf("table %s has columns %s; its row type has %s", table, strings.Join(got, ", "), cols)
		}
	}
	var n int
	if err := c.Get(ctx, &n, `SELECT count(*) FROM pg_indexes WHERE indexname = 'example_item_string_idx'
		AND indexdef LIKE '%(string)%'`); err != nil || n != 1 {
		t.Errorf("index on example_item(string): %d, %v", n, err)
	}
}

func TestExampleItems(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	items := models.NewExampleItems(c)

	var made []models.ExampleItem
	for i, s := range []string{"a", "b", "a"} {
		it, err := items.Create(ctx, models.ExampleItem{String: s, Integer: int16(i), JSON: json.RawMessage(fmt.Sprintf(`{"i": %d}`, i))})
		if err != nil {
			t.Fatal(err)
		}
		made = append(made, it)
	}
	got, err := items.AllByString(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	want := []uuid.UUID{made[0].ID, made[2].ID}
	slices.SortFunc(want, func(x, y uuid.UUID) int { return strings.Compare(x.String(), y.String()) })
	if len(got) != 2 || got[0].ID != want[0] || got[1].ID != want[1] || got[0].String != "a" {
		t.Errorf("AllByString(a) = %+v, want the two items with string a, ordered by id", got)
	}
	if none, err := items.AllByString(ctx, "zzz"); err != nil || none == nil || len(none) != 0 {
		t.Errorf("AllByString(zzz) = %#v, %v; want an empty slice", none, err)
	}
	// A value that looks like SQL is only a value.
	if none, err := items.AllByString(ctx, `a' OR '1'='1`); err != nil || len(none) != 0 {
		t.Errorf("AllByString with a quote: %d rows, %v", len(none), err)
	}

	// The JSON the service's routes return.
	b, err := json.Marshal(made[1])
	if err != nil {
		t.Fatal(err)
	}
	wantJSON := fmt.Sprintf(`{"id":"%s","string":"b","integer":1,"json":{"i":1}}`, made[1].ID)
	if string(b) != wantJSON {
		t.Errorf("JSON of an item = %s, want %s", b, wantJSON)
	}

	// The built-in CRUD through the embedding type.
	u, err := items.Update(ctx, made[1].ID, map[string]any{"string": "a", "json": json.RawMessage(`[1,2]`)})
	if err != nil || u.String != "a" || string(u.JSON) != "[1, 2]" {
		t.Errorf("update: %+v, %v", u, err)
	}
	if all, _ := items.AllByString(ctx, "a"); len(all) != 3 {
		t.Errorf("after the update AllByString(a) has %d items, want 3", len(all))
	}
	if d, err := items.Delete(ctx, made[0].ID); err != nil || d.ID != made[0].ID {
		t.Errorf("delete: %v, %v", d.ID, err)
	}
	if _, err := items.Read(ctx, made[0].ID); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("read after delete: %v, want ErrNotFound", err)
	}
	// NOT NULL "string" refused by the database: an invalid-input error, nothing stored.
	_, err = items.Update(ctx, made[2].ID, map[string]any{"string": nil})
	if !errors.Is(err, db.ErrInvalid) {
		t.Errorf("string set to NULL: %v, want ErrInvalid", err)
	}

	// Inside a transaction, AllByString sees the transaction's own writes.
	err = c.InTx(ctx, func(tx *db.Tx) error {
		txItems := items.In(tx)
		if _, err := txItems.Create(ctx, models.ExampleItem{String: "tx"}); err != nil {
			return err
		}
		in, err := txItems.AllByString(ctx, "tx")
		if err != nil {
			return err
		}
		out, err := items.AllByString(ctx, "tx")
		if err != nil {
			return err
		}
		if len(in) != 1 || len(out) != 0 {
			t.Errorf("inside the transaction %d items, outside %d; want 1 and 0", len(in), len(out))
		}
		return errors.New("roll back")
	})
	if err == nil || err.Error() != "roll back" {
		t.Errorf("InTx: %v", err)
	}
	if after, _ := items.AllByString(ctx, "tx"); len(after) != 0 {
		t.Error("the rolled back item was kept")
	}
}

func TestSimples(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	simples := models.NewSimples(c)
	s := "text"
	n := int16(-32768)
	full, err := simples.Create(ctx, models.Simple{String: &s, Integer: &n, Array: db.Array[string]{"x", "y z", `q"`}})
	if err != nil {
		t.Fatal(err)
	}
	empty, err := simples.Create(ctx, models.Simple{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := simples.Read(ctx, full.ID)
	if err != nil {
		t.Fatal(err)
	}
	if *got.String != "text" || *got.Integer != -32768 || !slices.Equal(got.Array, db.Array[string]{"x", "y z", `q"`}) {
		t.Errorf("read %+v", got)
	}
	got, err = simples.Read(ctx, empty.ID)
	if err != nil || got.String != nil || got.Integer != nil || got.Array != nil {
		t.Errorf("all-NULL row read as %+v, %v", got, err)
	}
	var nulls int
	if err := c.Get(ctx, &nulls, `SELECT count(*) FROM simple WHERE "string" IS NULL AND "integer" IS NULL AND "array" IS NULL`); err != nil || nulls != 1 {
		t.Errorf("%d all-NULL rows stored, want 1 (%v)", nulls, err)
	}
	// 32768 does not fit a smallint: refused, the row unchanged.
	if _, err := simples.Update(ctx, full.ID, map[string]any{"integer": 32768}); err == nil {
		t.Error("32768 stored into a smallint")
	}
	if got, _ := simples.Read(ctx, full.ID); *got.Integer != -32768 {
		t.Error("a refused update changed the row")
	}
	list, err := simples.List(ctx, 100)
	if err != nil || len(list) != 2 {
		t.Errorf("list: %d rows, %v", len(list), err)
	}
}
