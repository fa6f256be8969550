package db_test

import (
	"fmt"

	"example.com/service/src/db"
)

// Summarize names a statement's span: its operation and table, never its
// values. db.NewTracer(tp) in Config.QueryTracer uses it for every
// statement made with a traced ctx.
func ExampleSummarize() {
	fmt.Println(db.Summarize(`INSERT INTO "example_item" ("string") VALUES ($1) RETURNING *`))
	fmt.Println(db.Summarize(`SELECT * FROM example_item WHERE "string" = 'not in the span'`))
	// Output:
	// INSERT example_item
	// SELECT example_item
}
