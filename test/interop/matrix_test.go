//go:build interop

package interop

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
)

// A cell of the interop matrix: one behaviour, checked once, that works or
// fails with the reason.
type cellResult struct {
	section, name string
	err           error
	note          string // what a working cell is worth knowing, e.g. a format difference
}

var matrix struct {
	sync.Mutex
	cells []cellResult
}

// cell runs check as the subtest name of t and records its outcome in the
// matrix. check returns nil when the behaviour is as issue 15 asks, or an
// error saying precisely what differs; note, when it returns one, is shown
// beside a working cell.
func cell(t *testing.T, name string, check func() (note string, err error)) {
	t.Helper()
	section := t.Name()
	t.Run(name, func(t *testing.T) {
		note, err := check()
		matrix.Lock()
		matrix.cells = append(matrix.cells, cellResult{section: section, name: name, err: err, note: note})
		matrix.Unlock()
		if err != nil {
			t.Error(err)
		}
	})
}

// check is cell for checks without a note.
func check(t *testing.T, name string, f func() error) {
	t.Helper()
	cell(t, name, func() (string, error) { return "", f() })
}

// printMatrix writes the matrix: one line per cell, grouped by section,
// then the totals.
func printMatrix(w io.Writer) {
	matrix.Lock()
	defer matrix.Unlock()
	if len(matrix.cells) == 0 {
		return
	}
	works := 0
	fmt.Fprintln(w, "\nINTEROP MATRIX (cell -> works/FAILS: reason)")
	section := ""
	for _, c := range matrix.cells {
		if c.section != section {
			section = c.section
			fmt.Fprintf(w, "\n== %s\n", strings.ReplaceAll(strings.TrimPrefix(section, "Test"), "_", " "))
		}
		if c.err == nil {
			works++
			line := "works"
			if c.note != "" {
				line += " (" + c.note + ")"
			}
			fmt.Fprintf(w, "  %-58s %s\n", c.name, line)
			continue
		}
		reason := oneLine(c.err.Error(), 400)
		if c.note != "" {
			reason += " [" + oneLine(c.note, 200) + "]"
		}
		fmt.Fprintf(w, "  %-58s FAILS: %s\n", c.name, reason)
	}
	fmt.Fprintf(w, "\n%d cells: %d work, %d fail\n", len(matrix.cells), works, len(matrix.cells)-works)
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}
