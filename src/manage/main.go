// Command manage keeps PostgreSQL schemas in step with the table definitions
// in src/models/**/*.sql, using the Atlas library (ariga.io/atlas) to inspect,
// diff and plan.
//
// Usage (from anywhere inside the module):
//
//	go run ./src/manage sync [--noprompt] [--models DIR] [--lock-timeout D]
//	go run ./src/manage pending [--models DIR] [--dump FILE] [--out FILE]
//
// sync loads every .sql file under the models directory (sorted by path) into
// a scratch database it creates on the target's server, diffs the public
// schema of the target database (DB_HOST, DB_PORT, DB_USER, DB_PASS, DB_NAME
// or DB_URL; DB_OWNER_USER and DB_OWNER_PASS take the place of DB_USER and
// DB_PASS when set, for the role that owns the schema) against it, prints the SQL plan with destructive statements
// marked, asks "Apply these changes? [y/N] " and applies the plan in one
// transaction on "y" (at once with --noprompt). Two syncs against one database
// are serialised by an advisory lock.
//
// pending loads migrations/production.dump.sql (a pg_dump --schema-only of
// production) and the models into two scratch databases and writes the plan
// that turns the first into the second to migrations/pending.sql, for review
// and psql. It never connects to the target database.
//
// Scratch databases are named manage_scratch_<UTC time>_<random>; they are
// dropped when the command ends, also after an error, SIGINT or SIGTERM (exit
// status 130). Ones left by a killed run are dropped by the next run.
//
// Exit status: 0 success (also "Already in sync." and a declined prompt), 1
// failure, 2 bad usage, 130 interrupted.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"example.com/service/src/db"
)

// Defaults of the path flags, relative to the module root (the directory of
// go.mod, searched from the working directory upwards).
const (
	defaultModels  = "src/models"
	defaultDump    = "migrations/production.dump.sql"
	defaultPending = "migrations/pending.sql"
)

// defaultLockTimeout bounds how long sync waits for another sync's lock.
const defaultLockTimeout = 10 * time.Second

// errUsage marks a command line that does not parse; run exits with 2.
var errUsage = errors.New("usage")

// options is everything a command needs; tests build it directly.
type options struct {
	cfg         db.Config // target database (sync) or server (pending)
	root        string    // module root, for printing paths
	models      string    // directory of the model .sql files
	dump        string    // pending: schema-only dump of production
	out         string    // pending: where the plan is written
	noprompt    bool      // sync: apply without asking
	lockTimeout time.Duration
	stdin       io.Reader
	stdout      io.Writer
	stderr      io.Writer
	log         *slog.Logger
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal, a second one kills the process at once
		// (the next run drops whatever scratch database is left).
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cmd, o, err := parseArgs(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "manage:", err)
		return 2
	}
	o.stdin, o.stdout, o.stderr, o.log = stdin, stdout, stderr, log
	if o.cfg, err = db.OwnerConfigFromEnv(); err != nil {
		fmt.Fprintln(stderr, "manage: database settings:", err)
		return 2
	}
	switch cmd {
	case "sync":
		err = syncCmd(ctx, o)
	case "pending":
		err = pendingCmd(ctx, o)
	}
	switch {
	case err == nil:
		return 0
	case ctx.Err() != nil:
		// err tells whether dropping the scratch databases worked (and how
		// to drop one by hand when it did not).
		fmt.Fprintln(stderr, "manage: interrupted; nothing was applied:", err)
		return 130
	default:
		fmt.Fprintln(stderr, "manage "+cmd+":", err)
		return 1
	}
}

const usageText = `usage:
  manage sync [--noprompt] [--models DIR] [--lock-timeout DURATION]
      Sync the DB_* database's public schema to the models (asks before applying).
  manage pending [--models DIR] [--dump FILE] [--out FILE]
      Write the plan from the production dump to the models into --out.

The database comes from DB_HOST, DB_PORT, DB_USER, DB_PASS, DB_NAME or DB_URL;
DB_OWNER_USER and DB_OWNER_PASS, when set, name the role that owns the schema
(see migrations/roles.sql) in place of DB_USER and DB_PASS.
Default paths are relative to the module root: --models src/models,
--dump migrations/production.dump.sql, --out migrations/pending.sql.`

// parseArgs reads the subcommand and its flags. Relative flag values are
// taken relative to the working directory; defaults relative to the module root.
func parseArgs(args []string, stderr io.Writer) (string, options, error) {
	var o options
	if len(args) == 0 {
		fmt.Fprintln(stderr, usageText)
		return "", o, fmt.Errorf("%w: no command given; use sync or pending", errUsage)
	}
	cmd := args[0]
	fs := flag.NewFlagSet("manage "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, usageText) }
	fs.StringVar(&o.models, "models", "", "directory of the model .sql files (default <module root>/"+defaultModels+")")
	switch cmd {
	case "sync":
		fs.BoolVar(&o.noprompt, "noprompt", false, "apply the plan without asking")
		fs.DurationVar(&o.lockTimeout, "lock-timeout", defaultLockTimeout, "how long to wait for another sync's lock")
	case "pending":
		fs.StringVar(&o.dump, "dump", "", "schema-only dump of production (default <module root>/"+defaultDump+")")
		fs.StringVar(&o.out, "out", "", "file the plan is written to (default <module root>/"+defaultPending+")")
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stderr, usageText)
		return "", o, flag.ErrHelp
	default:
		fmt.Fprintln(stderr, usageText)
		return "", o, fmt.Errorf("%w: unknown command %q; use sync or pending", errUsage, cmd)
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", o, err
		}
		return "", o, fmt.Errorf("%w: %w", errUsage, err)
	}
	for _, a := range fs.Args() {
		// The seed spelled it `manage.py sync noprompt`.
		if cmd == "sync" && a == "noprompt" {
			o.noprompt = true
			continue
		}
		return "", o, fmt.Errorf("%w: unexpected argument %q for %s", errUsage, a, cmd)
	}
	root, rootErr := moduleRoot()
	o.root = root
	for _, p := range []struct {
		dst *string
		def string
	}{{&o.models, defaultModels}, {&o.dump, defaultDump}, {&o.out, defaultPending}} {
		if *p.dst != "" {
			continue
		}
		if rootErr != nil {
			return "", o, fmt.Errorf("%w: %w; run inside the project or pass the paths as flags", errUsage, rootErr)
		}
		*p.dst = filepath.Join(root, filepath.FromSlash(p.def))
	}
	return cmd, o, nil
}

// moduleRoot returns the nearest directory at or above the working directory
// that holds a go.mod.
func moduleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("no go.mod in %s or any directory above it", wd)
		}
	}
}

// rel returns path relative to the module root for messages, or path itself.
func (o options) rel(path string) string {
	if o.root != "" {
		if r, err := filepath.Rel(o.root, path); err == nil && !filepath.IsAbs(r) && r != ".." && !startsWithDotDot(r) {
			return filepath.ToSlash(r)
		}
	}
	return path
}

func startsWithDotDot(p string) bool {
	return len(p) >= 3 && p[:3] == ".."+string(filepath.Separator)
}
