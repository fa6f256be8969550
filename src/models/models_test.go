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
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/shopspring/decimal"

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
			return fmt.Errorf("load %s: %w", where(f, string(b), err), err)
		}
	}
	return nil
}

// where is file:line of a .sql file's error: the line of the position
// PostgreSQL gives (a syntax error's), else just the file.
func where(file, text string, err error) string {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Position <= 0 {
		return file
	}
	runes := []rune(text)
	return fmt.Sprintf("%s:%d", file, 1+strings.Count(string(runes[:min(int(pe.Position)-1, len(runes))]), "\n"))
}

// newClient gives the test its own database with the models' schema.
func newClient(t *testing.T) *db.Client {
	t.Helper()
	c := testenv.Client(t, "modelstest_")
	if err := loadSchema(context.Background(), c); err != nil {
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
		"transaction":  models.NewTransactions(c).Columns(),
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
	wantJSON := fmt.Sprintf(`{"_id":"%s","string":"b","integer":1,"json":{"i":1}}`, made[1].ID)
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
	list, err := simples.List(ctx, db.ListOptions{Limit: 100})
	if err != nil || len(list) != 2 {
		t.Errorf("list: %d rows, %v", len(list), err)
	}
}

func TestTransactions(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	txs := models.NewTransactions(c)
	account := uuid.New()
	day := db.Date{Year: 2024, Month: time.February, Day: 27}
	city := "Chicago"
	made := func(n int, plaid string) models.Transaction {
		return models.Transaction{
			Amount: decimal.RequireFromString(fmt.Sprintf("%d.99", n)), Payee: fmt.Sprint("payee ", n),
			DateAuthorized: day.AddDays(n), Date: day.AddDays(n + 1), AccountID: account,
			Category: db.Array[string]{"Food", "Groceries"}, Location: db.NewJSON(models.Location{City: &city}),
			PlaidTransactionID: plaid,
		}
	}
	var batch []models.Transaction
	for i := range 60 {
		batch = append(batch, made(i%5, fmt.Sprint("plaid-", i)))
	}
	stored, err := txs.Import(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 60 || stored[0].ID == uuid.Nil || stored[0].CreatedAt.IsZero() {
		t.Fatalf("import stored %d rows, first %+v", len(stored), stored[0])
	}

	// Pages newest first, at most 50.
	page, err := txs.Page(ctx, 0, 0)
	if err != nil || len(page) != models.MaxTransactionsPage {
		t.Fatalf("first page: %d rows, %v", len(page), err)
	}
	if page[0].Date != day.AddDays(5) || page[len(page)-1].Date.Compare(page[0].Date) > 0 {
		t.Errorf("page starts with %v: want the newest date %v first", page[0].Date, day.AddDays(5))
	}
	if rest, err := txs.Page(ctx, 50, 50); err != nil || len(rest) != 10 {
		t.Errorf("second page: %d rows, %v; want the last 10", len(rest), err)
	}
	if _, err := txs.Page(ctx, 51, 0); !errors.Is(err, db.ErrInvalid) {
		t.Errorf("page of 51: %v, want ErrInvalid (transaction-service's limit is 50)", err)
	}
	inRange, err := txs.ForAccount(ctx, account, day.AddDays(2), day.AddDays(3), 0)
	if err != nil || len(inRange) != 24 { // n = 1 and 2: 12 rows each
		t.Errorf("ForAccount of two days: %d rows, %v", len(inRange), err)
	}

	// A re-import updates what the bank changed and keeps the rest.
	budget := uuid.New()
	first := stored[0]
	if _, err := txs.Update(ctx, first.ID, map[string]any{"spent_from_id": budget}); err != nil {
		t.Fatal(err)
	}
	again := made(0, first.PlaidTransactionID)
	again.Amount, again.Pending = decimal.RequireFromString("1234567.10"), true
	updated, err := txs.Import(ctx, []models.Transaction{again})
	if err != nil || len(updated) != 1 {
		t.Fatalf("re-import: %v, %v", updated, err)
	}
	u := updated[0]
	if u.ID != first.ID || !u.Amount.Equal(again.Amount) || !u.Pending || u.SpentFromID == nil || *u.SpentFromID != budget || !u.CreatedAt.Equal(first.CreatedAt.Time) {
		t.Errorf("re-import gave %+v; want the new amount and pending, the same key, budget item and created_at", u)
	}
	var n int
	if err := c.Get(ctx, &n, `SELECT count(*) FROM "transaction"`); err != nil || n != 60 {
		t.Errorf("%d transactions after a re-import, want 60 (%v)", n, err)
	}

	// The JSON a route answers: amount a decimal string, dates as days.
	b, err := json.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"_id":"` + u.ID.String() + `"`, `"amount":"1234567.1"`, `"date_authorized":"2024-02-27"`, `"date":"2024-02-28"`,
		`"spent_from_id":"` + budget.String() + `"`, `"location":{"address":null,"city":"Chicago"`, `"created_at":"` + u.CreatedAt.String() + `"`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON %s lacks %s", b, want)
		}
	}
	// And what a Python transaction-service sends (Decimal as a float,
	// date.isoformat()) reads back exactly.
	var fromPython models.Transaction
	if err := json.Unmarshal([]byte(`{"amount": 19.99, "date": "2024-03-01", "date_authorized": "2024-02-29", "location": {}, "category": []}`), &fromPython); err != nil {
		t.Fatal(err)
	}
	if fromPython.Amount.String() != "19.99" || fromPython.Date != (db.Date{Year: 2024, Month: time.March, Day: 1}) {
		t.Errorf("from Python: amount %v date %v", fromPython.Amount, fromPython.Date)
	}
}
