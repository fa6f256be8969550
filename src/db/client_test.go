package db_test

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"net"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"example.com/service/src/db"
	"example.com/service/src/testenv"
)

var errNoRows = sql.ErrNoRows

func TestConfigFromEnv(t *testing.T) {
	for _, k := range []string{"DB_HOST", "DB_PORT", "DB_USER", "DB_PASS", "DB_NAME", "DB_URL"} {
		t.Setenv(k, "")
	}
	c, err := db.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	want := db.Config{Host: "localhost", Port: 5432, User: "postgres", Password: "postgres", Database: "postgres"}
	if c != want {
		t.Errorf("defaults: %+v, want %+v", c, want)
	}
	if got := c.ConnString(); got != "postgres://postgres:postgres@localhost:5432/postgres" {
		t.Errorf("ConnString = %q", got)
	}

	t.Setenv("DB_HOST", "db.internal")
	t.Setenv("DB_PORT", "6543")
	t.Setenv("DB_USER", "app")
	t.Setenv("DB_PASS", "s3cret")
	t.Setenv("DB_NAME", "items")
	c, err = db.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if got := c.String(); got != `db.internal:6543 (database "items", user "app")` {
		t.Errorf("String = %q", got)
	}
	if got := c.WithDatabase("tmp").ConnString(); got != "postgres://app:s3cret@db.internal:6543/tmp" {
		t.Errorf("WithDatabase: %q", got)
	}

	// A socket directory is a host too.
	sock := db.Config{Host: "/var/run/postgresql", Port: 5433, Database: "d"}.ConnString()
	if pc, err := pgx.ParseConfig(sock); err != nil || pc.Host != "/var/run/postgresql" || pc.Port != 5433 || pc.Database != "d" {
		t.Errorf("socket directory: %q parses to %+v, %v", sock, pc, err)
	}

	// An invalid setting is refused, naming the variable and its value.
	for _, bad := range []struct{ key, value, want string }{
		{"DB_PORT", "x", `DB_PORT="x": not a port number`},
		{"DB_PORT", "0", `DB_PORT="0": not a port number`},
		{"DB_PORT", "70000", `DB_PORT="70000": not a port number`},
		{"DB_PORT", "-1", `DB_PORT="-1": not a port number`},
		{"DB_HOST", "db host", `DB_HOST="db host"`},
	} {
		t.Setenv(bad.key, bad.value)
		if _, err := db.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s=%q: %v, want an error with %s", bad.key, bad.value, err, bad.want)
		}
		t.Setenv(bad.key, "")
	}

	t.Setenv("DB_URL", "postgres://u:hunter2@h:1/d?sslmode=disable")
	c, err = db.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if got := c.String(); got != `h:1 (database "d", user "u")` {
		t.Errorf("String of the URL form = %q", got)
	}
	if got := c.WithDatabase("other").ConnString(); got != "postgres://u:hunter2@h:1/other?sslmode=disable" {
		t.Errorf("WithDatabase of the URL form = %q", got)
	}
	for _, bad := range []string{"mysql://u:hunter2@h/d", "postgres://u:hunter2@h:99999/d", "postgres://u:hunter2@h:x/d", "://hunter2"} {
		t.Setenv("DB_URL", bad)
		_, err := db.ConfigFromEnv()
		if err == nil || !strings.HasPrefix(err.Error(), "DB_URL=") {
			t.Errorf("DB_URL=%s: %v, want an error naming DB_URL", bad, err)
		} else if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("DB_URL=%s: error %q shows the password", bad, err)
		}
	}
}

func TestOpenGivesUpWithOneClearLine(t *testing.T) {
	port := testenv.FreePorts(t, 1)[0]
	cfg := db.Config{Host: "127.0.0.1", Port: port, Database: "x", Password: "s3cret"}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := db.Open(ctx, cfg)
	if err == nil {
		t.Fatal("Open succeeded against a closed port")
	}
	msg := err.Error()
	prefix := `cannot reach PostgreSQL at 127.0.0.1:` + strconv.Itoa(port) + ` (database "x", user "postgres"): `
	if !strings.HasPrefix(msg, prefix) || strings.Contains(msg, "\n") || strings.Contains(msg, "s3cret") {
		t.Errorf("error %q: want one line starting %q, without the password", msg, prefix)
	}
	m := regexp.MustCompile(`gave up after (\d+) attempts`).FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("error %q does not say how often it tried", msg)
	}
	if n, _ := strconv.Atoi(m[1]); n < 3 {
		t.Errorf("%d attempts in 1.5 s: not retrying with a short first backoff", n)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Open returned %v after its context ended", d)
	}
}

// TestOpenRetriesUntilReachable: the server appears (a forwarder starts
// listening) only after Open began; Open keeps trying and then succeeds.
func TestOpenRetriesUntilReachable(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL")
	}
	testenv.RequirePostgres(t)
	port := testenv.FreePorts(t, 1)[0]
	addr := "127.0.0.1:" + strconv.Itoa(port)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); wg.Wait() })
	wg.Go(func() {
		select {
		case <-time.After(700 * time.Millisecond):
		case <-stop:
			return
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("forwarder: %v", err)
			return
		}
		go func() { <-stop; _ = l.Close() }()
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", testenv.PostgresAddr())
			if err != nil {
				_ = in.Close()
				continue
			}
			go func() { _, _ = io.Copy(out, in); _ = out.Close() }()
			go func() { _, _ = io.Copy(in, out); _ = in.Close() }()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	c, err := db.Open(ctx, db.Config{URL: "postgres://" + testenv.Env("DB_USER", "postgres") + ":" +
		testenv.Env("DB_PASS", "postgres") + "@" + addr + "/postgres?sslmode=disable"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if d := time.Since(start); d < 600*time.Millisecond {
		t.Errorf("Open returned after %v, before the server was reachable", d)
	}
	var one int
	if err := c.Get(ctx, &one, "SELECT 1"); err != nil || one != 1 {
		t.Errorf("query after the retried Open: %d, %v", one, err)
	}
}

func TestOpenFailsFastOnMissingDatabase(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL")
	}
	testenv.RequirePostgres(t)
	name := testenv.Name("dbtest_missing_")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err := db.Open(ctx, db.Config{URL: testenv.PostgresURL(name)})
	if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "3D000") {
		t.Fatalf("open a missing database: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v: retried an error that waiting cannot fix", d)
	}
}

func TestClientQueriesAndTables(t *testing.T) {
	c := newClient(t, thingSchema+`CREATE TABLE "b_other" (id int PRIMARY KEY); CREATE TABLE a_first (id int);`)
	ctx := context.Background()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	tables, err := c.Tables(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tables, []string{"a_first", "b_other", "thing"}) {
		t.Errorf("Tables = %q", tables)
	}

	res, err := c.NamedExec(ctx, `INSERT INTO thing (name, count) VALUES (:name, :count)`, map[string]any{"name": "n1", "count": 4})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Errorf("NamedExec affected %d rows", n)
	}
	if _, err := c.Exec(ctx, `INSERT INTO thing (name) VALUES ($1), ($2)`, "n2", "n3"); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Name  string `db:"name"`
		Count int16  `db:"count"`
	}
	if err := c.NamedGet(ctx, &got, `SELECT name, count FROM thing WHERE name = :name`, struct {
		Name string `db:"name"`
	}{"n1"}); err != nil || got.Count != 4 {
		t.Errorf("NamedGet: %+v, %v", got, err)
	}
	var names []string
	if err := c.Select(ctx, &names, `SELECT name FROM thing WHERE name > $1 ORDER BY name`, "n1"); err != nil ||
		!slices.Equal(names, []string{"n2", "n3"}) {
		t.Errorf("Select: %q, %v", names, err)
	}
	names = nil
	if err := c.NamedSelect(ctx, &names, `SELECT name FROM thing WHERE count = :c ORDER BY name`, map[string]any{"c": 0}); err != nil ||
		!slices.Equal(names, []string{"n2", "n3"}) {
		t.Errorf("NamedSelect: %q, %v", names, err)
	}
	_, err = c.Exec(ctx, `INSERT INTO thing (name) VALUES ($1)`, "n1")
	if !errors.Is(err, db.ErrConflict) {
		t.Errorf("Exec of a duplicate: %v, want ErrConflict", err)
	}
}

func TestInTx(t *testing.T) {
	c := newClient(t, thingSchema)
	ctx := context.Background()
	things := db.MustModel[Thing](c, "thing")

	t.Run("commit", func(t *testing.T) {
		var a, b Thing
		err := c.InTx(ctx, func(tx *db.Tx) error {
			var err error
			if a, err = things.In(tx).Create(ctx, Thing{Name: "tx-a"}); err != nil {
				return err
			}
			// Not visible outside before the commit.
			if _, err := things.Read(ctx, a.ID); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("uncommitted row seen outside the transaction: %v", err)
			}
			if b, err = things.In(tx).Create(ctx, Thing{Name: "tx-b"}); err != nil {
				return err
			}
			_, err = things.In(tx).Update(ctx, a.ID, map[string]any{"note": "seen " + b.ID.String()})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if n := count(t, c, "thing", "name IN ('tx-a', 'tx-b')"); n != 2 {
			t.Errorf("%d committed rows, want 2", n)
		}
		if got, err := things.Read(ctx, a.ID); err != nil || *got.Note != "seen "+b.ID.String() {
			t.Errorf("update inside the transaction not committed: %v", err)
		}
	})

	t.Run("rollback on error", func(t *testing.T) {
		boom := errors.New("boom")
		var id uuid.UUID
		err := c.InTx(ctx, func(tx *db.Tx) error {
			row, err := things.In(tx).Create(ctx, Thing{Name: "tx-err"})
			if err != nil {
				return err
			}
			id = row.ID
			if _, err := tx.Exec(ctx, `UPDATE thing SET note = 'touched' WHERE name = 'tx-a'`); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("InTx returned %v, want fn's error", err)
		}
		if n := count(t, c, "thing", "id = $1 OR note = 'touched'", id); n != 0 {
			t.Error("writes of a failed transaction were kept")
		}
	})

	t.Run("rollback on a failed statement", func(t *testing.T) {
		err := c.InTx(ctx, func(tx *db.Tx) error {
			if _, err := things.In(tx).Create(ctx, Thing{Name: "tx-partial"}); err != nil {
				return err
			}
			_, err := things.In(tx).Create(ctx, Thing{Name: "tx-a"}) // taken
			return err
		})
		if !errors.Is(err, db.ErrConflict) {
			t.Fatalf("InTx returned %v, want the conflict", err)
		}
		if n := count(t, c, "thing", "name = 'tx-partial'"); n != 0 {
			t.Error("the first write of a failed transaction was kept")
		}
	})

	t.Run("rollback on panic", func(t *testing.T) {
		var recovered any
		func() {
			defer func() { recovered = recover() }()
			_ = c.InTx(ctx, func(tx *db.Tx) error {
				if _, err := things.In(tx).Create(ctx, Thing{Name: "tx-panic"}); err != nil {
					return err
				}
				panic("handler bug")
			})
		}()
		if recovered != "handler bug" {
			t.Fatalf("recovered %v, want the panic to continue after the rollback", recovered)
		}
		if n := count(t, c, "thing", "name = 'tx-panic'"); n != 0 {
			t.Error("the write of a panicking transaction was kept")
		}
		// The pool is still healthy: the connection was not left in a transaction.
		for range 20 {
			if _, err := things.Create(ctx, Thing{Name: testenv.Name("after-panic-")}); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// A transaction function that leaves through runtime.Goexit (t.Fatal inside
// it, in a test) neither commits nor keeps its connection: the pool of one
// connection still serves the next query, and the row is not there.
func TestInTxRollsBackOnGoexit(t *testing.T) {
	testenv.RequirePostgres(t)
	if testing.Short() {
		t.Skip("needs PostgreSQL; skipped with -short")
	}
	name := testenv.CreateDatabase(t, "dbtest_")
	ctx := context.Background()
	c, err := db.Open(ctx, db.Config{URL: testenv.PostgresURL(name), MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Exec(ctx, `CREATE TABLE t (v int)`); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.InTx(ctx, func(tx *db.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO t VALUES (1)`); err != nil {
				return err
			}
			runtime.Goexit()
			return nil
		})
	}()
	<-done
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var n int
	if err := c.Get(pingCtx, &n, `SELECT count(*) FROM t`); err != nil {
		t.Fatalf("the pool's only connection is still held by the abandoned transaction: %v", err)
	}
	if n != 0 {
		t.Errorf("the abandoned transaction's insert is visible: %d rows", n)
	}
}

// DB_SSLMODE is honoured against the real server, and a TLS setting that
// cannot work fails at once with what to change. (The local server's TLS
// uses Debian's self-signed snakeoil certificate.)
func TestTLSModes(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL; skipped with -short")
	}
	testenv.RequirePostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	plain, err := db.Open(ctx, db.Config{URL: testenv.PostgresURL("postgres")})
	if err != nil {
		t.Fatal(err)
	}
	var ssl string
	_ = plain.Get(ctx, &ssl, "SHOW ssl")
	var certFile string
	_ = plain.Get(ctx, &certFile, "SHOW ssl_cert_file")
	_ = plain.Close()
	if ssl != "on" {
		t.Skip("the server has no TLS (ssl = " + ssl + ")")
	}
	cfg := func(mode, root string) db.Config {
		port, _ := strconv.Atoi(testenv.Env("DB_PORT", "5432"))
		return db.Config{
			Host: testenv.Env("DB_HOST", "127.0.0.1"), Port: port,
			User: testenv.Env("DB_USER", "postgres"), Password: testenv.Env("DB_PASS", "postgres"),
			SSLMode: mode, SSLRootCert: root,
		}
	}
	encrypted := func(c *db.Client) bool {
		var on bool
		if err := c.Get(ctx, &on, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"); err != nil {
			t.Fatal(err)
		}
		return on
	}
	for mode, want := range map[string]bool{"disable": false, "require": true} {
		c, err := db.Open(ctx, cfg(mode, ""))
		if err != nil {
			t.Fatalf("sslmode %s: %v", mode, err)
		}
		if got := encrypted(c); got != want {
			t.Errorf("sslmode %s: encrypted %v, want %v", mode, got, want)
		}
		_ = c.Close()
	}
	// verify-full to a certificate that cannot verify (self-signed, not for
	// 127.0.0.1): refused at once, saying what to change.
	start := time.Now()
	_, err = db.Open(ctx, cfg("verify-full", ""))
	if err == nil || !regexp.MustCompile(`DB_SSLROOTCERT|DB_SSLMODE=verify-ca`).MatchString(err.Error()) || time.Since(start) > 5*time.Second {
		t.Errorf("verify-full with a certificate that does not verify: %v after %s, want a quick error saying what to set", err, time.Since(start))
	}
	// verify-ca with the certificate as its own CA: connected, encrypted.
	if _, err := os.Stat(certFile); err == nil {
		c, err := db.Open(ctx, cfg("verify-ca", certFile))
		if err != nil {
			t.Fatalf("verify-ca with DB_SSLROOTCERT=%s: %v", certFile, err)
		}
		if !encrypted(c) {
			t.Error("verify-ca connection is not encrypted")
		}
		_ = c.Close()
	}
}
