package db_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"example.com/service/src/db"
	"example.com/service/src/testenv"
)

// exampleDB creates a database holding the table note; the returned
// function drops it. (Set-up for the examples, not part of them.)
func exampleDB() (db.Config, func()) {
	ctx := context.Background()
	admin, err := sql.Open("pgx", testenv.PostgresURL("postgres"))
	if err != nil {
		panic(err)
	}
	name := testenv.Name("dbexample_")
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		panic(err)
	}
	dropDB := func() {
		_, _ = admin.ExecContext(ctx, `DROP DATABASE IF EXISTS "`+name+`" WITH (FORCE)`)
		_ = admin.Close()
	}
	cfg := db.Config{URL: testenv.PostgresURL(name)}
	c, err := db.Open(ctx, cfg)
	if err == nil {
		_, err = c.Exec(ctx, `CREATE TABLE note (
			id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
			title varchar(255) NOT NULL UNIQUE,
			tags varchar(255)[],
			created_at timestamptz NOT NULL DEFAULT now()
		)`)
		_ = c.Close()
	}
	if err != nil {
		dropDB()
		panic(err)
	}
	return cfg, dropDB
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
	cfg, drop := exampleDB()
	defer drop()
	ctx := context.Background()
	client, err := db.Open(ctx, cfg)
	if err != nil {
		panic(err)
	}
	defer client.Close()
	notes := db.MustModel[Note](client, "note")

	// Both notes are stored, or neither: the second one fails, so the
	// transaction is rolled back and the first one is gone too.
	err = client.InTx(ctx, func(tx *db.Tx) error {
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
