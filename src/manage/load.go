package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"unicode/utf8"

	"ariga.io/atlas/sql/migrate"
	"ariga.io/atlas/sql/postgres"
	"ariga.io/atlas/sql/schema"
	"github.com/jackc/pgx/v5/pgconn"
)

// managedSchema is the only schema manage inspects, diffs and changes.
const managedSchema = "public"

// source is one SQL script to load into a scratch database.
type source struct {
	path string // as shown in messages: relative to the module root if inside it
	text string // what is executed (a dump with its psql meta-lines blanked)
}

// errNoModels is returned when the models directory holds no .sql file: an
// empty desired schema would plan dropping every table.
var errNoModels = errors.New("no model .sql files")

// readModels returns every *.sql file under dir, recursively, sorted by path.
func readModels(o options, dir string) ([]source, error) {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(d.Name(), ".sql") {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read models directory %s: %w; create it or pass --models", o.rel(dir), err)
	}
	sort.Slice(paths, func(i, j int) bool { return filepath.ToSlash(paths[i]) < filepath.ToSlash(paths[j]) })
	if len(paths) == 0 {
		return nil, fmt.Errorf("%w under %s: refusing to plan an empty schema (it would drop every table); add a table's .sql file or pass --models", errNoModels, o.rel(dir))
	}
	srcs := make([]source, 0, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read model file: %w", err)
		}
		srcs = append(srcs, source{path: o.rel(p), text: string(b)})
	}
	return srcs, nil
}

// cleanDump blanks the lines of a pg_dump script that are psql meta-commands
// (they start with a backslash: \restrict, \unrestrict, \connect, ...), so
// the rest can be executed as SQL. Line numbers are kept. It returns the
// cleaned text and how many lines were blanked.
func cleanDump(text string) (string, int) {
	lines := strings.SplitAfter(text, "\n")
	n := 0
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimLeft(l, " \t"), `\`) {
			lines[i] = newlineOf(l)
			n++
		}
	}
	return strings.Join(lines, ""), n
}

func newlineOf(l string) string {
	if strings.HasSuffix(l, "\n") {
		return "\n"
	}
	return ""
}

// lineOf returns the 1-based line of byte offset pos in text.
func lineOf(text string, pos int) int {
	if pos > len(text) {
		pos = len(text)
	}
	return strings.Count(text[:pos], "\n") + 1
}

// firstLine returns the first non-empty line of a statement, shortened.
func firstLine(stmt string) string {
	for _, l := range strings.Split(stmt, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			if len(l) > 120 {
				l = l[:117] + "..."
			}
			return l
		}
	}
	return ""
}

// scanStmts splits a script into statements the way the executor will.
func scanStmts(src source) ([]*migrate.Stmt, error) {
	stmts, err := (*postgres.Driver)(nil).ScanStmts(src.text)
	if err != nil {
		return nil, fmt.Errorf("split %s into statements: %w; check for an unterminated quote, comment or $$ body", src.path, err)
	}
	return stmts, nil
}

// stmtLine returns the line where stmt starts in text, skipping whitespace
// the scanner counted into its position.
func stmtLine(text string, stmt *migrate.Stmt) int {
	pos := stmt.Pos
	for pos < len(text) && (text[pos] == ' ' || text[pos] == '\n' || text[pos] == '\t' || text[pos] == '\r') {
		pos++
	}
	return lineOf(text, pos)
}

// errorLine returns the line of text where the server says stmt failed:
// the line of the error's position (a syntax error's, say) when the server
// gives one, else the line the statement starts on.
func errorLine(text string, stmt *migrate.Stmt, err error) int {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Position <= 0 || !strings.HasPrefix(text[min(stmt.Pos, len(text)):], stmt.Text) {
		return stmtLine(text, stmt)
	}
	// Position counts characters of the statement from 1.
	off, chars := 0, int(pe.Position)-1
	for off < len(stmt.Text) && chars > 0 {
		_, size := utf8.DecodeRuneInString(stmt.Text[off:])
		off += size
		chars--
	}
	return lineOf(text, stmt.Pos+off)
}

// A warning names a statement whose object the Atlas library does not diff.
type warning struct {
	path string
	line int
	kind string
	stmt string
}

func (w warning) String() string {
	return fmt.Sprintf("%s:%d: %s are not diffed by the Atlas library, keep them in step by hand: %s", w.path, w.line, w.kind, w.stmt)
}

// ignoredKinds matches statements (upper-cased, whitespace collapsed) that
// create or change objects the open-source Atlas library does not inspect or
// diff. Enums (CREATE TYPE ... AS ENUM, ALTER TYPE ... ADD VALUE), table and
// column comments, serial sequences and the public schema are diffed and so
// are excluded below.
var ignoredKinds = []struct {
	re   *regexp.Regexp
	kind string
}{
	{regexp.MustCompile(`^CREATE (OR REPLACE )?(TEMP |TEMPORARY )?(RECURSIVE )?VIEW `), "views"},
	{regexp.MustCompile(`^CREATE MATERIALIZED VIEW `), "materialized views"},
	{regexp.MustCompile(`^CREATE (OR REPLACE )?FUNCTION `), "functions"},
	{regexp.MustCompile(`^CREATE (OR REPLACE )?PROCEDURE `), "procedures"},
	{regexp.MustCompile(`^CREATE (OR REPLACE )?AGGREGATE `), "aggregates"},
	{regexp.MustCompile(`^CREATE EVENT TRIGGER `), "event triggers"},
	{regexp.MustCompile(`^CREATE (OR REPLACE )?(CONSTRAINT )?TRIGGER `), "triggers"},
	{regexp.MustCompile(`^(CREATE|ALTER) (TEMP |TEMPORARY |UNLOGGED )?SEQUENCE `), "sequences"},
	{regexp.MustCompile(`^CREATE EXTENSION `), "extensions"},
	{regexp.MustCompile(`^CREATE DOMAIN `), "domains"},
	{regexp.MustCompile(`^CREATE TYPE `), "types other than enums"},
	{regexp.MustCompile(`^CREATE SCHEMA `), "schemas other than public"},
	{regexp.MustCompile(`^CREATE (OR REPLACE )?RULE `), "rules"},
	{regexp.MustCompile(`^CREATE POLICY `), "row-level security policies"},
	{regexp.MustCompile(`^ALTER TABLE .* ROW LEVEL SECURITY`), "row-level security settings"},
	{regexp.MustCompile(`^(GRANT|REVOKE|ALTER DEFAULT PRIVILEGES) `), "privileges"},
	{regexp.MustCompile(`^CREATE (CAST|OPERATOR|COLLATION|CONVERSION|TEXT SEARCH|PUBLICATION|SUBSCRIPTION|SERVER|FOREIGN|STATISTICS|LANGUAGE|USER MAPPING|ACCESS METHOD|TRANSFORM)`), "casts, operators, collations, text search, foreign and other catalog objects"},
	{regexp.MustCompile(`^COMMENT ON (VIEW|MATERIALIZED VIEW|FUNCTION|PROCEDURE|TRIGGER|SEQUENCE|EXTENSION|DOMAIN|SCHEMA|RULE|POLICY) `), "comments on objects that are not diffed"},
}

var (
	enumType     = regexp.MustCompile(`^CREATE TYPE \S+ AS ENUM\b`)
	publicSchema = regexp.MustCompile(`^(CREATE SCHEMA (IF NOT EXISTS )?|COMMENT ON SCHEMA )"?PUBLIC"?( |;|$)`)
	seqOwnedBy   = regexp.MustCompile(`^ALTER SEQUENCE (IF EXISTS )?(\S+) OWNED BY (\S+)`)
	seqName      = regexp.MustCompile(`^(CREATE|ALTER) (TEMP |TEMPORARY |UNLOGGED )?SEQUENCE (IF (NOT )?EXISTS )?(\S+)`)
	spaces       = regexp.MustCompile(`\s+`)
)

// normStmt upper-cases a statement and collapses its whitespace.
func normStmt(s string) string {
	return strings.TrimSpace(spaces.ReplaceAllString(strings.ToUpper(s), " "))
}

// normSeq reduces a sequence name to compare the forms pg_dump writes.
func normSeq(s string) string {
	s = strings.TrimSuffix(strings.ReplaceAll(s, `"`, ""), ";")
	return strings.TrimPrefix(s, "PUBLIC.")
}

// unsupported lists the statements of srcs that create or change objects the
// Atlas library does not diff. Sequences owned by a column (serial) are
// diffed as part of the column and are not listed.
func unsupported(srcs []source) ([]warning, error) {
	type scanned struct {
		src   source
		stmts []*migrate.Stmt
	}
	all := make([]scanned, 0, len(srcs))
	owned := map[string]bool{}
	for _, src := range srcs {
		stmts, err := scanStmts(src)
		if err != nil {
			return nil, err
		}
		all = append(all, scanned{src, stmts})
		for _, st := range stmts {
			if m := seqOwnedBy.FindStringSubmatch(normStmt(st.Text)); m != nil && m[3] != "NONE" && m[3] != "NONE;" {
				owned[normSeq(m[2])] = true
			}
		}
	}
	var warns []warning
	for _, s := range all {
		for _, st := range s.stmts {
			n := normStmt(st.Text)
			if enumType.MatchString(n) || publicSchema.MatchString(n) {
				continue
			}
			if m := seqName.FindStringSubmatch(n); m != nil && owned[normSeq(m[5])] {
				continue
			}
			for _, k := range ignoredKinds {
				if k.re.MatchString(n) {
					warns = append(warns, warning{path: s.src.path, line: stmtLine(s.src.text, st), kind: k.kind, stmt: firstLine(st.Text)})
					break
				}
			}
		}
	}
	return warns, nil
}

// fileError reports a statement of a .sql file that failed to execute.
type fileError struct {
	path string
	line int
	stmt string
	err  error
}

func (e *fileError) Error() string {
	return fmt.Sprintf("%s:%d: statement failed: %s: %v; fix the file and run again", e.path, e.line, e.stmt, e.err)
}

func (e *fileError) Unwrap() error { return e.err }

// load executes srcs, in order, in the scratch database on one session and
// returns the inspected public schema. A failing statement is reported as a
// *fileError naming the file, line and statement.
//
// probeSettings makes load first try every top-level SET or set_config
// statement of srcs in a rolled-back transaction and blank those the server
// rejects (a dump made by a newer pg_dump may set parameters this server does
// not know); each one blanked is logged.
func load(ctx context.Context, o options, sc *scratch, srcs []source, probeSettings bool) (*schema.Realm, error) {
	conn, err := openDB(ctx, sc.cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// One session for every statement, as psql would run a script: SET
	// lines of a dump apply to the statements after them.
	sess, err := conn.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to scratch database %s: %w", sc.name, err)
	}
	defer sess.Close()
	if probeSettings {
		for i := range srcs {
			if srcs[i], err = dropRejectedSettings(ctx, o, sess, srcs[i]); err != nil {
				return nil, err
			}
		}
	}
	drv, err := postgres.Open(sess)
	if err != nil {
		return nil, fmt.Errorf("open scratch database %s: %w", sc.name, err)
	}
	dir := &migrate.MemDir{}
	byName := map[string]source{}
	for i, src := range srcs {
		// The executor runs files in name order: the index keeps ours.
		name := fmt.Sprintf("%06d_source.sql", i+1)
		if err := dir.WriteFile(name, []byte(src.text)); err != nil {
			return nil, fmt.Errorf("stage %s: %w", src.path, err)
		}
		byName[name] = src
	}
	files, err := dir.Files()
	if err != nil {
		return nil, fmt.Errorf("stage sources: %w", err)
	}
	ex, err := migrate.NewExecutor(drv, dir, migrate.NopRevisionReadWriter{})
	if err != nil {
		return nil, fmt.Errorf("prepare executor: %w", err)
	}
	if err := ex.ExecuteFiles(ctx, files); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var se *migrate.StmtExecError
		if errors.As(err, &se) {
			src := byName[se.File.Name()]
			return nil, &fileError{path: src.path, line: errorLine(src.text, se.Stmt, se.Err), stmt: firstLine(se.Stmt.Text), err: se.Err}
		}
		return nil, fmt.Errorf("load %s into scratch database %s: %w", describe(srcs), sc.name, err)
	}
	// Inspect on a fresh session: the scripts may have changed this one's
	// search_path (pg_dump empties it).
	_ = sess.Close()
	insp, err := conn.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to scratch database %s: %w", sc.name, err)
	}
	defer insp.Close()
	if _, err := insp.ExecContext(ctx, "RESET ALL"); err != nil {
		return nil, fmt.Errorf("reset session on scratch database %s: %w", sc.name, err)
	}
	return inspect(ctx, insp, "scratch database "+sc.name)
}

// describe names the sources for messages.
func describe(srcs []source) string {
	names := make([]string, len(srcs))
	for i, s := range srcs {
		names[i] = s.path
	}
	return strings.Join(names, ", ")
}

var settingStmt = regexp.MustCompile(`^(SET |SELECT PG_CATALOG\.SET_CONFIG\()`)

// dropRejectedSettings blanks the SET / set_config statements of src that
// the server rejects, keeping line numbers.
func dropRejectedSettings(ctx context.Context, o options, sess execQuerier, src source) (source, error) {
	stmts, err := scanStmts(src)
	if err != nil {
		return src, err
	}
	text := []byte(src.text)
	for _, st := range stmts {
		if !settingStmt.MatchString(normStmt(st.Text)) {
			continue
		}
		if probe(ctx, sess, st.Text) == nil {
			continue
		}
		if ctx.Err() != nil {
			return src, ctx.Err()
		}
		start := strings.Index(src.text[st.Pos:], st.Text)
		if start < 0 {
			continue
		}
		start += st.Pos
		for i := start; i < start+len(st.Text); i++ {
			if text[i] != '\n' {
				text[i] = ' '
			}
		}
		o.log.Warn("skipping a setting this server rejects", "file", src.path, "line", lineOf(src.text, start), "statement", firstLine(st.Text))
	}
	src.text = string(text)
	return src, nil
}

type execQuerier = schema.ExecQuerier

// probe runs stmt in a transaction that is rolled back.
func probe(ctx context.Context, sess execQuerier, stmt string) error {
	if _, err := sess.ExecContext(ctx, "BEGIN"); err != nil {
		return err
	}
	_, err := sess.ExecContext(ctx, stmt)
	if _, rerr := sess.ExecContext(ctx, "ROLLBACK"); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

// inspect returns the public schema of the database behind conn as a realm.
func inspect(ctx context.Context, conn execQuerier, what string) (*schema.Realm, error) {
	drv, err := postgres.Open(conn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", what, err)
	}
	realm, err := drv.InspectRealm(ctx, &schema.InspectRealmOption{Schemas: []string{managedSchema}})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("inspect %s: %w", what, err)
	}
	return realm, nil
}
