package testenv

import (
	"context"
	"testing"
	"time"

	"example.com/service/src/db"
)

// Client gives the test a database of its own (CreateDatabase with prefix)
// and a db.Client on it, closed at cleanup, after running each of schema's
// SQL scripts in it. Like CreateDatabase it skips the test with -short.
func Client(tb testing.TB, prefix string, schema ...string) *db.Client {
	tb.Helper()
	name := CreateDatabase(tb, prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := db.Open(ctx, db.Config{URL: PostgresURL(name)})
	if err != nil {
		tb.Fatalf("open test database %s: %v", name, err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	for _, s := range schema {
		if _, err := c.Exec(ctx, s); err != nil {
			tb.Fatalf("load schema into %s: %v", name, err)
		}
	}
	return c
}
