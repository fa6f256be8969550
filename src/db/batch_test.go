package db_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"example.com/service/src/db"
)

// entriesFor makes n entries ref-0 ... on account, on days from day.
func entriesFor(prefix string, n, account int, day db.Date) []Entry {
	out := make([]Entry, n)
	for i := range out {
		out[i] = Entry{Ref: fmt.Sprintf("%s-%d", prefix, i), Account: account, Amount: dec(fmt.Sprintf("%d.05", i)), Day: day.AddDays(i % 3)}
	}
	return out
}

func refs(rows []Entry) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.Ref
	}
	return out
}

func TestCreateMany(t *testing.T) {
	c, ctx, entries := newModel[Entry](t, entrySchema, "entry")
	day := db.Date{2024, time.January, 30}

	// Keys and defaults per row: a given key is kept, a zero one filled.
	own := uuid.New()
	at := db.NewTimestamp(time.Date(2020, 1, 2, 3, 4, 5, 6000, time.UTC))
	in := []Entry{
		{Ref: "m-0", Amount: dec("1.10"), Day: day},
		{ID: own, Ref: "m-1", Amount: dec("-2"), Day: day, At: at},
		{Ref: "m-2", Amount: dec("99999999999999999999.9999999999"), Day: day.AddDays(1), Note: ptr("third")},
	}
	out, err := entries.CreateMany(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(refs(out), []string{"m-0", "m-1", "m-2"}) {
		t.Fatalf("CreateMany returned %v, want the rows in the order given", refs(out))
	}
	if out[0].ID == uuid.Nil || out[1].ID != own || out[2].ID == uuid.Nil || out[0].ID == out[2].ID {
		t.Errorf("keys %v %v %v: want the given one kept and the others filled", out[0].ID, out[1].ID, out[2].ID)
	}
	if out[0].At.IsZero() || !out[1].At.Equal(at.Time) || *out[2].Note != "third" || !out[2].Amount.Equal(in[2].Amount) {
		t.Errorf("returned rows %+v do not hold the defaults and values given", out)
	}
	if n := count(t, c, "entry", `(ref = 'm-1' AND "_id" = $1 AND at = '2020-01-02T03:04:05.000006Z') OR
		(ref = 'm-2' AND amount = 99999999999999999999.9999999999 AND day = '2024-01-31' AND note = 'third') OR
		(ref = 'm-0' AND amount = 1.1 AND at > now() - interval '1 minute')`, own); n != 3 {
		t.Fatalf("%d of the 3 rows stored as given", n)
	}

	// All or nothing: one row collides (ref m-0 exists), none of the batch is stored.
	_, err = entries.CreateMany(ctx, []Entry{{Ref: "m-3", Amount: dec("1"), Day: day}, {Ref: "m-0", Amount: dec("1"), Day: day}})
	var ce *db.ConflictError
	if !errors.As(err, &ce) || ce.Constraint != "entry_ref_key" || !strings.Contains(err.Error(), "create 2 rows") {
		t.Errorf("a batch with a taken ref: %v, want a ConflictError on entry_ref_key saying how many rows", err)
	}
	if n := count(t, c, "entry", "true"); n != 3 {
		t.Errorf("%d rows after a refused batch, want the 3 from before", n)
	}

	if got, err := entries.CreateMany(ctx, nil); err != nil || got == nil || len(got) != 0 {
		t.Errorf("CreateMany(nil) = %v, %v; want an empty slice", got, err)
	}
	// More values than one statement takes: refused before any SQL.
	big := entriesFor("big", 65535/10+1, 1, day)
	if _, err := entries.CreateMany(ctx, big); !errors.Is(err, db.ErrInvalid) || !strings.Contains(err.Error(), "at most 6553 rows") {
		t.Errorf("CreateMany of %d rows: %v, want ErrInvalid naming the limit", len(big), err)
	}
	if got, err := entries.CreateMany(ctx, big[:6553]); err != nil || len(got) != 6553 {
		t.Errorf("CreateMany of 6553 rows (the limit): %d rows, %v", len(got), err)
	}
	// Inside a transaction, with the rest of it.
	err = c.InTx(ctx, func(tx *db.Tx) error {
		if _, err := entries.In(tx).CreateMany(ctx, entriesFor("tx", 2, 2, day)); err != nil {
			return err
		}
		return errors.New("roll back")
	})
	if n := count(t, c, "entry", "starts_with(ref, 'tx-')"); err == nil || n != 0 {
		t.Errorf("rolled-back CreateMany left %d rows (%v)", n, err)
	}
}

func TestUpsert(t *testing.T) {
	c, ctx, entries := newModel[Entry](t, entrySchema, "entry")
	day := db.Date{2024, time.May, 1}
	stored, err := entries.CreateMany(ctx, entriesFor("u", 2, 1, day)) // u-0, u-1
	if err != nil {
		t.Fatal(err)
	}

	// Insert-ignore on the key: the stored row stays, the new one goes in.
	clash := stored[0]
	clash.Note, clash.Amount = ptr("changed"), dec("7")
	got, err := entries.Upsert(ctx, []Entry{clash, {Ref: "u-new", Amount: dec("3"), Day: day}}, db.OnConflict{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(refs(got), []string{"u-new"}) {
		t.Errorf("DO NOTHING returned %v, want only the inserted row", refs(got))
	}
	if n := count(t, c, "entry", `"_id" = $1 AND note IS NULL AND amount = 0.05`, stored[0].ID); n != 1 {
		t.Error("DO NOTHING changed the stored row")
	}

	// Insert-ignore on a unique column.
	got, err = entries.Upsert(ctx, []Entry{{Ref: "u-1", Amount: dec("8"), Day: day}}, db.OnConflict{Columns: []string{"ref"}})
	if err != nil || len(got) != 0 {
		t.Errorf("DO NOTHING on ref of a taken ref: %v, %v; want nothing returned", refs(got), err)
	}

	// Upsert on ref: the stored rows take the new amount and note, keep their
	// key and their other columns; a new ref is inserted.
	got, err = entries.Upsert(ctx, []Entry{
		{Ref: "u-1", Amount: dec("10.50"), Day: day.AddDays(9), Note: ptr("updated")},
		{Ref: "u-2", Amount: dec("11"), Day: day},
		{Ref: "u-0", Amount: dec("12"), Day: day, Note: ptr("updated")},
	}, db.OnConflict{Columns: []string{"ref"}, Update: []string{"amount", "note"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(refs(got), []string{"u-1", "u-2", "u-0"}) {
		t.Fatalf("upsert returned %v, want every row in the order given", refs(got))
	}
	if got[0].ID != stored[1].ID || got[2].ID != stored[0].ID || !got[0].Amount.Equal(dec("10.5")) || *got[0].Note != "updated" {
		t.Errorf("upsert returned %+v; want the stored keys with the new amount and note", got[0])
	}
	if got[0].Day != stored[1].Day {
		t.Errorf("upsert changed day to %v, a column not in Update", got[0].Day)
	}
	if n := count(t, c, "entry", `(ref = 'u-1' AND amount = 10.5 AND note = 'updated' AND day = '2024-05-02') OR
		(ref = 'u-0' AND amount = 12 AND note = 'updated') OR (ref = 'u-2' AND amount = 11)`); n != 3 {
		t.Errorf("%d of 3 rows stored as upserted", n)
	}

	// Two rows of one call on the same ref cannot both update it.
	before := count(t, c, "entry", "true")
	_, err = entries.Upsert(ctx, []Entry{{Ref: "u-9", Amount: dec("1"), Day: day}, {Ref: "u-9", Amount: dec("2"), Day: day}},
		db.OnConflict{Columns: []string{"ref"}, Update: []string{"amount"}})
	if !errors.Is(err, db.ErrInvalid) || !strings.Contains(err.Error(), "collide with each other") {
		t.Errorf("two rows with one ref: %v, want ErrInvalid saying they collide", err)
	}
	// A collision elsewhere (the key, while conflicts are handled on ref) is a ConflictError.
	_, err = entries.Upsert(ctx, []Entry{{ID: stored[0].ID, Ref: "u-10", Amount: dec("1"), Day: day}},
		db.OnConflict{Columns: []string{"ref"}, Update: []string{"amount"}})
	var ce *db.ConflictError
	if !errors.As(err, &ce) || ce.Constraint != "entry_pkey" {
		t.Errorf("a key collision while upserting on ref: %v, want a ConflictError on entry_pkey", err)
	}
	// Refused before any SQL: unknown columns, the key in Update.
	for name, on := range map[string]db.OnConflict{
		"unknown target": {Columns: []string{"nope"}},
		"unknown update": {Update: []string{"nope"}},
		"key in update":  {Columns: []string{"ref"}, Update: []string{"_id"}},
	} {
		if _, err := entries.Upsert(ctx, []Entry{{Ref: "x", Amount: dec("1"), Day: day}}, on); !errors.Is(err, db.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	// A target that is not unique: PostgreSQL refuses, naming the problem.
	if _, err := entries.Upsert(ctx, []Entry{{Ref: "x", Amount: dec("1"), Day: day}}, db.OnConflict{Columns: []string{"note"}}); err == nil ||
		!strings.Contains(err.Error(), "no unique or exclusion constraint") {
		t.Errorf("upsert on a non-unique column: %v", err)
	}
	if n := count(t, c, "entry", "true"); n != before {
		t.Errorf("refused upserts changed the row count from %d to %d", before, n)
	}
}

func TestList(t *testing.T) {
	_, ctx, entries := newModel[Entry](t, entrySchema, "entry")
	day := db.Date{2024, time.March, 1}
	rows := append(entriesFor("a", 30, 1, day), entriesFor("b", 30, 2, day)...)
	rows[0].Note, rows[1].Note = ptr("one"), ptr("it's; DROP TABLE entry; --")
	if _, err := entries.CreateMany(ctx, rows); err != nil {
		t.Fatal(err)
	}

	list := func(opts db.ListOptions) []Entry {
		t.Helper()
		got, err := entries.List(ctx, opts)
		if err != nil {
			t.Fatalf("list %+v: %v", opts, err)
		}
		return got
	}
	if got := list(db.ListOptions{}); len(got) != db.DefaultListLimit {
		t.Errorf("no limit: %d rows, want the default page of %d", len(got), db.DefaultListLimit)
	}
	// Filters on an int, a date and a decimal column (their Go types as parameters).
	got := list(db.ListOptions{Where: []db.Cond{db.Eq("account", 2), db.Ge("day", day.AddDays(2)), db.Lt("amount", dec("20"))}})
	for _, e := range got {
		if e.Account != 2 || e.Day.Compare(day.AddDays(2)) < 0 || !e.Amount.LessThan(dec("20")) {
			t.Errorf("row %+v does not match the filter", e)
		}
	}
	if len(got) != 6 { // b-2, b-5, ..., b-17 (i%3 == 2, i < 20)
		t.Errorf("filter matched %d rows, want 6: %v", len(got), refs(got))
	}
	if got := list(db.ListOptions{Where: []db.Cond{db.In("ref", "a-1", "b-2", "zz")}}); len(got) != 2 {
		t.Errorf("In: %v", refs(got))
	}
	if got := list(db.ListOptions{Where: []db.Cond{db.In("ref")}}); len(got) != 0 {
		t.Errorf("In with no values: %d rows, want none", len(got))
	}
	if got := list(db.ListOptions{Where: []db.Cond{db.NotNull("note")}, OrderBy: []db.Order{db.Asc("note")}}); !slices.Equal(refs(got), []string{"a-1", "a-0"}) {
		t.Errorf("NotNull ordered by note: %v", refs(got))
	}
	if got := list(db.ListOptions{Where: []db.Cond{db.IsNull("note"), db.Ne("account", 1)}, Limit: 100}); len(got) != 30 {
		t.Errorf("IsNull and Ne: %d rows, want 30", len(got))
	}
	if got := list(db.ListOptions{Where: []db.Cond{db.Eq("note", "it's; DROP TABLE entry; --")}}); len(got) != 1 {
		t.Errorf("a value that looks like SQL: %d rows, want 1 (it is only a value)", len(got))
	}

	// Pages by date, newest first, as transaction-service reads them: every
	// row once, although many share a date (the key breaks ties).
	seen := map[string]bool{}
	var last db.Date
	for offset := 0; ; offset += 7 {
		page := list(db.ListOptions{OrderBy: []db.Order{db.Desc("day")}, Limit: 7, Offset: offset})
		for _, e := range page {
			if seen[e.Ref] {
				t.Fatalf("%s on two pages", e.Ref)
			}
			if !last.IsZero() && e.Day.Compare(last) > 0 {
				t.Fatalf("%s (%v) after %v: not newest first", e.Ref, e.Day, last)
			}
			seen[e.Ref], last = true, e.Day
		}
		if len(page) < 7 {
			break
		}
	}
	if len(seen) != 60 {
		t.Errorf("paging saw %d rows, want 60", len(seen))
	}

	// Refused before any SQL, naming what is wrong.
	for name, opts := range map[string]db.ListOptions{
		"limit over max":  {Limit: db.MaxListLimit + 1},
		"negative limit":  {Limit: -1},
		"negative offset": {Offset: -1},
		"unknown filter":  {Where: []db.Cond{db.Eq("nope", 1)}},
		"unknown order":   {OrderBy: []db.Order{db.Desc("nope")}},
		"nil Eq":          {Where: []db.Cond{db.Eq("note", nil)}},
		"zero Cond":       {Where: []db.Cond{{}}},
	} {
		_, err := entries.List(ctx, opts)
		var ie *db.InvalidError
		if !errors.As(err, &ie) {
			t.Errorf("%s: %v, want an InvalidError", name, err)
		}
	}
	if _, err := entries.List(ctx, db.ListOptions{Limit: db.MaxListLimit + 1}); err == nil || !strings.Contains(err.Error(), "1 to 1000 rows") {
		t.Errorf("limit over the maximum: %v, want the maximum named", err)
	}
}
