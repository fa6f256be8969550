package db

import (
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Sentinel errors, matched with errors.Is. The errors this package returns
// carry more detail in the types below (errors.As). This package knows
// nothing of how they reach a caller: a service maps them to its wire
// (src/server.go maps them to the seed's reply types).
var (
	// ErrNotFound: no row matched (a model operation by id, or Get).
	ErrNotFound = errors.New("not found")
	// ErrConflict: a unique or exclusion constraint refused the write, or
	// the row to delete is still referenced by another table's foreign key.
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the input was refused, either before any SQL ran (an
	// unknown column in an update) or by the database (a NOT NULL or CHECK
	// constraint, a value too long for its column, a missing foreign row).
	ErrInvalid = errors.New("invalid input")
)

// NotFoundError reports that no row in Table has the key ID. It matches
// ErrNotFound and, for hand-written queries, sql.ErrNoRows.
type NotFoundError struct {
	Table string // empty for a hand-written query
	ID    any    // nil for a hand-written query
}

func (e *NotFoundError) Error() string {
	if e.Table == "" {
		return "query returned no rows"
	}
	return fmt.Sprintf("no row in %s with id %v", e.Table, e.ID)
}

// Is makes errors.Is(err, ErrNotFound) and errors.Is(err, sql.ErrNoRows) hold.
func (e *NotFoundError) Is(target error) bool {
	return target == ErrNotFound || target == sql.ErrNoRows
}

// ConflictError reports a unique violation: the write to Table (of the row
// with key ID, when known) collided with an existing row on Constraint.
type ConflictError struct {
	Table      string
	ID         any // nil when the database was to choose the key
	Constraint string
	Detail     string // the server's detail, e.g. `Key (string)=(a) already exists.`
	Err        error  // the driver's error
}

func (e *ConflictError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "conflict in %s", e.Table)
	if e.ID != nil {
		fmt.Fprintf(&b, " (id %v)", e.ID)
	}
	fmt.Fprintf(&b, ": unique constraint %q", e.Constraint)
	if e.Detail != "" {
		fmt.Fprintf(&b, ": %s", e.Detail)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrConflict) hold.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Unwrap returns the driver's error (a *pgconn.PgError).
func (e *ConflictError) Unwrap() error { return e.Err }

// InvalidError reports input that was refused: by this package before any
// SQL ran (Err nil), or by the database (Err the driver's error).
type InvalidError struct {
	Table  string
	Column string // the offending column, when known
	Reason string
	Err    error
}

func (e *InvalidError) Error() string {
	s := "invalid input"
	if e.Table != "" {
		s += " for " + e.Table
	}
	if e.Column != "" {
		s += " column " + strconv.Quote(e.Column)
	}
	return s + ": " + e.Reason
}

// Is makes errors.Is(err, ErrInvalid) hold.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }

// Unwrap returns the driver's error, if the database refused the input.
func (e *InvalidError) Unwrap() error { return e.Err }

// classify turns driver errors into this package's errors: no rows becomes
// a NotFoundError, a unique violation a ConflictError, a constraint or data
// error an InvalidError. Other errors pass through unchanged. table and id
// fill the fields when the server did not name the table.
func classify(err error, table string, id any) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return &NotFoundError{Table: table, ID: id}
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	if pe.TableName != "" {
		table = pe.TableName
	}
	switch {
	case pe.Code == "23505", pe.Code == "23P01": // unique, exclusion violation
		return &ConflictError{Table: table, ID: id, Constraint: pe.ConstraintName, Detail: pe.Detail, Err: err}
	case pe.Code == "23503" && strings.Contains(pe.Detail, "is still referenced"):
		// foreign_key_violation on delete or key update: the row is in use.
		return &ConflictError{Table: table, ID: id, Constraint: pe.ConstraintName, Detail: pe.Detail, Err: err}
	case pe.Code == "23502", pe.Code == "23503", pe.Code == "23514", strings.HasPrefix(pe.Code, "22"):
		// not_null, foreign_key, check violations; data exceptions
		// (value too long, out of range, bad text representation).
		reason := pe.Message
		if pe.Detail != "" {
			reason += " (" + pe.Detail + ")"
		}
		return &InvalidError{Table: table, Column: pe.ColumnName, Reason: reason, Err: err}
	}
	return err
}
