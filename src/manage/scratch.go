package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"ariga.io/atlas/sql/migrate"
	"ariga.io/atlas/sql/postgres"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"example.com/service/src/db"
)

// scratchPrefix starts the name of every database manage creates for itself.
const scratchPrefix = "manage_scratch_"

// scratchTimeLayout is the creation time in a scratch database's name.
const scratchTimeLayout = "20060102t150405"

// staleAfter is how old a scratch database nobody is connected to must be
// before another run drops it: younger ones may belong to a run that has
// created the database but not yet connected to it.
const staleAfter = time.Minute

// dropTimeout bounds dropping a scratch database after the command's context
// was cancelled.
const dropTimeout = 30 * time.Second

// server is a connection to the maintenance database "postgres" of the
// target's server, used to create and drop scratch databases.
type server struct {
	cfg   db.Config // the target; scratch configs are derived from it
	admin *sql.DB
	log   *slog.Logger
}

// openServer connects to the maintenance database of cfg's server. An
// unreachable server is an error naming host, port and database.
func openServer(ctx context.Context, cfg db.Config, log *slog.Logger) (*server, error) {
	admin, err := openDB(ctx, cfg.WithDatabase("postgres"))
	if err != nil {
		return nil, err
	}
	return &server{cfg: cfg, admin: admin, log: log}, nil
}

func (s *server) Close() error { return s.admin.Close() }

// openDB opens cfg with the pgx driver and checks that it answers.
func openDB(ctx context.Context, cfg db.Config) (*sql.DB, error) {
	conn, err := sql.Open("pgx", cfg.ConnString())
	if err != nil {
		return nil, fmt.Errorf("open PostgreSQL at %s: %w", cfg, err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := conn.PingContext(pingCtx); err != nil {
		_ = conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("cannot connect to PostgreSQL at %s: %w; check that the server runs and DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASS (or DB_URL) point at it", cfg, err)
	}
	return conn, nil
}

// openDriver opens the database cfg names, as openDB does, and Atlas's
// PostgreSQL driver on it; what names the database in the driver's error.
// The caller closes the returned *sql.DB.
func openDriver(ctx context.Context, cfg db.Config, what string) (*sql.DB, migrate.Driver, error) {
	conn, err := openDB(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	drv, err := postgres.Open(conn)
	if err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("open %s: %w", what, err)
	}
	return conn, drv, nil
}

// scratch is a database created by this run.
type scratch struct {
	name string
	cfg  db.Config
	srv  *server
	// hold keeps one session open on the database for its whole life, so
	// that another run's dropStale (which spares databases in use) never
	// takes it for a leftover while it waits to be loaded.
	hold *sql.DB
}

// dropStale drops scratch databases left behind by killed runs: those with
// the scratch prefix that nobody is connected to and that are older than
// staleAfter (by the time in their name). Failures are logged, not returned.
func (s *server) dropStale(ctx context.Context) {
	rows, err := s.admin.QueryContext(ctx,
		`SELECT datname FROM pg_database d WHERE starts_with(datname, $1)
		 AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)`, scratchPrefix)
	if err != nil {
		s.log.Warn("cannot list leftover scratch databases", "err", err)
		return
	}
	defer rows.Close()
	var stale []string
	for rows.Next() {
		var name string
		if rows.Scan(&name) == nil && isStale(name, time.Now()) {
			stale = append(stale, name)
		}
	}
	if err := rows.Err(); err != nil {
		s.log.Warn("cannot list leftover scratch databases", "err", err)
		return
	}
	for _, name := range stale {
		if _, err := s.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+quoteIdent(name)); err != nil {
			s.log.Warn("cannot drop leftover scratch database", "database", name, "err", err)
			continue
		}
		s.log.Info("dropped scratch database left by an earlier run", "database", name)
	}
}

// isStale reports whether the scratch database name was created more than
// staleAfter before now. Names whose time does not parse count as stale.
func isStale(name string, now time.Time) bool {
	rest := strings.TrimPrefix(name, scratchPrefix)
	stamp, _, _ := strings.Cut(rest, "_")
	t, err := time.Parse(scratchTimeLayout, stamp)
	if err != nil {
		return true
	}
	return now.Sub(t) > staleAfter
}

// create makes a new, empty scratch database. purpose is logged.
func (s *server) create(ctx context.Context, purpose string) (*scratch, error) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := scratchPrefix + time.Now().UTC().Format(scratchTimeLayout) + "_" + hex.EncodeToString(b)
	if _, err := s.admin.ExecContext(ctx, "CREATE DATABASE "+quoteIdent(name)); err != nil {
		if ctx.Err() != nil {
			// The CREATE may have gone through before the cancel arrived.
			dropCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dropTimeout)
			_, _ = s.admin.ExecContext(dropCtx, "DROP DATABASE IF EXISTS "+quoteIdent(name))
			cancel()
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("create scratch database %s on %s: %w; the DB_USER role needs the CREATEDB privilege", name, s.cfg, err)
	}
	sc := &scratch{name: name, cfg: s.cfg.WithDatabase(name), srv: s}
	hold, err := openDB(ctx, sc.cfg)
	if err != nil {
		return nil, errors.Join(err, sc.drop(ctx))
	}
	sc.hold = hold
	s.log.Info("created scratch database", "database", name, "for", purpose)
	return sc, nil
}

// drop removes the scratch database, terminating any connection left to it.
// It runs even when ctx is cancelled (bounded by dropTimeout).
func (sc *scratch) drop(ctx context.Context) error {
	if sc.hold != nil {
		_ = sc.hold.Close()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dropTimeout)
	defer cancel()
	if _, err := sc.srv.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+quoteIdent(sc.name)+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop scratch database %s: %w; drop it by hand with DROP DATABASE %s", sc.name, err, quoteIdent(sc.name))
	}
	sc.srv.log.Info("dropped scratch database", "database", sc.name)
	return nil
}

// openScratch connects to cfg's server, drops the scratch databases killed
// runs left there, and creates one scratch database per purpose (logged),
// in that order. done drops them, last first, and closes the connection,
// joining a failure into *errp; defer it at once, before checking err: on
// an error it drops what was made.
func openScratch(ctx context.Context, cfg db.Config, log *slog.Logger, purposes ...string) (dbs []*scratch, done func(errp *error), err error) {
	done = func(*error) {}
	srv, err := openServer(ctx, cfg, log)
	if err != nil {
		return nil, done, err
	}
	done = func(errp *error) {
		for i := len(dbs) - 1; i >= 0; i-- {
			dbs[i].dropInto(ctx, errp)
		}
		_ = srv.Close()
	}
	srv.dropStale(ctx)
	for _, p := range purposes {
		sc, err := srv.create(ctx, p)
		if err != nil {
			return dbs, done, err
		}
		dbs = append(dbs, sc)
	}
	return dbs, done, nil
}

// dropInto drops sc and joins a failure to *errp, for use in defer.
func (sc *scratch) dropInto(ctx context.Context, errp *error) {
	if err := sc.drop(ctx); err != nil {
		*errp = errors.Join(*errp, err)
	}
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
