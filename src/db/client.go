// Package db is the service's PostgreSQL layer: a [Client] (a pool of pgx
// connections under sqlx) with plain query helpers and transactions, and a
// generic [Model] that gives any struct with db tags create, read, update
// and delete by key, [Model.List] with filters, order and pages,
// [Model.CreateMany] and [Model.Upsert] in one statement. Dates, money and
// instants have types of their own ([Date], [Decimal], [Timestamp]) that
// travel in JSON the way the Python services write them.
//
// Errors from this package match [ErrNotFound], [ErrConflict] and
// [ErrInvalid] with errors.Is, and carry the table, id and constraint or
// column involved. Values always travel as query parameters; table and
// column names come from code (struct tags, NewModel) and are quoted.
package db

import (
	"context"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/jmoiron/sqlx"
)

// Client is a pool of connections to one database. It is safe for
// concurrent use. Its query helpers (Get, Select, Exec and their Named
// forms) are shared with [Tx].
type Client struct {
	queries
	db  *sqlx.DB
	cfg Config
	log *slog.Logger
}

// Open connects to the database cfg names and returns a Client once the
// server answers. Until then it retries, waiting 100 ms after the first
// failure and twice as long after each next one (at most 5 s), until ctx
// ends; then it fails with one line naming the server, database and user
// (never the password) and the last cause:
//
//	cannot reach PostgreSQL at 127.0.0.1:5432 (database "app", user "postgres"): <cause>
//
// Failures that waiting cannot fix are reported at once: a malformed
// configuration, authentication refused (SQLSTATE class 28) and a database
// that does not exist (3D000).
//
// The pool opens at most cfg.MaxOpenConns connections (default 16).
func Open(ctx context.Context, cfg Config) (*Client, error) {
	if _, _, _, _, err := cfg.Target(); err != nil {
		return nil, fmt.Errorf("open PostgreSQL: %w", err)
	}
	pc, err := pgx.ParseConfig(cfg.ConnString())
	if err != nil {
		return nil, fmt.Errorf("open PostgreSQL at %s: bad connection settings: %w", cfg, err)
	}
	pc.Tracer = cfg.QueryTracer
	sdb := stdlib.OpenDB(*pc)
	sdb.SetMaxOpenConns(cfg.maxOpen())
	sdb.SetMaxIdleConns(cfg.maxIdle())
	sdb.SetConnMaxLifetime(cfg.connMaxLifetime())
	sdb.SetConnMaxIdleTime(cfg.connMaxIdleTime())
	x := sqlx.NewDb(sdb, "pgx")

	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	start := time.Now()
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err = pingOnce(ctx, sdb)
		if err == nil {
			log.Debug("connected to PostgreSQL", "target", cfg.String(), "attempts", attempt)
			return &Client{queries: queries{ext: x}, db: x, cfg: cfg, log: log}, nil
		}
		if permanent(err) {
			_ = sdb.Close()
			return nil, &lineError{fmt.Sprintf("cannot connect to PostgreSQL at %s: %s", cfg, oneLine(err)), err}
		}
		if hint := tlsHint(err); hint != "" {
			_ = sdb.Close()
			return nil, &lineError{fmt.Sprintf("cannot connect to PostgreSQL at %s with sslmode %s: %s", cfg, or(cfg.SSLMode, "(from DB_URL)"), hint), err}
		}
		if ctx.Err() != nil {
			_ = sdb.Close()
			return nil, &lineError{fmt.Sprintf("cannot reach PostgreSQL at %s: %s (gave up after %d attempts in %s)",
				cfg, oneLine(err), attempt, time.Since(start).Round(time.Millisecond)), err}
		}
		log.Warn("PostgreSQL not reachable yet, retrying", "target", cfg.String(),
			"attempt", attempt, "retry_in", wait, "err", oneLine(err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			_ = sdb.Close()
			return nil, &lineError{fmt.Sprintf("cannot reach PostgreSQL at %s: %s (gave up after %d attempts in %s)",
				cfg, oneLine(err), attempt, time.Since(start).Round(time.Millisecond)), err}
		case <-t.C:
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// lineError is an error whose message is one line while it still unwraps
// to the driver's (possibly multi-line) error.
type lineError struct {
	msg string
	err error
}

func (e *lineError) Error() string { return e.msg }
func (e *lineError) Unwrap() error { return e.err }

// oneLine flattens the driver's connect error, which lists each address
// tried on its own line, into one line without repeated entries.
func oneLine(err error) string {
	var parts []string
	for p := range strings.SplitSeq(err.Error(), "\n") {
		if p = strings.TrimSpace(p); p != "" && !slices.Contains(parts, p) {
			parts = append(parts, p)
		}
	}
	return strings.ReplaceAll(strings.Join(parts, "; "), ":; ", ": ")
}

// pingOnce pings with a 10 s bound, so that one silent host cannot use up
// a long ctx in a single attempt.
func pingOnce(ctx context.Context, sdb *sql.DB) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return sdb.PingContext(ctx)
}

// tlsHint explains a TLS failure that retrying cannot fix, "" for others.
func tlsHint(err error) string {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var host x509.HostnameError
	switch {
	case strings.Contains(err.Error(), "server refused TLS connection"):
		return "the server does not offer TLS; give it a certificate, or set DB_SSLMODE=disable where the network is trusted"
	case errors.As(err, &unknown):
		return "its certificate is signed by an authority not trusted here (" + oneLine(err) + "); set DB_SSLROOTCERT to the CA's PEM file"
	case errors.As(err, &host):
		return "its certificate is not for this host name (" + oneLine(err) + "); connect by the name in the certificate, or use DB_SSLMODE=verify-ca"
	case errors.As(err, &invalid):
		return "its certificate is not valid (" + oneLine(err) + ")"
	}
	return ""
}

// permanent reports connection errors that retrying cannot fix.
func permanent(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	return pe.Code == "3D000" || (len(pe.Code) == 5 && pe.Code[:2] == "28")
}

// Config returns the configuration the Client was opened with.
func (c *Client) Config() Config { return c.cfg }

// DB returns the underlying sqlx handle, for what this package does not
// cover. Closing it closes the Client.
func (c *Client) DB() *sqlx.DB { return c.db }

// Ping checks that the server answers.
func (c *Client) Ping(ctx context.Context) error {
	if err := c.db.PingContext(ctx); err != nil {
		return fmt.Errorf("ping PostgreSQL at %s: %w", c.cfg, err)
	}
	return nil
}

// Close closes the pool; queries in flight finish first. Calling Close
// more than once is harmless.
func (c *Client) Close() error { return c.db.Close() }

// Tables returns the names of the tables in the public schema, sorted.
func (c *Client) Tables(ctx context.Context) ([]string, error) {
	var names []string
	if err := c.db.SelectContext(ctx, &names,
		`SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = 'public'`); err != nil {
		return nil, fmt.Errorf("list tables of %s: %w", c.cfg, err)
	}
	slices.Sort(names)
	return names, nil
}

// Tx is a transaction opened by [Client.InTx]. It has the Client's query
// helpers; pass it to [Model.In] to run a model's operations inside it.
// A Tx is not safe for concurrent use, and is unusable once InTx returns.
type Tx struct {
	queries
	tx *sqlx.Tx
}

// InTx runs fn in a transaction. The transaction is committed when fn
// returns nil and rolled back when fn returns an error (which InTx returns,
// joined with any rollback failure) or panics (the panic continues after the
// rollback). A failed commit is returned as an error.
func (c *Client) InTx(ctx context.Context, fn func(tx *Tx) error) error {
	return c.InTxOptions(ctx, nil, fn)
}

// InTxOptions is InTx with the isolation level and read-only flag of opts
// (nil: the server's defaults).
func (c *Client) InTxOptions(ctx context.Context, opts *sql.TxOptions, fn func(tx *Tx) error) error {
	stx, err := c.db.BeginTxx(ctx, opts)
	if err != nil {
		return fmt.Errorf("begin transaction on %s: %w", c.cfg, err)
	}
	committed := false
	defer func() {
		if committed {
			return
		}
		// fn panicked, or left through runtime.Goexit (t.Fatal in a test):
		// roll back either way so the connection goes back to the pool.
		r := recover()
		if rerr := stx.Rollback(); rerr != nil && !errors.Is(rerr, sql.ErrTxDone) {
			c.log.Error("roll back after a transaction function did not return failed", "err", rerr)
		}
		if r != nil {
			panic(r)
		}
	}()
	if err := fn(&Tx{queries: queries{ext: stx}, tx: stx}); err != nil {
		if rerr := stx.Rollback(); rerr != nil && !errors.Is(rerr, sql.ErrTxDone) {
			return errors.Join(err, fmt.Errorf("roll back transaction: %w", rerr))
		}
		return err
	}
	committed = true
	if err := stx.Commit(); err != nil {
		return classify(fmt.Errorf("commit transaction: %w", err), "", nil)
	}
	return nil
}

// runner is what both *sqlx.DB and *sqlx.Tx offer.
type runner interface {
	sqlx.ExtContext
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// queries are the helpers for hand-written SQL, on a pool or a transaction.
type queries struct {
	ext runner
}

// Get runs query with positional parameters ($1, $2, ...) and scans its one
// row into dest (a struct with db tags, or a scalar for one column). No row
// is an error matching ErrNotFound (and sql.ErrNoRows).
func (q queries) Get(ctx context.Context, dest any, query string, args ...any) error {
	return classify(sqlx.GetContext(ctx, q.ext, dest, query, args...), "", nil)
}

// Select runs query with positional parameters and scans every row into
// dest, a pointer to a slice of structs or scalars.
func (q queries) Select(ctx context.Context, dest any, query string, args ...any) error {
	return classify(sqlx.SelectContext(ctx, q.ext, dest, query, args...), "", nil)
}

// Exec runs a statement with positional parameters.
func (q queries) Exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	res, err := q.ext.ExecContext(ctx, query, args...)
	return res, classify(err, "", nil)
}

// NamedGet is Get with named parameters (:name) taken from arg, a struct
// with db tags or a map[string]any.
func (q queries) NamedGet(ctx context.Context, dest any, query string, arg any) error {
	query, args, err := q.ext.BindNamed(query, arg)
	if err != nil {
		return fmt.Errorf("bind named parameters: %w", err)
	}
	return q.Get(ctx, dest, query, args...)
}

// NamedSelect is Select with named parameters (:name) taken from arg.
func (q queries) NamedSelect(ctx context.Context, dest any, query string, arg any) error {
	query, args, err := q.ext.BindNamed(query, arg)
	if err != nil {
		return fmt.Errorf("bind named parameters: %w", err)
	}
	return q.Select(ctx, dest, query, args...)
}

// NamedExec is Exec with named parameters (:name) taken from arg.
func (q queries) NamedExec(ctx context.Context, query string, arg any) (sql.Result, error) {
	query, args, err := q.ext.BindNamed(query, arg)
	if err != nil {
		return nil, fmt.Errorf("bind named parameters: %w", err)
	}
	return q.Exec(ctx, query, args...)
}
