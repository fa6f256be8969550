package models

import (
	"github.com/google/uuid"

	"example.com/service/src/db"
)

// Simple is a row of the table simple (simple.sql). Every column but id is
// nullable: nil pointers and a nil Array are NULL.
type Simple struct {
	ID      uuid.UUID        `db:"id" json:"id"` // zero: the database picks one
	String  *string          `db:"string" json:"string"`
	Integer *int16           `db:"integer" json:"integer"`
	Array   db.Array[string] `db:"array" json:"array"`
}

// NewSimples returns the model of the table simple on c: the built-in
// create, read, update, delete and list, nothing more.
func NewSimples(c *db.Client) *db.Model[Simple] {
	return db.MustModel[Simple](c, "simple")
}
