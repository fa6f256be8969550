package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCleanDump(t *testing.T) {
	in := "\\restrict X\nSET a = 1;\n  \\connect db\nCREATE TABLE t (s text DEFAULT '\\n');\n\\unrestrict X"
	got, n := cleanDump(in)
	want := "\nSET a = 1;\n\nCREATE TABLE t (s text DEFAULT '\\n');\n"
	if got != want || n != 3 {
		t.Fatalf("cleanDump = %q, %d; want %q, 3", got, n, want)
	}
	if strings.Count(got, "\n") != strings.Count(in, "\n") {
		t.Fatal("line numbers not kept")
	}
}

func TestUnsupported(t *testing.T) {
	srcs := []source{{path: "a.sql", text: `CREATE TYPE mood AS ENUM ('a');
CREATE TYPE pair AS (x int, y int);
CREATE TABLE t (id serial PRIMARY KEY, m mood);
CREATE SEQUENCE public.t2_id_seq;
ALTER SEQUENCE public.t2_id_seq OWNED BY public.t2.id;
CREATE SEQUENCE lonely;
-- a comment
CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;
CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION g();
CREATE MATERIALIZED VIEW mv AS SELECT 1;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE SCHEMA IF NOT EXISTS public;
CREATE SCHEMA audit;
COMMENT ON TABLE t IS 'kept';
ALTER TYPE mood ADD VALUE 'b';
GRANT SELECT ON t TO PUBLIC;
`}}
	ws, err := unsupported(srcs)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range ws {
		got = append(got, fmt.Sprintf("%d %s", w.line, w.kind))
	}
	want := []string{
		"2 types other than enums", "6 sequences", "8 functions", "9 triggers", "10 materialized views",
		"11 extensions", "12 domains", "14 schemas other than public", "17 privileges",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if ws[2].String() != "a.sql:8: functions are not diffed by the Atlas library, keep them in step by hand: CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;" {
		t.Errorf("warning text: %s", ws[2])
	}
}

func TestWidens(t *testing.T) {
	for _, c := range []struct {
		from, to string
		want     bool
	}{
		{"smallint", "integer", true},
		{"integer", "bigint", true},
		{"bigint", "integer", false},
		{"character varying(10)", "character varying(20)", true},
		{"character varying(20)", "character varying(10)", false},
		{"character varying(10)", "text", true},
		{"text", "character varying(10)", false},
		{"text", "integer", false},
		{"integer", "text", false},
		{"real", "double precision", true},
		{"integer", "numeric", true},
	} {
		if got := widens(c.from, c.to); got != c.want {
			t.Errorf("widens(%q, %q) = %v, want %v", c.from, c.to, got, c.want)
		}
	}
}

func TestIsStale(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for name, want := range map[string]bool{
		scratchPrefix + "20260102t030400_ab12": false, // 5 s old: maybe not connected yet
		scratchPrefix + "20260102t020000_ab12": true,
		scratchPrefix + "garbage":              true,
	} {
		if got := isStale(name, now); got != want {
			t.Errorf("isStale(%s) = %v, want %v", name, got, want)
		}
	}
}

func TestParseArgs(t *testing.T) {
	var sink strings.Builder
	for _, c := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"sync"}, true},
		{[]string{"sync", "--noprompt"}, true},
		{[]string{"sync", "noprompt"}, true},
		{[]string{"pending", "--dump", "x.sql"}, true},
		{nil, false},
		{[]string{"migrate"}, false},
		{[]string{"sync", "--dump", "x"}, false},
		{[]string{"sync", "extra"}, false},
	} {
		cmd, o, err := parseArgs(c.args, &sink)
		if (err == nil) != c.ok {
			t.Errorf("parseArgs(%q): %v", c.args, err)
		}
		if err == nil && len(c.args) > 1 && c.args[1] == "noprompt" && !o.noprompt {
			t.Errorf("parseArgs(%q): noprompt not set", c.args)
		}
		if err == nil && (cmd != c.args[0] || !strings.HasSuffix(o.models, "src/models")) {
			t.Errorf("parseArgs(%q) = %q, models %q", c.args, cmd, o.models)
		}
	}
}

// The exit status of bad usage is 2, with the usage text.
func TestRunUsage(t *testing.T) {
	var out, errOut strings.Builder
	if code := run(t.Context(), []string{"frobnicate"}, strings.NewReader(""), &out, &errOut); code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	if !strings.Contains(errOut.String(), `unknown command "frobnicate"`) || !strings.Contains(errOut.String(), "usage:") {
		t.Fatalf("stderr: %s", errOut.String())
	}
}

// A pg_dump script loses its psql meta-commands and keeps its line count.
func Example_cleanDump() {
	script := "\\restrict k3y\nCREATE TABLE public.t (id integer);\n\\unrestrict k3y\n"
	cleaned, blanked := cleanDump(script)
	fmt.Printf("%q, %d lines blanked\n", cleaned, blanked)
	// Output: "\nCREATE TABLE public.t (id integer);\n\n", 2 lines blanked
}

// Type changes that keep every value are not marked destructive.
func Example_widens() {
	fmt.Println(widens("integer", "bigint"), widens("character varying(50)", "character varying(20)"))
	// Output: true false
}
