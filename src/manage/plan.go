package main

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"ariga.io/atlas/sql/migrate"
	"ariga.io/atlas/sql/postgres"
	"ariga.io/atlas/sql/schema"
)

// A plan is the SQL that turns one schema into another, statement by
// statement, each with the reasons it may lose data (none for most).
type plan struct {
	stmts []*migrate.Change
	risks [][]string // risks[i] explains why stmts[i] is destructive
}

// destructive counts the statements that may lose data.
func (p *plan) destructive() int {
	n := 0
	for _, r := range p.risks {
		if len(r) > 0 {
			n++
		}
	}
	return n
}

// cmds returns the SQL of every statement.
func (p *plan) cmds() []string {
	out := make([]string, len(p.stmts))
	for i, c := range p.stmts {
		out[i] = c.Cmd
	}
	return out
}

// makePlan diffs current against desired and plans the SQL with planner
// (a driver connected to the database the plan is for).
func makePlan(ctx context.Context, planner migrate.PlanApplier, differ schema.Differ, current, desired *schema.Realm) (*plan, error) {
	changes, err := differ.RealmDiff(current, desired)
	if err != nil {
		return nil, fmt.Errorf("diff the schemas: %w", err)
	}
	if err := checkEnums(changes); err != nil {
		return nil, err
	}
	if len(changes) == 0 {
		return &plan{}, nil
	}
	resetDefaults(changes)
	mp, err := planner.PlanChanges(ctx, "manage", changes)
	if err != nil {
		return nil, fmt.Errorf("plan the changes: %w; the models ask for a change the Atlas library cannot express (reordering enum values, for one): write that step by hand", err)
	}
	p := &plan{stmts: mp.Changes, risks: make([][]string, len(mp.Changes))}
	for i, c := range mp.Changes {
		p.risks[i] = risks(c)
	}
	return p, nil
}

// checkEnums refuses changes that remove values from an enum: PostgreSQL
// cannot drop an enum value, and the Atlas library would plan nothing for it
// when the removed values come last.
func checkEnums(changes []schema.Change) error {
	for _, c := range changes {
		m, ok := c.(*schema.ModifyObject)
		if !ok {
			continue
		}
		from, ok1 := m.From.(*schema.EnumType)
		to, ok2 := m.To.(*schema.EnumType)
		if !ok1 || !ok2 {
			continue
		}
		for _, v := range from.Values {
			if !slices.Contains(to.Values, v) {
				return fmt.Errorf("enum %q: value %q is gone from the models, and PostgreSQL cannot drop an enum value; "+
					"keep the value, or migrate by hand (create a new type, convert the columns, drop the old type)", from.T, v)
			}
		}
	}
	return nil
}

// resetDefaults makes every column whose type changes set its default again.
// PostgreSQL keeps a default's old cast ('x'::text on a column changed to
// varchar): the Atlas library counts that as equal, but the catalog would
// then differ from a database created from the models.
func resetDefaults(changes []schema.Change) {
	for _, c := range changes {
		m, ok := c.(*schema.ModifyTable)
		if !ok {
			continue
		}
		for _, tc := range m.Changes {
			if mc, ok := tc.(*schema.ModifyColumn); ok && mc.Change.Is(schema.ChangeType) && mc.To.Default != nil {
				mc.Change |= schema.ChangeDefault
			}
		}
	}
}

// risks says why a planned statement may lose data: dropped tables, columns,
// schemas and types, and column type changes that are not plain widenings.
func risks(c *migrate.Change) []string {
	var out []string
	switch src := c.Source.(type) {
	case *schema.DropTable:
		out = append(out, fmt.Sprintf("drops table %q and every row in it", src.T.Name))
	case *schema.DropSchema:
		out = append(out, fmt.Sprintf("drops schema %q and everything in it", src.S.Name))
	case *schema.DropObject:
		if e, ok := src.O.(*schema.EnumType); ok {
			out = append(out, fmt.Sprintf("drops enum type %q", e.T))
		}
	case *schema.ModifyTable:
		for _, tc := range src.Changes {
			switch tc := tc.(type) {
			case *schema.DropColumn:
				if mentions(c.Cmd, "DROP COLUMN", tc.C.Name) {
					out = append(out, fmt.Sprintf("drops column %q of table %q and its data", tc.C.Name, src.T.Name))
				}
			case *schema.ModifyColumn:
				if !tc.Change.Is(schema.ChangeType) || !mentions(c.Cmd, "ALTER COLUMN", tc.To.Name) {
					continue
				}
				from, to := typeName(tc.From), typeName(tc.To)
				if !widens(from, to) {
					out = append(out, fmt.Sprintf("changes column %q of table %q from %s to %s: values may be cut or fail to convert", tc.To.Name, src.T.Name, from, to))
				}
			}
		}
	}
	return out
}

// mentions reports whether cmd holds clause followed by the quoted column.
func mentions(cmd, clause, column string) bool {
	return strings.Contains(cmd, clause+" "+strconv.Quote(column)) ||
		strings.Contains(cmd, clause+` "`+strings.ReplaceAll(column, `"`, `""`)+`"`)
}

func typeName(c *schema.Column) string {
	if c.Type == nil || c.Type.Type == nil {
		return "unknown"
	}
	if s, err := postgres.FormatType(c.Type.Type); err == nil {
		return s
	}
	return c.Type.Raw
}

var varcharN = regexp.MustCompile(`^character varying\((\d+)\)$`)

// widens reports whether every value of type from fits type to unchanged.
func widens(from, to string) bool {
	rank := map[string]int{"smallint": 1, "integer": 2, "bigint": 3}
	if rf, ok := rank[from]; ok {
		if rt, ok := rank[to]; ok {
			return rt >= rf
		}
		return to == "numeric"
	}
	switch {
	case from == "real" && to == "double precision":
		return true
	case to == "text" && (from == "character varying" || varcharN.MatchString(from)):
		return true
	case to == "character varying" && (from == "text" || varcharN.MatchString(from)):
		return true
	}
	if mf, mt := varcharN.FindStringSubmatch(from), varcharN.FindStringSubmatch(to); mf != nil && mt != nil {
		nf, _ := strconv.Atoi(mf[1])
		nt, _ := strconv.Atoi(mt[1])
		return nt >= nf
	}
	return false
}

// write prints the plan as SQL: per statement a comment saying what it does,
// a "-- DESTRUCTIVE: ..." line per risk, and the statement ending in ";".
func (p *plan) write(w io.Writer) error {
	for i, c := range p.stmts {
		if c.Comment != "" {
			if _, err := fmt.Fprintf(w, "-- %s\n", upperFirst(c.Comment)); err != nil {
				return err
			}
		}
		for _, r := range p.risks[i] {
			if _, err := fmt.Fprintf(w, "-- DESTRUCTIVE: %s\n", r); err != nil {
				return err
			}
		}
		if _, err := fmt.Fprintf(w, "%s;\n", c.Cmd); err != nil {
			return err
		}
	}
	return nil
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
