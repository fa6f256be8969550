package db_test

import (
	"context"
	"fmt"

	"example.com/service/src/db"
)

// Code that may run inside a transaction it did not open (a queue handler
// behind the idempotent inbox, say) takes it from ctx with TxFrom, and
// falls back to the pool outside one.
func ExampleTxFrom() {
	client, done := exampleClient()
	defer done()
	ctx := context.Background()
	notes := db.MustModel[Note](client, "note")

	store := func(ctx context.Context, title string) error {
		m := notes
		if tx, ok := db.TxFrom(ctx); ok {
			m = notes.In(tx)
		}
		_, err := m.Create(ctx, Note{Title: title})
		return err
	}

	_ = store(ctx, "outside") // on the pool: kept
	_ = client.InTx(ctx, func(tx *db.Tx) error {
		_ = store(db.WithTx(ctx, tx), "inside") // in the transaction...
		return fmt.Errorf("roll back")          // ...which rolls back
	})
	var titles []string
	_ = client.Select(ctx, &titles, `SELECT title FROM note ORDER BY title`)
	fmt.Println(titles)
	// Output: [outside]
}
