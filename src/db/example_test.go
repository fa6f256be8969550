package db_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/shopspring/decimal"

	"example.com/service/src/db"
	"example.com/service/src/testenv"
)

// exampleDB creates a database holding the table note; the returned
// function drops it. (Set-up for the examples, not part of them.)
func exampleDB() (db.Config, func()) {
	ctx := context.Background()
	name, drop, err := testenv.ScratchDatabase("dbexample_")
	if err != nil {
		panic(err)
	}
	dropDB := func() { _ = drop() }
	cfg := db.Config{URL: testenv.PostgresURL(name)}
	c, err := db.Open(ctx, cfg)
	if err == nil {
		_, err = c.Exec(ctx, `CREATE TABLE note (
			id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
			title varchar(255) NOT NULL UNIQUE,
			tags varchar(255)[],
			created_at timestamptz NOT NULL DEFAULT now()
		)`)
		if err == nil {
			_, err = c.Exec(ctx, `CREATE TABLE payment (
				"_id" uuid PRIMARY KEY DEFAULT gen_random_uuid(),
				ref varchar(64) NOT NULL UNIQUE,
				amount numeric(11, 2) NOT NULL,
				day date NOT NULL,
				paid_at timestamptz
			)`)
		}
		_ = c.Close()
	}
	if err != nil {
		dropDB()
		panic(err)
	}
	return cfg, dropDB
}

// exampleClient opens a client on a database of exampleDB; the returned
// function closes it and drops the database.
func exampleClient() (*db.Client, func()) {
	cfg, drop := exampleDB()
	client, err := db.Open(context.Background(), cfg)
	if err != nil {
		drop()
		panic(err)
	}
	return client, func() { _ = client.Close(); drop() }
}

// Note is a row of the table note.
type Note struct {
	ID        uuid.UUID        `db:"id"`
	Title     string           `db:"title"`
	Tags      db.Array[string] `db:"tags"`
	CreatedAt time.Time        `db:"created_at,default"`
}

func Example() {
	cfg, drop := exampleDB() // in a service: cfg, err := db.ConfigFromEnv()
	defer drop()
	ctx := context.Background()

	client, err := db.Open(ctx, cfg)
	if err != nil {
		panic(err)
	}
	defer client.Close()

	notes := db.MustModel[Note](client, "note")
	n, err := notes.Create(ctx, Note{Title: "groceries", Tags: db.Array[string]{"home"}})
	if err != nil {
		panic(err)
	}
	n, err = notes.Update(ctx, n.ID, map[string]any{"tags": []string{"home", "today"}})
	if err != nil {
		panic(err)
	}
	fmt.Println(n.Title, n.Tags, !n.CreatedAt.IsZero())

	_, err = notes.Create(ctx, Note{Title: "groceries"})
	fmt.Println(errors.Is(err, db.ErrConflict))

	_, err = notes.Delete(ctx, n.ID)
	fmt.Println(err)
	_, err = notes.Read(ctx, n.ID)
	fmt.Println(errors.Is(err, db.ErrNotFound))

	_, err = notes.Update(ctx, n.ID, map[string]any{"titel": "typo"})
	var invalid *db.InvalidError
	if errors.As(err, &invalid) {
		fmt.Println(invalid)
	}
	// Output:
	// groceries [home today] true
	// true
	// <nil>
	// true
	// invalid input for note column "titel": no such column; the columns are created_at, id, tags, title
}

func ExampleClient_InTx() {
	client, done := exampleClient()
	defer done()
	ctx := context.Background()
	notes := db.MustModel[Note](client, "note")

	// Both notes are stored, or neither: the second one fails, so the
	// transaction is rolled back and the first one is gone too.
	err := client.InTx(ctx, func(tx *db.Tx) error {
		if _, err := notes.In(tx).Create(ctx, Note{Title: "first"}); err != nil {
			return err
		}
		_, err := notes.In(tx).Create(ctx, Note{Title: "first"})
		return err
	})
	fmt.Println(errors.Is(err, db.ErrConflict))

	var count int
	if err := client.Get(ctx, &count, `SELECT count(*) FROM note`); err != nil {
		panic(err)
	}
	fmt.Println(count)
	// Output:
	// true
	// 0
}

// Payment is a row of the table payment: money, a day and an instant, keyed
// by the Python seed's column name _id.
type Payment struct {
	ID     uuid.UUID     `db:"_id,key" json:"_id"`
	Ref    string        `db:"ref" json:"ref"`
	Amount db.Decimal    `db:"amount" json:"amount"`
	Day    db.Date       `db:"day" json:"day"`
	PaidAt *db.Timestamp `db:"paid_at" json:"paid_at"` // nullable
}

// Dates, money and instants travel in JSON as "YYYY-MM-DD", decimal
// strings and RFC 3339; a Python service's Decimal sent as a JSON number is
// read exactly.
func ExampleDecimal() {
	var p Payment
	err := json.Unmarshal([]byte(`{"ref": "r1", "amount": 12345678901.25, "day": "2024-02-29", "paid_at": "2024-03-01T09:30:00.5+01:00"}`), &p)
	if err != nil {
		panic(err)
	}
	out, _ := json.Marshal(p)
	fmt.Println(string(out))
	// Output:
	// {"_id":"00000000-0000-0000-0000-000000000000","ref":"r1","amount":"12345678901.25","day":"2024-02-29","paid_at":"2024-03-01T08:30:00.500000+00:00"}
}

// Batches in one statement, insert-or-update on a unique column, and pages.
func ExampleModel_Upsert() {
	client, done := exampleClient()
	defer done()
	ctx := context.Background()
	payments := db.MustModel[Payment](client, "payment")
	day := db.Date{Year: 2024, Month: time.March, Day: 1}

	_, err := payments.CreateMany(ctx, []Payment{
		{Ref: "r1", Amount: decimal.RequireFromString("10.00"), Day: day},
		{Ref: "r2", Amount: decimal.RequireFromString("20.00"), Day: day.AddDays(1)},
	})
	if err != nil {
		panic(err)
	}
	// A second import of r2 (now 25.50) and a new r3: r2 is updated in place.
	changed, err := payments.Upsert(ctx, []Payment{
		{Ref: "r2", Amount: decimal.RequireFromString("25.50"), Day: day.AddDays(1)},
		{Ref: "r3", Amount: decimal.RequireFromString("30.00"), Day: day.AddDays(2)},
	}, db.OnConflict{Columns: []string{"ref"}, Update: []string{"amount"}})
	if err != nil {
		panic(err)
	}
	fmt.Println(len(changed), "rows inserted or updated")

	page, err := payments.List(ctx, db.ListOptions{
		Where:   []db.Cond{db.Ge("amount", decimal.RequireFromString("15"))},
		OrderBy: []db.Order{db.Desc("day")},
		Limit:   10,
	})
	if err != nil {
		panic(err)
	}
	for _, p := range page {
		fmt.Println(p.Ref, p.Amount, p.Day)
	}
	// Output:
	// 2 rows inserted or updated
	// r3 30 2024-03-03
	// r2 25.5 2024-03-02
}
