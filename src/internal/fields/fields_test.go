package fields_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"example.com/service/src/internal/fields"
)

type base struct {
	ID      int `db:"id,key"`
	private int //nolint:unused // an unexported field is never visited
}

type Audit struct {
	By string `db:"by"`
}

type row struct {
	base
	*Audit
	Name    string `db:"name,default"`
	Skipped string `db:"-"`
	Plain   int
	hidden  string //nolint:unused // an unexported field is never visited
}

func names(t *testing.T, typ reflect.Type, follow bool) []string {
	t.Helper()
	var got []string
	err := fields.Walk(typ, "db", follow, func(f fields.Field) error {
		got = append(got, fmt.Sprintf("%s%v", f.Name, f.Path))
		return nil
	})
	if err != nil {
		t.Fatalf("Walk(%s): %v", typ, err)
	}
	return got
}

func TestWalk(t *testing.T) {
	typ := reflect.TypeFor[row]()
	// Not following: the embedded pointer is visited as itself.
	if got, want := strings.Join(names(t, typ, false), " "), "ID[0 0] Audit[1] Name[2] Plain[4]"; got != want {
		t.Errorf("without follow: visited %s, want %s", got, want)
	}
	if got, want := strings.Join(names(t, typ, true), " "), "ID[0 0] By[1 0] Name[2] Plain[4]"; got != want {
		t.Errorf("with follow: visited %s, want %s", got, want)
	}
}

func TestWalkTag(t *testing.T) {
	var got []fields.Field
	_ = fields.Walk(reflect.TypeFor[row](), "db", true, func(f fields.Field) error {
		got = append(got, f)
		return nil
	})
	if len(got) != 4 {
		t.Fatalf("visited %d fields, want 4", len(got))
	}
	if f := got[0]; f.TagName != "id" || !f.Has("key") || f.Has("default") {
		t.Errorf("ID: TagName %q, TagOpts %q; want id with option key only", f.TagName, f.TagOpts)
	}
	if f := got[2]; f.TagName != "name" || !f.Has("default") {
		t.Errorf("Name: TagName %q, TagOpts %q; want name with option default", f.TagName, f.TagOpts)
	}
	if f := got[3]; f.TagName != "" || f.TagOpts != "" {
		t.Errorf("Plain: TagName %q, TagOpts %q; want neither", f.TagName, f.TagOpts)
	}
}

// loop embeds a pointer to itself: a walk that follows pointers never ends
// on its own.
type loop struct {
	*loop //nolint:unused // only Walk reads it, through reflection
	N     int
}

func TestWalkStopsOnACycle(t *testing.T) {
	n := 0
	err := fields.Walk(reflect.TypeFor[loop](), "json", true, func(fields.Field) error { n++; return nil })
	if err == nil || !strings.Contains(err.Error(), "embedded more than") {
		t.Fatalf("Walk of a self-embedding type: err %v, want one about the depth", err)
	}
	if n != 0 {
		t.Errorf("visited %d fields before the error; the innermost come first, want 0", n)
	}
}

func TestWalkVisitError(t *testing.T) {
	stop := errors.New("stop")
	n := 0
	err := fields.Walk(reflect.TypeFor[row](), "db", true, func(fields.Field) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("Walk returned %v after %d visits, want the visitor's error after 1", err, n)
	}
}
