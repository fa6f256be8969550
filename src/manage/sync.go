package main

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"ariga.io/atlas/sql/migrate"
	"ariga.io/atlas/sql/postgres"
	"ariga.io/atlas/sql/schema"
)

// lockName names the advisory lock sync holds on the target database.
const lockName = "example.com/service manage sync"

// ErrLocked is returned when another sync holds the target's lock for longer
// than the lock timeout.
var ErrLocked = errors.New("another manage sync holds the lock on this database")

// errChanged is returned when the target changed between showing the plan and
// applying it.
var errChanged = errors.New("the target database changed after the plan was shown")

// syncCmd brings the target's public schema to the models' schema.
func syncCmd(ctx context.Context, o options) (err error) {
	srcs, err := readModels(o, o.models)
	if err != nil {
		return err
	}
	warns, err := unsupported(srcs)
	if err != nil {
		return err
	}
	for _, w := range warns {
		fmt.Fprintln(o.stderr, "warning:", w)
	}

	target, drv, err := openDriver(ctx, o.cfg, o.cfg.String())
	if err != nil {
		return err
	}
	defer target.Close()
	unlock, err := drv.Lock(ctx, lockName, o.lockTimeout)
	if err != nil {
		if errors.Is(err, schema.ErrLocked) {
			return fmt.Errorf("%w: waited %s on %s; wait for the other sync to finish (or end it) and run again", ErrLocked, o.lockTimeout, o.cfg)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("take the sync lock on %s: %w", o.cfg, err)
	}
	defer func() {
		if uerr := unlock(); uerr != nil && ctx.Err() == nil {
			err = errors.Join(err, fmt.Errorf("release the sync lock on %s: %w", o.cfg, uerr))
		}
	}()

	dbs, done, err := openScratch(ctx, o.cfg, o.log, "sync: the models' schema")
	defer done(&err)
	if err != nil {
		return err
	}
	desired, err := load(ctx, o, dbs[0], srcs, false)
	if err != nil {
		return err
	}

	current, err := inspect(ctx, target, o.cfg.String())
	if err != nil {
		return err
	}
	p, err := makePlan(ctx, drv, drv, current, desired)
	if err != nil {
		return err
	}
	if len(p.stmts) == 0 {
		fmt.Fprintln(o.stdout, "Already in sync.")
		return nil
	}
	fmt.Fprintf(o.stdout, "-- Plan for %s: %d statement(s), %d destructive\n", o.cfg, len(p.stmts), p.destructive())
	if err := p.write(o.stdout); err != nil {
		return err
	}
	for _, w := range warns {
		fmt.Fprintf(o.stdout, "-- WARNING: %s\n", w)
	}
	if !o.noprompt {
		ok, err := confirm(ctx, o.stdin, o.stdout, "Apply these changes? [y/N] ")
		if err != nil {
			return err
		}
		if !ok {
			fmt.Fprintln(o.stdout, "Nothing applied.")
			return nil
		}
	}
	if err := apply(ctx, target, p, desired); err != nil {
		return err
	}
	fmt.Fprintf(o.stdout, "Applied %d statement(s) in one transaction.\n", len(p.stmts))
	return nil
}

// confirm asks question and reads one line from in; "y" or "yes" (any case)
// is a yes, anything else and end of input a no. A cancelled ctx ends the
// wait with ctx's error.
func confirm(ctx context.Context, in io.Reader, out io.Writer, question string) (bool, error) {
	fmt.Fprint(out, question)
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(in).ReadString('\n')
		answer <- line
	}()
	select {
	case <-ctx.Done():
		fmt.Fprintln(out)
		return false, ctx.Err()
	case line := <-answer:
		a := strings.ToLower(strings.TrimSpace(line))
		if line == "" {
			fmt.Fprintln(out)
		}
		return a == "y" || a == "yes", nil
	}
}

// apply runs the statements of p in one transaction on target. Inside the
// transaction it first re-plans against the target's current schema and
// refuses (errChanged) if that plan differs from p, and afterwards checks that
// the target now equals desired; any failure rolls everything back.
func apply(ctx context.Context, target *sql.DB, p *plan, desired *schema.Realm) (err error) {
	tx, err := target.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	drv, err := postgres.Open(tx)
	if err != nil {
		return fmt.Errorf("open transaction: %w", err)
	}
	current, err := inspect(ctx, tx, "target database")
	if err != nil {
		return err
	}
	again, err := makePlan(ctx, drv, drv, current, desired)
	if err != nil {
		return err
	}
	if !slices.Equal(again.cmds(), p.cmds()) {
		return fmt.Errorf("%w (someone altered its schema meanwhile); nothing was applied, run sync again", errChanged)
	}
	for i, c := range p.stmts {
		if _, err := tx.ExecContext(ctx, c.Cmd, c.Args...); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("statement %d of %d failed: %s: %w; the transaction was rolled back, nothing changed", i+1, len(p.stmts), c.Cmd, err)
		}
	}
	after, err := inspect(ctx, tx, "target database")
	if err != nil {
		return err
	}
	rest, err := drv.RealmDiff(after, desired)
	if err != nil {
		return fmt.Errorf("diff after applying: %w", err)
	}
	if len(rest) > 0 {
		return fmt.Errorf("after the plan the target still differs from the models in %d way(s) (%s); the transaction was rolled back, nothing changed: "+
			"the Atlas library cannot express this change, write it by hand", len(rest), describeChanges(rest))
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// describeChanges names schema changes briefly for error messages.
func describeChanges(changes []schema.Change) string {
	var parts []string
	for _, c := range changes {
		switch c := c.(type) {
		case *schema.ModifyTable:
			parts = append(parts, fmt.Sprintf("table %q", c.T.Name))
		case *schema.AddTable:
			parts = append(parts, fmt.Sprintf("new table %q", c.T.Name))
		case *schema.DropTable:
			parts = append(parts, fmt.Sprintf("extra table %q", c.T.Name))
		default:
			parts = append(parts, fmt.Sprintf("%T", c))
		}
	}
	return strings.Join(parts, ", ")
}

var _ migrate.PlanApplier = (*postgres.Driver)(nil)
