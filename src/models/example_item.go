package models

import (
	"encoding/json"

	"github.com/google/uuid"
)

// ExampleItem is a row of the table example_item (example_item.sql). Its
// JSON form {"id", "string", "integer", "json"} is what the service's RPC
// routes return.
type ExampleItem struct {
	ID      uuid.UUID       `db:"id" json:"id"` // zero: the database picks one
	String  string          `db:"string" json:"string"`
	Integer int16           `db:"integer" json:"integer"`
	JSON    json.RawMessage `db:"json" json:"json"` // any JSON value; nil is NULL
}
