// Package models holds the service's tables, one .go + .sql pair per table.
//
// The .sql files are the schema's single source of truth: plain CREATE TABLE
// and CREATE INDEX statements that `go run ./src/manage sync` diffs against
// the database. The .go file next to each declares the row type (db tags
// name the columns, json tags the fields in RPC replies) and the model that
// reads and writes it.
package models

import "embed"

// Schema holds every .sql file of this package, to be run in lexical order
// into an empty database.
//
//go:embed *.sql
var Schema embed.FS
