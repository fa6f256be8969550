package db_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"

	"example.com/service/src/db"
	"example.com/service/src/testenv"
)

// thingSchema covers the column kinds the package promises: uuid key with a
// database default, unique and NOT NULL columns, nullable text, smallint,
// varchar[], jsonb (typed and raw), timestamps with a default and nullable.
const thingSchema = `
CREATE TABLE thing (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	name varchar(255) NOT NULL UNIQUE,
	note text,
	count smallint NOT NULL DEFAULT 0,
	tags varchar(255)[],
	attrs jsonb,
	raw jsonb,
	created_at timestamptz NOT NULL DEFAULT now(),
	seen_at timestamptz
);`

type Attrs struct {
	Color string         `json:"color"`
	Sizes []int          `json:"sizes"`
	Extra map[string]any `json:"extra,omitempty"`
}

type Thing struct {
	ID        uuid.UUID        `db:"id"`
	Name      string           `db:"name"`
	Note      *string          `db:"note"`
	Count     int16            `db:"count"`
	Tags      db.Array[string] `db:"tags"`
	Attrs     db.JSON[Attrs]   `db:"attrs"`
	Raw       json.RawMessage  `db:"raw"`
	CreatedAt time.Time        `db:"created_at,default"`
	SeenAt    *time.Time       `db:"seen_at"`
}

// newClient gives the test its own database holding schema, and a Client
// on it; both go away when the test ends.
func newClient(tb testing.TB, schema string) *db.Client {
	tb.Helper()
	return testenv.Client(tb, "dbtest_", schema)
}

func ptr[T any](v T) *T { return &v }

// count returns the number of rows of table matching the SQL condition
// where, read by hand-written SQL beside the model under test.
func count(tb testing.TB, c *db.Client, table, where string, args ...any) int {
	tb.Helper()
	var n int
	if err := c.Get(context.Background(), &n, `SELECT count(*) FROM `+table+` WHERE `+where, args...); err != nil {
		tb.Fatalf("count %s where %s: %v", table, where, err)
	}
	return n
}

// newModel gives the test its own database holding schema (see newClient),
// the model of T on table in it, the Client and a context to call them with.
func newModel[T any](tb testing.TB, schema, table string) (*db.Client, context.Context, *db.Model[T]) {
	tb.Helper()
	c := newClient(tb, schema)
	return c, context.Background(), db.MustModel[T](c, table)
}
