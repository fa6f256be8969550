package models

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"

	"example.com/service/src/db"
)

// ExampleItem is a row of the table example_item (example_item.sql). Its
// JSON form {"_id", "string", "integer", "json"} is what the service's RPC
// routes return, as the Python seed's did; its key column is "_id" too, as
// the seed's table.
type ExampleItem struct {
	ID      uuid.UUID       `db:"_id,key" json:"_id"` // zero: the database picks one
	String  string          `db:"string" json:"string"`
	Integer int16           `db:"integer" json:"integer"`
	JSON    json.RawMessage `db:"json" json:"json"` // any JSON value; nil is NULL
}

// ExampleItems is the model of example_item: the built-in operations of the
// embedded db.Model plus the queries below.
type ExampleItems struct {
	*db.Model[ExampleItem]
	allByString string
}

// NewExampleItems returns the model of the table example_item on c.
func NewExampleItems(c *db.Client) *ExampleItems {
	m := db.MustModel[ExampleItem](c, "example_item")
	return &ExampleItems{
		Model: m,
		allByString: "SELECT " + m.Columns() + " FROM " + m.QuotedTable() +
			` WHERE "string" = $1 ORDER BY "_id"`,
	}
}

// In returns the model running inside tx, its own queries included.
func (e *ExampleItems) In(tx *db.Tx) *ExampleItems {
	return &ExampleItems{Model: e.Model.In(tx), allByString: e.allByString}
}

// AllByString returns every item whose "string" field equals s, ordered by
// id; none is an empty slice, not an error.
func (e *ExampleItems) AllByString(ctx context.Context, s string) ([]ExampleItem, error) {
	items, err := e.Query(ctx, e.allByString, s)
	if err != nil {
		return nil, fmt.Errorf("example items with string %q: %w", s, err)
	}
	return items, nil
}
