package main

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"example.com/service/src/db"
	"example.com/service/src/testenv"
)

// waitFor polls s() until it contains want or a generous deadline passes.
func waitFor(t *testing.T, what string, s func() string, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(s(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never showed %q; got:\n%s", what, want, s())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// result is one in-process manage command.
type result struct {
	out, log *testenv.Buffer
	err      error
}

// scratches returns the scratch databases the command logged creating.
func (r result) scratches() []string {
	var names []string
	for _, m := range regexp.MustCompile(`created scratch database" database=(manage_scratch_\w+)`).FindAllStringSubmatch(r.log.String(), -1) {
		names = append(names, m[1])
	}
	return names
}

// newOptions points a command at database on the test server with the given
// models directory and stdin.
func newOptions(database, models string, stdin io.Reader) (options, *testenv.Buffer, *testenv.Buffer) {
	out, log := &testenv.Buffer{}, &testenv.Buffer{}
	return options{
		cfg:         db.Config{URL: testenv.PostgresURL(database)},
		models:      models,
		lockTimeout: 10 * time.Second,
		stdin:       stdin,
		stdout:      out,
		stderr:      log,
		log:         slog.New(slog.NewTextHandler(log, nil)),
	}, out, log
}

// syncTo runs sync against target with the models in dir.
func syncTo(t *testing.T, target, dir, stdin string, noprompt bool) result {
	t.Helper()
	o, out, log := newOptions(target, dir, strings.NewReader(stdin))
	o.noprompt = noprompt
	err := syncCmd(context.Background(), o)
	r := result{out: out, log: log, err: err}
	assertDropped(t, r.scratches())
	return r
}

// mustSync is syncTo with --noprompt that must succeed.
func mustSync(t *testing.T, target, dir string) result {
	t.Helper()
	r := syncTo(t, target, dir, "", true)
	if r.err != nil {
		t.Fatalf("sync: %v\nstdout:\n%s\nlog:\n%s", r.err, r.out, r.log)
	}
	return r
}

// promptedSync is a sync started in the background that waits at its
// prompt.
type promptedSync struct {
	target, dir string
	log         *testenv.Buffer
	stdin       *io.PipeWriter
	done        chan error
}

// startAtPrompt creates a target database and a models directory (the enum
// and simple tables), starts a sync between them and returns once it asks
// "Apply these changes?".
func startAtPrompt(t *testing.T) *promptedSync {
	t.Helper()
	requirePostgres(t)
	s := &promptedSync{target: testenv.CreateDatabase(t, "manage_target_"), dir: t.TempDir(), done: make(chan error, 1)}
	writeModels(t, s.dir, map[string]string{"a.sql": enumSQL + simpleSQL})
	stdin, w := io.Pipe()
	o, out, log := newOptions(s.target, s.dir, stdin)
	s.log, s.stdin = log, w
	go func() { s.done <- syncCmd(context.Background(), o) }()
	t.Cleanup(func() { _ = w.Close() })
	waitFor(t, "sync", out.String, "Apply these changes? [y/N] ")
	return s
}

// answer types text at the prompt and returns the sync's result (a sync
// that ended without reading it leaves the write to the test's cleanup).
func (s *promptedSync) answer(text string) error {
	go func() { _, _ = io.WriteString(s.stdin, text) }()
	return <-s.done
}

// writeModels replaces the .sql files of dir with files (name -> SQL).
func writeModels(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	old, _ := filepath.Glob(filepath.Join(dir, "*", "*.sql"))
	top, _ := filepath.Glob(filepath.Join(dir, "*.sql"))
	for _, f := range append(old, top...) {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	for name, text := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// openTest opens database on the test server; closed when the test ends.
func openTest(t *testing.T, database string) *sql.DB {
	t.Helper()
	conn, err := sql.Open("pgx", testenv.PostgresURL(database))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// loadDirect creates a database and runs the .sql files of dir in it, sorted
// by path, as plain scripts: the reference the synced target must equal.
func loadDirect(t *testing.T, dir string) string {
	t.Helper()
	name := testenv.CreateDatabase(t, "manage_direct_")
	conn := openTest(t, name)
	var paths []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".sql") {
			paths = append(paths, p)
		}
		return nil
	})
	sort.Strings(paths)
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(string(b)); err != nil {
			t.Fatalf("load %s directly: %v", p, err)
		}
	}
	return name
}

// catalogQuery describes the public schema, one sorted line per table,
// column (type, nullability, default, identity, generated), index,
// constraint and enum (labels in order). Column order is left out: sync
// appends new columns where the reference has them in the middle.
const catalogQuery = `
SELECT 'table ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
       || CASE a.attidentity WHEN '' THEN '' ELSE ' identity ' || a.attidentity::text END
       || CASE a.attgenerated WHEN '' THEN '' ELSE ' generated ' || a.attgenerated::text END
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'constraint ' || cl.relname || '.' || co.conname || ' ' || pg_get_constraintdef(co.oid)
  FROM pg_constraint co JOIN pg_class cl ON cl.oid = co.conrelid JOIN pg_namespace n ON n.oid = co.connamespace
 WHERE n.nspname = 'public'
UNION ALL
SELECT 'enum ' || t.typname || ' ' || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
  FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname = 'public' GROUP BY t.typname
ORDER BY 1`

// catalog returns the catalog lines of database.
func catalog(t *testing.T, database string) []string {
	t.Helper()
	return testenv.Strings(t, openTest(t, database), catalogQuery)
}

// assertSameCatalog fails when the catalogs of two databases differ.
func assertSameCatalog(t *testing.T, got, want string) {
	t.Helper()
	g, w := catalog(t, got), catalog(t, want)
	if strings.Join(g, "\n") != strings.Join(w, "\n") {
		t.Fatalf("catalog of %s differs from the models loaded directly into %s\n--- got\n%s\n--- want\n%s",
			got, want, strings.Join(g, "\n"), strings.Join(w, "\n"))
	}
	if len(w) == 0 {
		t.Fatal("empty reference catalog: the test compares nothing")
	}
}

// assertDropped fails when any of the named databases still exists.
func assertDropped(t *testing.T, names []string) {
	t.Helper()
	if len(names) == 0 {
		return
	}
	admin := testenv.Admin(t)
	for _, n := range names {
		var exists bool
		if err := admin.QueryRow(`SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, n).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if exists {
			t.Errorf("scratch database %s still exists", n)
		}
	}
}

// databaseExists reports whether a database of that name exists.
func databaseExists(t *testing.T, name string) bool {
	t.Helper()
	var exists bool
	if err := testenv.Admin(t).QueryRow(`SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	return exists
}

func requirePostgres(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL; skipped with -short")
	}
	testenv.RequirePostgres(t)
}
