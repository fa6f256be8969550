package main

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"ariga.io/atlas/sql/postgres"

	"example.com/service/src/db"
	"example.com/service/src/testenv"
)

const enumSQL = "CREATE TYPE mood AS ENUM ('sad', 'ok');\n"

const simpleSQL = `-- the simple table
CREATE TABLE simple (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name varchar(50) NOT NULL,
    size smallint DEFAULT 0,
    mood mood
);
`

const itemSQL = `CREATE TABLE item (
    id serial PRIMARY KEY,
    label text NOT NULL DEFAULT 'none',
    simple_id uuid
);
`

// TestSyncSteps syncs an empty database to the models, then through one
// change of each kind; after every sync the target's catalog equals the
// models loaded directly, and a second sync finds nothing to do.
func TestSyncSteps(t *testing.T) {
	requirePostgres(t)
	target := testenv.CreateDatabase(t, "manage_target_")
	dir := t.TempDir()

	steps := []struct {
		name        string
		files       map[string]string
		destructive string // a DESTRUCTIVE note the plan must show, if any
		safe        bool   // the plan must mark nothing destructive
	}{
		{name: "from empty", files: map[string]string{"00_types.sql": enumSQL, "simple.sql": simpleSQL}, safe: true},
		{name: "add table", files: map[string]string{"00_types.sql": enumSQL, "simple.sql": simpleSQL, "sub/item.sql": itemSQL}, safe: true},
		{name: "add column", files: map[string]string{"00_types.sql": enumSQL, "simple.sql": strings.Replace(simpleSQL,
			"name varchar(50) NOT NULL,", "name varchar(50) NOT NULL,\n    note text DEFAULT 'n/a',", 1), "sub/item.sql": itemSQL}, safe: true},
		{
			name: "drop column", files: map[string]string{"00_types.sql": enumSQL, "simple.sql": strings.Replace(simpleSQL,
				"    size smallint DEFAULT 0,\n", "", 1), "sub/item.sql": itemSQL},
			destructive: `-- DESTRUCTIVE: drops column "size" of table "simple"`,
		},
		{name: "add index", files: map[string]string{"00_types.sql": enumSQL, "simple.sql": strings.Replace(simpleSQL,
			"    size smallint DEFAULT 0,\n", "", 1), "sub/item.sql": itemSQL + "CREATE UNIQUE INDEX item_label ON item (lower(label));\n"}, safe: true},
		{name: "add foreign key", files: map[string]string{"00_types.sql": enumSQL, "simple.sql": strings.Replace(simpleSQL,
			"    size smallint DEFAULT 0,\n", "", 1), "sub/item.sql": strings.Replace(itemSQL, "simple_id uuid", "simple_id uuid REFERENCES simple (id) ON DELETE CASCADE", 1) +
			"CREATE UNIQUE INDEX item_label ON item (lower(label));\n"}, safe: true},
		{
			name: "change column type", files: map[string]string{"00_types.sql": enumSQL, "simple.sql": strings.Replace(simpleSQL,
				"    size smallint DEFAULT 0,\n", "", 1), "sub/item.sql": strings.Replace(strings.Replace(itemSQL, "simple_id uuid", "simple_id uuid REFERENCES simple (id) ON DELETE CASCADE", 1),
				"label text", "label varchar(20)", 1) + "CREATE UNIQUE INDEX item_label ON item (lower(label));\n"},
			destructive: `-- DESTRUCTIVE: changes column "label" of table "item" from text to character varying(20)`,
		},
		{name: "add enum value", files: map[string]string{"00_types.sql": strings.Replace(enumSQL, "'ok'", "'meh', 'ok', 'great'", 1), "simple.sql": strings.Replace(simpleSQL,
			"    size smallint DEFAULT 0,\n", "", 1), "sub/item.sql": strings.Replace(strings.Replace(itemSQL, "simple_id uuid", "simple_id uuid REFERENCES simple (id) ON DELETE CASCADE", 1),
			"label text", "label varchar(20)", 1) + "CREATE UNIQUE INDEX item_label ON item (lower(label));\n"}, safe: true},
	}
	conn := openTest(t, target)
	for i, st := range steps {
		writeModels(t, dir, st.files)
		r := mustSync(t, target, dir)
		out := r.out.String()
		if !strings.Contains(out, "Applied ") {
			t.Fatalf("step %q: sync applied nothing:\n%s", st.name, out)
		}
		if st.destructive != "" && !strings.Contains(out, st.destructive) {
			t.Errorf("step %q: plan lacks %q:\n%s", st.name, st.destructive, out)
		}
		if st.safe && strings.Contains(out, "DESTRUCTIVE") {
			t.Errorf("step %q: plan marks a safe change destructive:\n%s", st.name, out)
		}
		assertSameCatalog(t, target, loadDirect(t, dir))
		if again := mustSync(t, target, dir).out.String(); strings.TrimSpace(again) != "Already in sync." {
			t.Fatalf("step %q: second sync did not find the target in sync:\n%s", st.name, again)
		}
		if i == 0 {
			// A row written after the first sync must survive every later one.
			if _, err := conn.Exec(`INSERT INTO simple (name, size, mood) VALUES ('kept', 3, 'ok')`); err != nil {
				t.Fatal(err)
			}
		}
	}
	var name, mood string
	if err := conn.QueryRow(`SELECT name, mood FROM simple`).Scan(&name, &mood); err != nil || name != "kept" || mood != "ok" {
		t.Fatalf("row written after the first sync: %q %q, %v; want kept ok", name, mood, err)
	}
}

// TestSyncPrompt: "n" and end of input change nothing; "y" applies.
func TestSyncPrompt(t *testing.T) {
	requirePostgres(t)
	target := testenv.CreateDatabase(t, "manage_target_")
	dir := t.TempDir()
	writeModels(t, dir, map[string]string{"a.sql": enumSQL + simpleSQL})
	mustSync(t, target, dir)
	before := catalog(t, target)

	writeModels(t, dir, map[string]string{"a.sql": enumSQL + simpleSQL, "b.sql": itemSQL})
	for _, answer := range []string{"n\n", "", "whatever\n"} {
		r := syncTo(t, target, dir, answer, false)
		if r.err != nil {
			t.Fatalf("answer %q: %v", answer, r.err)
		}
		out := r.out.String()
		if !strings.Contains(out, `CREATE TABLE "public"."item"`) || !strings.Contains(out, "Apply these changes? [y/N] ") || !strings.Contains(out, "Nothing applied.") {
			t.Fatalf("answer %q: want the plan, the prompt and %q; got:\n%s", answer, "Nothing applied.", out)
		}
		if got := catalog(t, target); strings.Join(got, "\n") != strings.Join(before, "\n") {
			t.Fatalf("answer %q changed the target:\n%s", answer, strings.Join(got, "\n"))
		}
	}
	r := syncTo(t, target, dir, "y\n", false)
	if r.err != nil || !strings.Contains(r.out.String(), "Applied 1 statement(s)") {
		t.Fatalf("answer y: %v\n%s", r.err, r.out)
	}
	assertSameCatalog(t, target, loadDirect(t, dir))
}

// TestSyncFailingFile: a statement that fails names its file, line and
// statement; the target is untouched and the scratch database is gone.
func TestSyncFailingFile(t *testing.T) {
	requirePostgres(t)
	target := testenv.CreateDatabase(t, "manage_target_")
	dir := t.TempDir()
	writeModels(t, dir, map[string]string{
		"a.sql":        enumSQL + simpleSQL,
		"b/broken.sql": "-- refers to a table that does not exist\n\nCREATE INDEX broken_idx\n    ON nowhere (x);\n",
	})
	r := syncTo(t, target, dir, "", true)
	var fe *fileError
	if !errors.As(r.err, &fe) {
		t.Fatalf("want a *fileError, got %v", r.err)
	}
	msg := r.err.Error()
	for _, want := range []string{"broken.sql:3:", "CREATE INDEX broken_idx", `relation "nowhere" does not exist`} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if len(r.scratches()) != 1 {
		t.Fatalf("want one scratch database logged, got %v\n%s", r.scratches(), r.log)
	}
	if got := catalog(t, target); len(got) != 0 {
		t.Fatalf("failed sync changed the target: %v", got)
	}
}

// A syntax error is reported at its own line, not the statement's first.
func TestSyncSyntaxErrorLine(t *testing.T) {
	requirePostgres(t)
	target := testenv.CreateDatabase(t, "manage_target_")
	dir := t.TempDir()
	writeModels(t, dir, map[string]string{
		"typo.sql": "-- a table\nCREATE TABLE typo (\n    id int PRIMARY KEY,\n    name text,\n    price numeric(10 2)\n);\n",
	})
	r := syncTo(t, target, dir, "", true)
	if r.err == nil || !strings.Contains(r.err.Error(), "typo.sql:5:") || !strings.Contains(r.err.Error(), "syntax error") {
		t.Fatalf("error %v, want it at typo.sql:5 (the line of the syntax error)", r.err)
	}
}

// TestSyncLock: a sync waiting at the prompt holds the lock; a second sync
// reports ErrLocked after its timeout; the first then applies.
func TestSyncLock(t *testing.T) {
	first := startAtPrompt(t)
	target, dir := first.target, first.dir

	second, _, _ := newOptions(target, dir, strings.NewReader(""))
	second.noprompt = true
	second.lockTimeout = 300 * time.Millisecond
	err := syncCmd(context.Background(), second)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "manage_target_") {
		t.Fatalf("second sync: want ErrLocked naming the database, got %v", err)
	}
	if got := catalog(t, target); len(got) != 0 {
		t.Fatalf("the locked-out sync changed the target: %v", got)
	}

	if err := first.answer("y\n"); err != nil {
		t.Fatalf("first sync: %v\n%s", err, first.log)
	}
	assertSameCatalog(t, target, loadDirect(t, dir))
	assertDropped(t, result{log: first.log}.scratches())
	// The lock was released: a third sync gets it at once.
	if r := mustSync(t, target, dir); !strings.Contains(r.out.String(), "Already in sync.") {
		t.Fatalf("third sync: %s", r.out)
	}
}

// TestSyncTargetChanged: when the target changes between the shown plan and
// the answer, nothing is applied.
func TestSyncTargetChanged(t *testing.T) {
	s := startAtPrompt(t)
	target := s.target
	if _, err := openTest(t, target).Exec(`CREATE TABLE intruder (id int)`); err != nil {
		t.Fatal(err)
	}
	if err := s.answer("y\n"); !errors.Is(err, errChanged) {
		t.Fatalf("want errChanged, got %v", err)
	}
	if got := strings.Join(catalog(t, target), "\n"); got != "column intruder.id integer\ntable intruder" {
		t.Fatalf("target after a refused apply:\n%s", got)
	}
}

// TestSyncErrors: unreachable server, empty models directory, a removed enum
// value.
func TestSyncErrors(t *testing.T) {
	requirePostgres(t)
	t.Run("unreachable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		dir := t.TempDir()
		writeModels(t, dir, map[string]string{"a.sql": simpleSQL})
		o, _, _ := newOptions("x", dir, strings.NewReader(""))
		o.cfg = db.Config{Host: "127.0.0.1", Port: port, Database: "appdb"}
		err = syncCmd(context.Background(), o)
		want := `127.0.0.1:` + strconv.Itoa(port) + ` (database "appdb"`
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "cannot connect") {
			t.Fatalf("want an error naming %s, got %v", want, err)
		}
	})
	t.Run("no models", func(t *testing.T) {
		target := testenv.CreateDatabase(t, "manage_target_")
		r := syncTo(t, target, t.TempDir(), "", true)
		if !errors.Is(r.err, errNoModels) {
			t.Fatalf("want errNoModels, got %v", r.err)
		}
	})
	t.Run("missing models directory", func(t *testing.T) {
		target := testenv.CreateDatabase(t, "manage_target_")
		r := syncTo(t, target, t.TempDir()+"/nope", "", true)
		if r.err == nil || !strings.Contains(r.err.Error(), "nope") {
			t.Fatalf("want an error naming the directory, got %v", r.err)
		}
	})
	t.Run("enum value removed", func(t *testing.T) {
		target := testenv.CreateDatabase(t, "manage_target_")
		dir := t.TempDir()
		writeModels(t, dir, map[string]string{"a.sql": "CREATE TYPE mood AS ENUM ('sad', 'ok', 'great');\n" + simpleSQL})
		mustSync(t, target, dir)
		before := catalog(t, target)
		writeModels(t, dir, map[string]string{"a.sql": enumSQL + simpleSQL})
		r := syncTo(t, target, dir, "", true)
		if r.err == nil || !strings.Contains(r.err.Error(), `value "great"`) {
			t.Fatalf("want an error naming the removed value, got %v", r.err)
		}
		if got := catalog(t, target); strings.Join(got, "\n") != strings.Join(before, "\n") {
			t.Fatal("refused sync changed the target")
		}
	})
}

// TestSyncWarnsIgnoredObjects: a view in a model file is reported by file,
// line and statement, on stderr and under the plan.
func TestSyncWarnsIgnoredObjects(t *testing.T) {
	requirePostgres(t)
	target := testenv.CreateDatabase(t, "manage_target_")
	dir := t.TempDir()
	writeModels(t, dir, map[string]string{"a.sql": enumSQL + simpleSQL + "\nCREATE VIEW sad AS\n  SELECT * FROM simple WHERE mood = 'sad';\n"})
	r := mustSync(t, target, dir)
	want := "a.sql:10: views are not diffed by the Atlas library, keep them in step by hand: CREATE VIEW sad AS"
	if !strings.Contains(r.log.String(), "warning: ") || !strings.Contains(r.log.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, r.log)
	}
	if !strings.Contains(r.out.String(), "-- WARNING: ") {
		t.Errorf("plan lacks the warning:\n%s", r.out)
	}
}

// TestSyncDropsStaleScratch: a scratch database left by a killed run (old,
// unused) is dropped by the next run; a fresh one is left alone.
func TestSyncDropsStaleScratch(t *testing.T) {
	requirePostgres(t)
	admin := testenv.Admin(t)
	stale := scratchPrefix + "20000101t000000_" + testenv.Name("")[:8]
	fresh := scratchPrefix + time.Now().UTC().Format(scratchTimeLayout) + "_" + testenv.Name("")[:8]
	for _, n := range []string{stale, fresh} {
		if _, err := admin.Exec("CREATE DATABASE " + quoteIdent(n)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = admin.Exec("DROP DATABASE IF EXISTS " + quoteIdent(n)) })
	}
	target := testenv.CreateDatabase(t, "manage_target_")
	dir := t.TempDir()
	writeModels(t, dir, map[string]string{"a.sql": itemSQL})
	mustSync(t, target, dir)
	if databaseExists(t, stale) {
		t.Errorf("stale scratch database %s survived", stale)
	}
	if !databaseExists(t, fresh) {
		t.Errorf("fresh scratch database %s was dropped", fresh)
	}
}

// TestLockIsAtlasLock: the lock sync takes is the driver's advisory lock, so
// holding it from outside also keeps sync out.
func TestLockIsAtlasLock(t *testing.T) {
	requirePostgres(t)
	target := testenv.CreateDatabase(t, "manage_target_")
	drv, err := postgres.Open(openTest(t, target))
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := drv.Lock(context.Background(), lockName, 0)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeModels(t, dir, map[string]string{"a.sql": itemSQL})
	o, _, _ := newOptions(target, dir, strings.NewReader(""))
	o.noprompt, o.lockTimeout = true, 200*time.Millisecond
	if err := syncCmd(context.Background(), o); !errors.Is(err, ErrLocked) {
		t.Fatalf("want ErrLocked, got %v", err)
	}
	if err := unlock(); err != nil {
		t.Fatal(err)
	}
	mustSync(t, target, dir)
}
