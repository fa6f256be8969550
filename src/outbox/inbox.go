// Package outbox turns at-least-once delivery into exactly-once effects,
// with PostgreSQL tables the service already has (models/inbox.sql and
// models/outbox.sql, managed by `manage sync` like any other table):
//
//   - [Inbox]: a queue route marked idempotent ([Inbox.Idempotent]) records
//     each message id in the table inbox in the same transaction as the
//     handler's writes, so a redelivered message is acked without running
//     the handler again.
//   - [Add] (with [Queue] and [Event]): a handler records messages to
//     publish in the table outbox inside its transaction; a [Relay] in the
//     service publishes them with publisher confirms after the commit and
//     deletes them. A crash between commit and publish loses nothing: the
//     rows wait for the next relay round, of this replica or another.
//
// An outbox message may be published more than once (the relay died after
// the confirm and before its delete committed); it keeps its message id,
// so an idempotent consumer applies it once.
package outbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"example.com/service/src/db"
	"example.com/service/src/worker"
)

// Defaults of [InboxConfig].
const (
	DefaultInboxRetention  = 7 * 24 * time.Hour
	DefaultInboxPruneEvery = time.Hour
)

// maxMessageID is the width of inbox.message_id; longer ids are stored as
// their SHA-256.
const maxMessageID = 255

// InboxConfig configures an [Inbox]. Zero fields take their defaults.
type InboxConfig struct {
	// Retention is how long a handled message id is remembered (default
	// DefaultInboxRetention, 7 days). A copy redelivered later than that
	// runs the handler again, so keep it well above the longest time a
	// message can spend in a queue or in dead-letter replay.
	Retention time.Duration
	// PruneEvery is how often rows older than Retention are deleted while
	// the Inbox runs (default DefaultInboxPruneEvery, 1 hour).
	PruneEvery time.Duration
	Logger     *slog.Logger // default slog.Default()
	// AfterCommit, when set, is called after each transaction in which a
	// handler ran has committed (not for a skipped redelivery), before the
	// message is acked: for metrics, and for tests that kill the process
	// at exactly that point.
	AfterCommit func(route, messageID string)
}

// Inbox records the messages idempotent routes have handled, in the table
// inbox. It is safe for concurrent use. As a runner service (Start,
// Shutdown) it prunes old rows on a schedule.
type Inbox struct {
	db      *db.Client
	cfg     InboxConfig
	skipped atomic.Int64
	pruner  background
}

// NewInbox returns the inbox of the database c.
func NewInbox(c *db.Client, cfg InboxConfig) *Inbox {
	orDefault(&cfg.Retention, DefaultInboxRetention)
	orDefault(&cfg.PruneEvery, DefaultInboxPruneEvery)
	orDefaultLogger(&cfg.Logger)
	return &Inbox{db: c, cfg: cfg}
}

// Idempotent returns the middleware that makes a queue route run its
// handler at most once per message id (until Retention passes). Register it
// on the route: queue.Handle(route, h, inbox.Idempotent()).
//
// For a message with a message id it opens a transaction, inserts (route,
// message id) into the table inbox, and runs the handler with the
// transaction on its ctx ([db.TxFrom]): the handler must make its writes
// through that transaction, so they commit together with the inbox row or
// not at all. When the row exists already the message was handled before:
// the handler is not run, the message is acked. When the handler fails the
// transaction is rolled back (the inbox row too), so the worker's retry
// runs it again. Two copies of one message handled at once (a redelivery
// while the first copy still runs) wait on the row: one runs, the other
// finds it done.
//
// A message without a message id cannot be recognised when it comes back:
// it is handled as on a plain route (the handler runs without a
// transaction on ctx, at least once). The project's Client and the outbox
// relay give every message an id. Ids longer than 255 bytes are recorded
// as "sha256:" and their hash.
//
// On a nil *Inbox (a route listing that connects to nothing, such as
// `service routes`) the middleware fails every message, naming the route.
func (in *Inbox) Idempotent() worker.Middleware {
	return func(next worker.Handler) worker.Handler {
		return worker.HandlerFunc(func(ctx context.Context, req *worker.Request) ([]byte, error) {
			if in == nil {
				return nil, fmt.Errorf("idempotent route %q has no inbox: make it with outbox.NewInbox", req.Route)
			}
			if req.MessageID == "" {
				return next.Serve(ctx, req)
			}
			id := req.MessageID
			if len(id) > maxMessageID {
				sum := sha256.Sum256([]byte(id))
				id = "sha256:" + hex.EncodeToString(sum[:])
			}
			var out []byte
			ran := false
			err := in.db.InTx(ctx, func(tx *db.Tx) error {
				res, err := tx.Exec(ctx, `INSERT INTO inbox ("route", "message_id") VALUES ($1, $2) ON CONFLICT DO NOTHING`, req.Route, id)
				if err != nil {
					return fmt.Errorf("record message %q of route %q in the inbox: %w", id, req.Route, err)
				}
				if n, err := res.RowsAffected(); err == nil && n == 0 {
					in.skipped.Add(1)
					in.cfg.Logger.DebugContext(ctx, "message handled before; acking it without running the handler", "route", req.Route, "message_id", id)
					return nil
				}
				var err2 error
				out, err2 = next.Serve(db.WithTx(ctx, tx), req)
				ran = err2 == nil
				return err2
			})
			if err == nil && ran && in.cfg.AfterCommit != nil {
				in.cfg.AfterCommit(req.Route, id)
			}
			return out, err
		})
	}
}

// Skipped returns how many deliveries this Inbox acked without running
// their handler because their message had been handled before.
func (in *Inbox) Skipped() int64 { return in.skipped.Load() }

// Prune deletes the inbox rows older than the retention, in batches, and
// returns how many it deleted.
func (in *Inbox) Prune(ctx context.Context) (int64, error) {
	var total int64
	for {
		res, err := in.db.Exec(ctx, `DELETE FROM inbox WHERE ctid IN (
			SELECT ctid FROM inbox WHERE "handled_at" < now() - make_interval(secs => $1) LIMIT 10000)`,
			in.cfg.Retention.Seconds())
		if err != nil {
			return total, fmt.Errorf("prune inbox rows older than %s: %w", in.cfg.Retention, err)
		}
		n, _ := res.RowsAffected()
		total += n
		if n < 10000 {
			return total, nil
		}
	}
}

// Start prunes once and then every PruneEvery in the background, until
// Shutdown. A failed prune is logged and tried again at the next tick.
func (in *Inbox) Start(context.Context) error {
	return in.pruner.start("inbox pruner", in.pruneLoop)
}

func (in *Inbox) pruneLoop(ctx context.Context) {
	t := time.NewTicker(in.cfg.PruneEvery)
	defer t.Stop()
	for {
		n, err := in.Prune(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			in.cfg.Logger.Warn("inbox prune failed; trying again at the next tick", "every", in.cfg.PruneEvery, "err", err)
		case n > 0:
			in.cfg.Logger.Info("pruned the inbox", "rows", n, "older_than", in.cfg.Retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Shutdown stops the pruning and waits for a prune in progress (which it
// cancels) until ctx ends.
func (in *Inbox) Shutdown(ctx context.Context) error {
	return in.pruner.stop(ctx, "inbox pruner")
}
