package db

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// Page sizes of [Model.List].
const (
	// DefaultListLimit is the page size when ListOptions.Limit is 0 (the
	// Python transaction-service's default count).
	DefaultListLimit = 50
	// MaxListLimit is the largest page List returns: a larger Limit is
	// refused, not cut, so a caller asking for everything learns to page
	// with Offset.
	MaxListLimit = 1000
)

// ListOptions select, order and page the rows of [Model.List].
type ListOptions struct {
	// Where holds conditions that must all hold (AND); none selects every row.
	Where []Cond
	// OrderBy orders the rows; the key is always the last tiebreaker, so
	// that pages neither repeat nor skip rows of equal sort values. None
	// orders by the key alone.
	OrderBy []Order
	// Limit is the page size, 1 to MaxListLimit; 0 means DefaultListLimit.
	Limit int
	// Offset is how many rows of the ordered result to skip (0 or more).
	Offset int
}

// Cond is a condition on one column for [ListOptions.Where], made by Eq,
// Ne, Lt, Le, Gt, Ge, In, IsNull or NotNull. Values travel as query
// parameters; the column must be one of the model's.
type Cond struct {
	column string
	op     string // SQL operator, or "IN", "IS NULL", "IS NOT NULL"
	values []any
}

// Eq is column = value. A nil value never matches in SQL, so it is refused:
// use IsNull.
func Eq(column string, value any) Cond { return Cond{column, "=", []any{value}} }

// Ne is column <> value (rows where column is NULL do not match).
func Ne(column string, value any) Cond { return Cond{column, "<>", []any{value}} }

// Lt is column < value.
func Lt(column string, value any) Cond { return Cond{column, "<", []any{value}} }

// Le is column <= value.
func Le(column string, value any) Cond { return Cond{column, "<=", []any{value}} }

// Gt is column > value.
func Gt(column string, value any) Cond { return Cond{column, ">", []any{value}} }

// Ge is column >= value.
func Ge(column string, value any) Cond { return Cond{column, ">=", []any{value}} }

// In is column IN (values...); no values matches no row.
func In(column string, values ...any) Cond { return Cond{column, "IN", values} }

// IsNull is column IS NULL.
func IsNull(column string) Cond { return Cond{column: column, op: "IS NULL"} }

// NotNull is column IS NOT NULL.
func NotNull(column string) Cond { return Cond{column: column, op: "IS NOT NULL"} }

// Order is one sort column for [ListOptions.OrderBy], made by Asc or Desc.
type Order struct {
	column string
	desc   bool
}

// Asc orders by column, smallest first (NULLs last, as PostgreSQL does).
func Asc(column string) Order { return Order{column: column} }

// Desc orders by column, largest first (NULLs first, as PostgreSQL does).
func Desc(column string) Order { return Order{column: column, desc: true} }

// List returns one page of the rows that match opts.Where, ordered by
// opts.OrderBy and then the key:
//
//	page, err := transactions.List(ctx, db.ListOptions{
//		Where:   []db.Cond{db.Eq("account_id", account), db.Ge("date", from)},
//		OrderBy: []db.Order{db.Desc("date")},
//		Limit:   50, Offset: 100,
//	})
//
// An unknown column, a nil Eq value, a Limit outside 0..MaxListLimit or a
// negative Offset is an *InvalidError (ErrInvalid) before any SQL runs. No
// match is an empty slice.
func (m *Model[T]) List(ctx context.Context, opts ListOptions) ([]T, error) {
	query, args, err := m.t.listSQL(opts)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", m.t.name, err)
	}
	rows, err := m.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", m.t.name, err)
	}
	return rows, nil
}

// listSQL builds List's query; every column is checked against the table
// and every value is a parameter.
func (t *table) listSQL(opts ListOptions) (string, []any, error) {
	invalid := func(column, format string, args ...any) error {
		return &InvalidError{Table: t.name, Column: column, Reason: fmt.Sprintf(format, args...)}
	}
	limit := opts.Limit
	switch {
	case limit == 0:
		limit = DefaultListLimit
	case limit < 0 || limit > MaxListLimit:
		return "", nil, invalid("", "limit %d: a page holds 1 to %d rows (0 for %d); page through more with Offset", opts.Limit, MaxListLimit, DefaultListLimit)
	}
	if opts.Offset < 0 {
		return "", nil, invalid("", "offset %d: give 0 or more rows to skip", opts.Offset)
	}
	var b strings.Builder
	var args []any
	param := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	b.WriteString("SELECT " + t.colList + " FROM " + t.quoted)
	for i, c := range opts.Where {
		ci, ok := t.byName[c.column]
		if !ok {
			return "", nil, invalid(c.column, "no such column to filter on; the columns are %s", t.names)
		}
		if i == 0 {
			b.WriteString(" WHERE ")
		} else {
			b.WriteString(" AND ")
		}
		col := t.cols[ci].quoted
		switch c.op {
		case "IS NULL", "IS NOT NULL":
			b.WriteString(col + " " + c.op)
		case "IN":
			if len(c.values) == 0 {
				b.WriteString("FALSE")
				continue
			}
			ps := make([]string, len(c.values))
			for j, v := range c.values {
				ps[j] = param(v)
			}
			b.WriteString(col + " IN (" + strings.Join(ps, ", ") + ")")
		case "":
			return "", nil, invalid(c.column, "empty condition: make conditions with db.Eq, db.Lt, db.In, db.IsNull, ...")
		default:
			if c.values[0] == nil {
				return "", nil, invalid(c.column, "%s NULL matches no row; use db.IsNull or db.NotNull", c.op)
			}
			b.WriteString(col + " " + c.op + " " + param(c.values[0]))
		}
	}
	b.WriteString(" ORDER BY ")
	keyed := false
	for _, o := range opts.OrderBy {
		ci, ok := t.byName[o.column]
		if !ok {
			return "", nil, invalid(o.column, "no such column to order by; the columns are %s", t.names)
		}
		b.WriteString(t.cols[ci].quoted)
		if o.desc {
			b.WriteString(" DESC")
		}
		b.WriteString(", ")
		keyed = keyed || ci == t.key
	}
	if !keyed {
		b.WriteString(t.cols[t.key].quoted + ", ")
	}
	query := strings.TrimSuffix(b.String(), ", ")
	query += " LIMIT " + param(limit) + " OFFSET " + param(opts.Offset)
	return query, args, nil
}
