package stack

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
)

// Table collects the rows of a fault test's closing table (fault, sent,
// stored, lost, ...) from tests that may run in parallel, and prints it as
// Markdown, ready for the README.
type Table struct {
	title  string
	header []string

	mu   sync.Mutex
	rows [][]string
}

// NewTable returns an empty table with the given title and columns.
func NewTable(title string, columns ...string) *Table {
	return &Table{title: title, header: columns}
}

// Add appends a row, one cell per column, each printed with %v.
func (t *Table) Add(cells ...any) {
	row := make([]string, len(cells))
	for i, c := range cells {
		row[i] = fmt.Sprint(c)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rows = append(t.rows, row)
}

// Print writes the table to w, nothing when it has no rows.
func (t *Table) Print(w io.Writer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.rows) == 0 {
		return
	}
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	line := func(cells []string) { fmt.Fprintln(tw, "| "+strings.Join(cells, "\t| ")+"\t|") }
	line(t.header)
	line(slices.Repeat([]string{"---"}, len(t.header)))
	for _, r := range t.rows {
		line(r)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\n%s:\n%s", t.title, sb.String())
}
