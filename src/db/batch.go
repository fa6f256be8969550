package db

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// maxParams is PostgreSQL's limit of parameters in one statement.
const maxParams = 65535

// OnConflict says what [Model.Upsert] does with a row that collides with a
// stored one.
type OnConflict struct {
	// Columns are the columns of the unique constraint or unique index whose
	// collisions are handled (ON CONFLICT (columns)); none means the key. A
	// collision on any other constraint is still a *ConflictError.
	Columns []string
	// Update lists the columns to overwrite with the new row's values
	// (DO UPDATE SET c = EXCLUDED.c); none means the stored row is kept as
	// it is and the new one skipped (DO NOTHING): insert-ignore. The key
	// cannot be updated.
	Update []string
}

// CreateMany inserts rows with one statement, in one round trip, and
// returns them as stored, in the order given. As with Create, a zero key or
// zero `,default` field of a row takes the column's default. It is all or
// nothing: one row refused (a unique violation is a *ConflictError) fails
// the statement and stores none. No rows is no statement and an empty
// slice. One statement holds at most 65,535 values (PostgreSQL's limit of
// parameters), so at most 65535/columns rows; more is an *InvalidError
// before any SQL runs: split them, in a transaction (Client.InTx with
// Model.In) if they must be stored together.
func (m *Model[T]) CreateMany(ctx context.Context, rows []T) ([]T, error) {
	out, err := m.insert(ctx, rows, "")
	if err != nil {
		return nil, fmt.Errorf("create %d rows in %s: %w", len(rows), m.t.name, err)
	}
	return out, nil
}

// Upsert inserts rows with one statement, as CreateMany, handling the rows
// that collide with stored ones on on.Columns (the key when empty): with
// on.Update empty they are skipped (ON CONFLICT DO NOTHING), otherwise the
// stored row's on.Update columns take the new values (ON CONFLICT DO UPDATE).
// It returns the rows inserted or updated, as stored, in the order given;
// skipped rows are left out, so len(result) < len(rows) tells that some
// were. Two rows of one call that collide with each other on on.Columns
// cannot both update a row: that is an *InvalidError, and nothing is stored.
// Unknown columns, or the key in on.Update, are refused before any SQL
// runs. on.Columns must match a unique constraint or index of the table,
// or PostgreSQL refuses the statement.
func (m *Model[T]) Upsert(ctx context.Context, rows []T, on OnConflict) ([]T, error) {
	clause, err := m.t.conflictSQL(on)
	if err != nil {
		return nil, fmt.Errorf("upsert %d rows in %s: %w", len(rows), m.t.name, err)
	}
	out, err := m.insert(ctx, rows, clause)
	if err != nil {
		return nil, fmt.Errorf("upsert %d rows in %s: %w", len(rows), m.t.name, err)
	}
	return out, nil
}

// insert runs INSERT ... VALUES (...), (...) [conflict] RETURNING.
func (m *Model[T]) insert(ctx context.Context, rows []T, conflict string) ([]T, error) {
	t := m.t
	if len(rows) == 0 {
		return []T{}, nil
	}
	if limit := maxParams / len(t.cols); len(rows) > limit {
		return nil, &InvalidError{Table: t.name, Reason: fmt.Sprintf(
			"%d rows: one statement takes at most %d rows of %d columns (65,535 values); split them", len(rows), limit, len(t.cols))}
	}
	var b strings.Builder
	b.WriteString("INSERT INTO " + t.quoted + " (" + t.colList + ") VALUES ")
	args := make([]any, 0, len(rows)*len(t.cols))
	for r := range rows {
		v := reflect.ValueOf(&rows[r]).Elem()
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for i, c := range t.cols {
			if i > 0 {
				b.WriteString(", ")
			}
			f := v.FieldByIndex(c.index)
			if (c.isKey || c.dbDflt) && f.IsZero() {
				b.WriteString("DEFAULT")
				continue
			}
			args = append(args, f.Interface())
			b.WriteString("$" + strconv.Itoa(len(args)))
		}
		b.WriteByte(')')
	}
	b.WriteString(conflict + " RETURNING " + t.colList)
	out, err := m.Query(ctx, b.String(), args...)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "21000" { // cardinality_violation
		return nil, &InvalidError{Table: t.name, Reason: "two of the rows collide with each other on the conflict columns, " +
			"and one statement cannot update a row twice: send one of them", Err: err}
	}
	return out, err
}

// conflictSQL builds the ON CONFLICT clause of on.
func (t *table) conflictSQL(on OnConflict) (string, error) {
	target := on.Columns
	if len(target) == 0 {
		target = []string{t.cols[t.key].name}
	}
	quote := func(names []string, what string) ([]string, error) {
		out := make([]string, len(names))
		for i, n := range names {
			ci, ok := t.byName[n]
			if !ok {
				return nil, &InvalidError{Table: t.name, Column: n, Reason: "no such column " + what + "; the columns are " + t.names}
			}
			out[i] = t.cols[ci].quoted
		}
		return out, nil
	}
	cols, err := quote(target, "to detect conflicts on")
	if err != nil {
		return "", err
	}
	clause := " ON CONFLICT (" + strings.Join(cols, ", ") + ") "
	if len(on.Update) == 0 {
		return clause + "DO NOTHING", nil
	}
	if slices.Contains(on.Update, t.cols[t.key].name) {
		return "", &InvalidError{Table: t.name, Column: t.cols[t.key].name, Reason: "the key cannot be changed on conflict"}
	}
	set, err := quote(on.Update, "to update on conflict")
	if err != nil {
		return "", err
	}
	for i, c := range set {
		set[i] = c + " = EXCLUDED." + c
	}
	return clause + "DO UPDATE SET " + strings.Join(set, ", "), nil
}
