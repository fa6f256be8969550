// Package testenv gives tests the RabbitMQ broker and PostgreSQL server they
// run against, read from the same environment variables the service reads
// (BROKER_HOST, BROKER_PORT, BROKER_USER, BROKER_PASS, BROKER_VHOST, DB_HOST,
// DB_PORT, DB_USER, DB_PASS, DB_NAME) with the same local defaults, and
// the administrators they create vhosts, databases and roles as
// (BROKER_ADMIN_USER, BROKER_ADMIN_PASS, DB_ADMIN_USER, DB_ADMIN_PASS; by
// default the same users).
//
// Tests that need a service call [RequireBroker] or [RequirePostgres] first:
// when the service is unreachable the test fails at once with one line naming
// the address and what to do, instead of hanging or skipping silently.
// [CreateDatabase] gives a test its own database and drops it afterwards.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"example.com/service/src/internal/env"
)

// Env returns the value of the environment variable key, or def when it is
// unset or empty.
func Env(key, def string) string { return env.Get(key, def) }

// BrokerAddr is host:port of the RabbitMQ broker.
func BrokerAddr() string {
	return net.JoinHostPort(Env("BROKER_HOST", "127.0.0.1"), Env("BROKER_PORT", "5672"))
}

// BrokerURL is the amqp:// URL of the broker, with credentials and vhost
// (the default vhost "/" is written %2F, as AMQP URLs want).
func BrokerURL() string {
	vhost := Env("BROKER_VHOST", "/")
	u := url.URL{
		Scheme:  "amqp",
		User:    url.UserPassword(Env("BROKER_USER", "guest"), Env("BROKER_PASS", "guest")),
		Host:    BrokerAddr(),
		Path:    "/" + vhost,
		RawPath: "/" + url.PathEscape(vhost),
	}
	return u.String()
}

// PostgresAddr is host:port of the PostgreSQL server.
func PostgresAddr() string {
	return net.JoinHostPort(Env("DB_HOST", "127.0.0.1"), Env("DB_PORT", "5432"))
}

// PostgresURL is the postgres:// URL of database on the configured server,
// as the role the tests administer it with: DB_ADMIN_USER and
// DB_ADMIN_PASS when set (the devcontainer sets the superuser there, as its
// DB_USER is the service's rows-only role), else DB_USER and DB_PASS.
func PostgresURL(database string) string {
	user, pass := DBAdmin()
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, pass),
		Host:     PostgresAddr(),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// DBAdmin returns the user and password the tests create databases and
// roles as: DB_ADMIN_USER and DB_ADMIN_PASS, else DB_USER and DB_PASS,
// else postgres/postgres.
func DBAdmin() (user, pass string) {
	if u := os.Getenv("DB_ADMIN_USER"); u != "" {
		return u, os.Getenv("DB_ADMIN_PASS")
	}
	return Env("DB_USER", "postgres"), Env("DB_PASS", "postgres")
}

// BrokerAdmin returns the user and password the tests create vhosts as
// through the management API: BROKER_ADMIN_USER and BROKER_ADMIN_PASS,
// else BROKER_USER and BROKER_PASS, else guest/guest.
func BrokerAdmin() (user, pass string) {
	if u := os.Getenv("BROKER_ADMIN_USER"); u != "" {
		return u, os.Getenv("BROKER_ADMIN_PASS")
	}
	return Env("BROKER_USER", "guest"), Env("BROKER_PASS", "guest")
}

// RequireBroker skips the test with -short (it needs RabbitMQ), and fails
// it at once when nothing listens at BrokerAddr.
func RequireBroker(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skipf("needs RabbitMQ (%s); skipped with -short", BrokerAddr())
	}
	requireTCP(tb, "RabbitMQ", BrokerAddr(), brokerHint)
}

// RequirePostgres skips the test with -short (it needs PostgreSQL), and
// fails it at once when nothing listens at PostgresAddr.
func RequirePostgres(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skipf("needs PostgreSQL (%s); skipped with -short", PostgresAddr())
	}
	requireTCP(tb, "PostgreSQL", PostgresAddr(), postgresHint)
}

// Services a package's Examples need, for Main.
const (
	NeedsBroker   = "RabbitMQ"
	NeedsPostgres = "PostgreSQL"
)

// Main runs the tests of a package that needs services: without -short a
// service that does not answer fails the run at once, naming it and how to
// start it (with -short, each test that needs one skips itself through
// RequireBroker and RequirePostgres). Call it from TestMain.
func Main(m *testing.M, needs ...string) { run(m, false, needs) }

// MainWithExamples is Main for a package whose Examples need the services
// too: an Example cannot skip itself, so with -short they are left out,
// and one line says so.
func MainWithExamples(m *testing.M, needs ...string) { run(m, true, needs) }

func run(m *testing.M, examples bool, needs []string) {
	flag.Parse()
	if testing.Short() {
		if examples {
			fmt.Printf("-short: the Examples need %s and are skipped\n", strings.Join(needs, " and "))
			_ = flag.Set("test.skip", "^Example")
		}
		os.Exit(m.Run())
	}
	var errs []error
	for _, n := range needs {
		switch n {
		case NeedsBroker:
			errs = append(errs, dialTCP("RabbitMQ", BrokerAddr(), brokerHint))
		case NeedsPostgres:
			errs = append(errs, dialTCP("PostgreSQL", PostgresAddr(), postgresHint))
		}
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(os.Stderr, "the tests of this package need a service that does not answer (go test -short skips them):\n%v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

const (
	brokerHint   = "start it with `rabbitmq-server -detached` or set BROKER_HOST/BROKER_PORT"
	postgresHint = "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` or set DB_HOST/DB_PORT"
)

// CheckServices returns nil when both RabbitMQ and PostgreSQL accept
// connections, or an error with one line for each that does not, naming its
// address and how to start it. It is for TestMain, where no testing.TB exists.
func CheckServices() error {
	return errors.Join(
		dialTCP("RabbitMQ", BrokerAddr(), brokerHint),
		dialTCP("PostgreSQL", PostgresAddr(), postgresHint))
}

func requireTCP(tb testing.TB, what, addr, hint string) {
	tb.Helper()
	if err := dialTCP(what, addr, hint); err != nil {
		tb.Fatal(err)
	}
}

func dialTCP(what, addr, hint string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("%s is unreachable at %s: %w; %s", what, addr, err, hint)
	}
	return conn.Close()
}

// EffectsVar names the variable that `go tool task test:effects` sets to 1:
// the exactly-once tests then run at the full sizes (20,000
// messages, 200 kill runs) instead of the everyday suite's smaller ones.
const EffectsVar = "TEST_EFFECTS_FULL"

// MemoryVar names the variable that `go tool task test:memory` sets to 1:
// the hostile-input tests that hold gigabytes of messages in the broker
// (bursts of 10 MB messages, 100 MiB messages, gzip bombs) run only then.
const MemoryVar = "TEST_MEMORY"

// RequireMemoryRun skips tb outside `go tool task test:memory`, saying so.
func RequireMemoryRun(tb testing.TB) {
	tb.Helper()
	if os.Getenv(MemoryVar) != "1" {
		tb.Skip("runs in go tool task test:memory (CI runs it after the everyday suite): it puts gigabytes of messages through the broker")
	}
}

// Count is the size of a test's load: the integer in the environment
// variable key when set (a bad value fails tb, naming it), else full under
// test:effects (EffectsVar=1), else everyday.
func Count(tb testing.TB, key string, everyday, full int) int {
	tb.Helper()
	if v := os.Getenv(key); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			tb.Fatalf("%s=%q: want a positive whole number", key, v)
		}
		return n
	}
	if os.Getenv(EffectsVar) == "1" {
		return full
	}
	return everyday
}

// FreePorts returns n distinct TCP ports on 127.0.0.1 that nothing listens
// on at the moment: it holds each open until it has them all, so two never
// come out the same (asked one at a time, the kernel may hand out a port
// again once it is closed).
func FreePorts(tb testing.TB, n int) []int {
	tb.Helper()
	ports := make([]int, 0, n)
	var lc net.ListenConfig
	for range n {
		l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("find a free TCP port on 127.0.0.1: %v", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// Name returns prefix followed by a random hex suffix: a name for queues and
// databases that no other test run uses.
func Name(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// CreateDatabase creates an empty database named prefix<pid>_<random>
// (prefix: lowercase letters, digits and underscores) and returns its name.
// The database is dropped when the test ends. Databases with the same prefix
// that a killed run left behind (their process is gone and nobody is connected
// to them) are dropped first, so leftovers do not pile up.
func CreateDatabase(tb testing.TB, prefix string) string {
	tb.Helper()
	RequirePostgres(tb)
	name, drop, err := ScratchDatabase(prefix)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := drop(); err != nil {
			tb.Error(err)
		}
	})
	return name
}

// ScratchDatabase is CreateDatabase for code without a testing.TB (an
// Example's set-up): it returns the new database's name and the function
// that drops it (and closes the connection to the server it holds).
func ScratchDatabase(prefix string) (name string, drop func() error, err error) {
	admin, err := sql.Open("pgx", PostgresURL("postgres"))
	if err != nil {
		return "", nil, fmt.Errorf("open PostgreSQL at %s: %w", PostgresAddr(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stale, err := staleDatabases(ctx, admin, prefix)
	if err != nil {
		_ = admin.Close()
		return "", nil, fmt.Errorf("list the databases %s* left by killed runs on %s: %w", prefix, PostgresAddr(), err)
	}
	for _, n := range stale {
		_, _ = admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+quoteIdent(n))
	}
	name = OwnedName(prefix)
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+quoteIdent(name)); err != nil {
		_ = admin.Close()
		return "", nil, fmt.Errorf("create database %s on %s: %w", name, PostgresAddr(), err)
	}
	return name, func() error {
		defer admin.Close()
		if _, err := admin.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+quoteIdent(name)+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop database %s: %w", name, err)
		}
		return nil
	}, nil
}

// staleDatabases lists the databases named prefix<pid>_* whose process has
// exited and that nobody is connected to.
func staleDatabases(ctx context.Context, admin *sql.DB, prefix string) ([]string, error) {
	rows, err := admin.QueryContext(ctx, `SELECT datname FROM pg_database d WHERE starts_with(datname, $1)
		 AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)`, prefix)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		if Orphaned(n, prefix) {
			names = append(names, n)
		}
	}
	return names, rows.Err()
}

// Strings runs query, whose rows are one text column, and returns the
// column's values in row order; an error fails the test naming the query.
func Strings(tb testing.TB, db *sql.DB, query string, args ...any) []string {
	tb.Helper()
	rows, err := db.QueryContext(context.Background(), query, args...)
	if err != nil {
		tb.Fatalf("query %q: %v", query, err)
	}
	defer rows.Close()
	var values []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			tb.Fatalf("query %q: %v", query, err)
		}
		values = append(values, v)
	}
	if err := rows.Err(); err != nil {
		tb.Fatalf("query %q: %v", query, err)
	}
	return values
}

// OwnedName returns prefix<pid>_<random>: a unique name for a database or
// vhost that carries the id of the process that made it, so a later run can
// tell a leftover (see Orphaned).
func OwnedName(prefix string) string {
	return Name(fmt.Sprintf("%s%d_", prefix, os.Getpid()))
}

// Orphaned reports whether name was made by OwnedName(prefix) in a process
// that has exited.
func Orphaned(name, prefix string) bool {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return false
	}
	digits, _, ok := strings.Cut(rest, "_")
	if !ok {
		return false
	}
	pid, err := strconv.Atoi(digits)
	if err != nil {
		return false
	}
	err = syscall.Kill(pid, 0)
	return err != nil && !errors.Is(err, syscall.EPERM)
}

// Admin opens the server's maintenance database ("postgres") with the pgx
// driver; it is closed when the test ends.
func Admin(tb testing.TB) *sql.DB {
	tb.Helper()
	db, err := sql.Open("pgx", PostgresURL("postgres"))
	if err != nil {
		tb.Fatalf("open PostgreSQL at %s: %v", PostgresAddr(), err)
	}
	tb.Cleanup(func() { _ = db.Close() })
	return db
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// Eventually polls cond until it holds, and fails the test naming what
// when it still does not after within. It polls every 100 µs at first,
// then less often, up to every 20 ms, so a condition that asks the broker
// does not flood it.
func Eventually(tb testing.TB, within time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for pause := 100 * time.Microsecond; !cond(); pause = min(2*pause, 20*time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("after %v: %s", within, what)
		}
		time.Sleep(pause)
	}
}

// Buffer is a bytes.Buffer safe for one writer (a process's output, a
// logger) and concurrent readers (the test).
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// RestartsLock is the file that serializes, on one machine, the tests that
// stop or restart the shared RabbitMQ or PostgreSQL (the fault and cluster
// suites, the worker's broker restart test).
//
// Only Go test processes take it, through LockRestarts: Go opens files
// close-on-exec, so a broker or database a test restarts does not inherit
// the lock. (A shell that took it with `exec 9>file; flock 9` would pass
// fd 9 to every child, and a RabbitMQ node restarted under it would hold
// the lock for as long as it runs.)
const RestartsLock = "/tmp/service-restarts.lock"

// restartsWait bounds how long LockRestarts waits for another run.
const restartsWait = 15 * time.Minute

// LockRestarts waits until no other test run on this machine restarts the
// shared services, and holds the lock until release is called. It logs
// once while it waits, and gives up after 15 minutes with an error naming
// the processes that hold the lock.
func LockRestarts(logf func(format string, args ...any)) (release func(), err error) {
	return lockFile(RestartsLock, restartsWait, logf)
}

// lockFile takes an exclusive flock on path, waiting up to wait.
func lockFile(path string, wait time.Duration, logf func(format string, args ...any)) (release func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	fd := int(f.Fd())
	give := time.Now().Add(wait)
	for waited := false; ; waited = true {
		err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !waited {
			logf("waiting for %s: another run on this machine restarts RabbitMQ or PostgreSQL (held by %s)", path, lockHolders(path))
		}
		if time.Now().After(give) {
			_ = f.Close()
			return nil, fmt.Errorf("%s is still held after %v by %s: wait for that run to end, or stop the process if it is not a test run", path, wait, lockHolders(path))
		}
		time.Sleep(time.Second)
	}
}

// lockHolders names the processes that have path open ("pid 12
// (go test ...)"), read from /proc; "unknown processes" where that fails.
func lockHolders(path string) string {
	procs, _ := os.ReadDir("/proc")
	var out []string
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		fds, _ := os.ReadDir("/proc/" + p.Name() + "/fd")
		for _, fd := range fds {
			if target, _ := os.Readlink("/proc/" + p.Name() + "/fd/" + fd.Name()); target == path {
				cmd, _ := os.ReadFile("/proc/" + p.Name() + "/cmdline")
				out = append(out, fmt.Sprintf("pid %d (%s)", pid, truncateCmd(strings.ReplaceAll(strings.TrimRight(string(cmd), "\x00"), "\x00", " "))))
				break
			}
		}
	}
	if len(out) == 0 {
		return "unknown processes"
	}
	return strings.Join(out, ", ")
}

func truncateCmd(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
