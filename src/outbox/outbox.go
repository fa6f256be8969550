package outbox

import (
	"context"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/stdlib"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"example.com/service/src/db"
	"example.com/service/src/worker"
)

// NotifyChannel is the PostgreSQL channel [Add] notifies (at commit) and a
// [Relay] listens on.
const NotifyChannel = "outbox"

// Add records m in the table outbox inside tx, to be published by a
// [Relay] once tx commits (nothing is published if it rolls back), and
// returns its message id (m.MessageID, or a new UUID). m.Data must be
// valid JSON. The relay publishes m as [worker.Client.PublishMessage]
// does: to a queue route when m.Exchange is "", else to the exchange with
// m.RoutingKey (an event). Messages of one transaction, and of different
// ones, may be published in any order. When ctx carries a span (a traced
// handler's), Add records its W3C trace context in the message's headers
// (traceparent, tracestate), so the relay's publish and whoever consumes
// the message join the handler's trace.
func Add(ctx context.Context, tx *db.Tx, m worker.Message) (string, error) {
	if tx == nil {
		return "", fmt.Errorf("record message to exchange %q with key %q in the outbox: no transaction (use db.Client.InTx, or db.TxFrom on an idempotent route)", m.Exchange, m.RoutingKey)
	}
	if m.RoutingKey == "" && m.Exchange == "" {
		return "", errors.New("record message in the outbox: no route: set RoutingKey to a queue route's name, or Exchange and RoutingKey")
	}
	if m.MessageID == "" {
		m.MessageID = uuid.NewString()
	}
	data := m.Data
	if data == nil {
		data = json.RawMessage("null")
	}
	if !json.Valid(data) {
		return "", fmt.Errorf("record message %q to exchange %q with key %q in the outbox: data is not valid JSON", m.MessageID, m.Exchange, m.RoutingKey)
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		// The trace goes on when the relay publishes (a traced Client
		// makes its send span a child of this one).
		h := make(map[string]any, len(m.Headers)+2)
		for k, v := range m.Headers {
			h[k] = v
		}
		if _, own := h["traceparent"]; !own {
			propagation.TraceContext{}.Inject(ctx, worker.Carrier(h))
		}
		m.Headers = h
	}
	var headers []byte
	if len(m.Headers) > 0 {
		var err error
		if headers, err = json.Marshal(m.Headers); err != nil {
			return "", fmt.Errorf("record message %q in the outbox: headers do not encode as JSON: %w", m.MessageID, err)
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO outbox ("exchange", "routing_key", "message_id", "headers", "data") VALUES ($1, $2, $3, $4, $5)`,
		m.Exchange, m.RoutingKey, m.MessageID, nullable(headers), string(data)); err != nil {
		return "", fmt.Errorf("record message %q to exchange %q with key %q in the outbox: %w", m.MessageID, m.Exchange, m.RoutingKey, err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, NotifyChannel); err != nil {
		return "", fmt.Errorf("notify the outbox relay: %w", err)
	}
	return m.MessageID, nil
}

// Publish records data (any value JSON encodes) as a message to the queue
// route, inside tx: [Add] with the default exchange. It returns the
// message's id.
func Publish(ctx context.Context, tx *db.Tx, route string, data any) (string, error) {
	b, err := json.Marshal(data)
	if err != nil {
		return "", fmt.Errorf("record message to queue %q in the outbox: data of type %T does not encode as JSON: %w", route, data, err)
	}
	return Add(ctx, tx, worker.Message{RoutingKey: route, Data: b})
}

// Event records data as the event name (dot-separated words, such as
// "item.created") on the event exchange worker.DefaultEventExchange,
// inside tx: after commit the relay publishes it as Client.PublishEvent
// does, to every subscription whose pattern matches. (For a Client with
// another event exchange, use Add with that Exchange.) It returns the
// event's message id.
func Event(ctx context.Context, tx *db.Tx, name string, data any) (string, error) {
	if name == "" || strings.ContainsAny(name, "*# ") {
		return "", fmt.Errorf("record event %q in the outbox: want dot-separated words, e.g. \"item.created\"", name)
	}
	b, err := json.Marshal(data)
	if err != nil {
		return "", fmt.Errorf("record event %q in the outbox: data of type %T does not encode as JSON: %w", name, data, err)
	}
	return Add(ctx, tx, worker.Message{Exchange: worker.DefaultEventExchange, RoutingKey: name, Data: b})
}

func nullable(b []byte) any {
	if b == nil {
		return nil
	}
	return string(b)
}

// Defaults of [RelayConfig].
const (
	DefaultRelayPoll    = 5 * time.Second
	DefaultRelayBatch   = 200
	DefaultRelayTimeout = 30 * time.Second
)

// RelayConfig configures a [Relay]. Zero fields take their defaults.
type RelayConfig struct {
	// Poll is how often the relay looks at the table without being
	// notified (default DefaultRelayPoll, 5 s): the fallback for a lost
	// LISTEN connection, and when failed messages come due again.
	Poll time.Duration
	// Batch is how many messages one round locks and publishes at once
	// (default DefaultRelayBatch, 200).
	Batch int
	// Timeout bounds one round (default DefaultRelayTimeout, 30 s): a
	// broker that does not confirm in time leaves the round's rows for the
	// next round.
	Timeout time.Duration
	Logger  *slog.Logger // default slog.Default()
}

// Relay publishes the table outbox: woken by NOTIFY on [NotifyChannel]
// (and every Poll), it takes up to Batch rows oldest first with FOR UPDATE
// SKIP LOCKED, so replicas running relays share the rows and never publish
// one at the same time; publishes them with publisher confirms (pipelined);
// and deletes the confirmed ones in the same transaction. A row whose
// publish failed (no queue of that name, say) stays, logged at warn, with
// its attempts, last_error and a publish_after 1 s later, doubling up to 5
// minutes, so it does not hold up the rows behind it. If the process dies after a confirm and
// before the delete commits, the message is published again by the next
// round: at least once, with its message id, so an idempotent consumer
// ([Inbox.Idempotent]) applies it exactly once.
//
// The relay holds one connection of the pool for LISTEN. Behind PgBouncer
// in transaction pooling mode notifications do not arrive: the relay then
// publishes every Poll.
//
// As a runner service: Start begins relaying, Shutdown stops it (a round
// in progress finishes or is cancelled when ctx ends).
type Relay struct {
	db     *db.Client
	client *worker.Client
	cfg    RelayConfig
	loops  background
}

// NewRelay returns a relay publishing the outbox of c through client.
func NewRelay(c *db.Client, client *worker.Client, cfg RelayConfig) *Relay {
	orDefault(&cfg.Poll, DefaultRelayPoll)
	orDefault(&cfg.Batch, DefaultRelayBatch)
	orDefault(&cfg.Timeout, DefaultRelayTimeout)
	orDefaultLogger(&cfg.Logger)
	return &Relay{db: c, client: client, cfg: cfg}
}

// Flush publishes what the outbox holds now and is due, round after round,
// until a round finds fewer than Batch rows it can lock; it returns how
// many messages it published and deleted. Messages whose publish failed
// are an error at the end (they wait in the outbox with backoff).
func (r *Relay) Flush(ctx context.Context) (int, error) {
	total := 0
	var unsent error
	for {
		n, locked, err := r.round(ctx)
		total += n
		var ue *unsentError
		if errors.As(err, &ue) { // those rows wait with backoff: go on with the others
			unsent = errors.Join(unsent, err)
			err = nil
		}
		if err != nil || locked < r.cfg.Batch {
			return total, errors.Join(unsent, err)
		}
	}
}

// unsentError reports the messages of a round whose publish failed; they
// stay in the outbox and come due again with backoff.
type unsentError struct{ n, of int }

func (e *unsentError) Error() string {
	return fmt.Sprintf("%d of %d outbox messages not published (logged); they are retried with backoff", e.n, e.of)
}

// outboxRow is a row of models.OutboxMessage as the relay reads it: the
// JSON columns as text.
type outboxRow struct {
	ID         int64  `db:"id"`
	Exchange   string `db:"exchange"`
	RoutingKey string `db:"routing_key"`
	MessageID  string `db:"message_id"`
	Headers    string `db:"headers"`
	Data       string `db:"data"`
}

// round publishes one batch; it returns how many were sent and how many
// rows it had locked.
func (r *Relay) round(ctx context.Context) (sent, locked int, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	err = r.db.InTx(ctx, func(tx *db.Tx) error {
		var rows []outboxRow
		if err := tx.Select(ctx, &rows, `SELECT "id", "exchange", "routing_key", "message_id",
			coalesce("headers"::text, '') AS "headers", "data"::text AS "data"
			FROM outbox WHERE "publish_after" <= now() ORDER BY "id" LIMIT $1 FOR UPDATE SKIP LOCKED`, r.cfg.Batch); err != nil {
			return fmt.Errorf("read the outbox: %w", err)
		}
		locked = len(rows)
		if locked == 0 {
			return nil
		}
		ids := make([]int64, 0, len(rows))
		var mu sync.Mutex
		var errs []error
		failed := map[int64]string{}
		var wg sync.WaitGroup
		for _, row := range rows {
			wg.Go(func() {
				m := worker.Message{Exchange: row.Exchange, RoutingKey: row.RoutingKey, MessageID: row.MessageID, Data: json.RawMessage(row.Data)}
				if row.Headers != "" && row.Headers != "null" {
					dec := json.NewDecoder(strings.NewReader(row.Headers))
					dec.UseNumber() // integers stay integers (int64 in the AMQP table)
					if err := dec.Decode(&m.Headers); err != nil {
						mu.Lock()
						errs = append(errs, fmt.Errorf("outbox row %d: headers %s are not a JSON object: %w", row.ID, row.Headers, err))
						failed[row.ID] = errs[len(errs)-1].Error()
						mu.Unlock()
						return
					}
				}
				err := r.client.PublishMessage(ctx, m)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, fmt.Errorf("outbox row %d (message %s): %w", row.ID, row.MessageID, err))
					failed[row.ID] = err.Error()
					return
				}
				ids = append(ids, row.ID)
			})
		}
		wg.Wait()
		if len(ids) > 0 {
			if _, err := tx.Exec(ctx, `DELETE FROM outbox WHERE "id" = ANY($1)`, ids); err != nil {
				return fmt.Errorf("delete %d published outbox rows: %w", len(ids), err)
			}
		}
		for id, msg := range failed {
			if _, err := tx.Exec(ctx, `UPDATE outbox SET "attempts" = "attempts" + 1, "last_error" = $2,
				"publish_after" = now() + least(interval '1 second' * power(2, "attempts"), interval '5 minutes') WHERE "id" = $1`, id, msg); err != nil {
				return fmt.Errorf("record the failed publish of outbox row %d: %w", id, err)
			}
		}
		sent = len(ids)
		if len(errs) > 0 {
			// Commit what was sent; the failed rows stay for a later round.
			r.cfg.Logger.Warn("outbox messages not published; they stay in the outbox and are retried",
				"failed", len(errs), "sent", sent, "first_error", errs[0].Error())
			return nil
		}
		return nil
	})
	if err != nil {
		return 0, locked, err // nothing deleted: published messages go again next round
	}
	if sent < locked {
		err = &unsentError{n: locked - sent, of: locked}
	}
	return sent, locked, err
}

// Start begins relaying in the background: a first round at once, then
// one on every notification and every Poll.
func (r *Relay) Start(context.Context) error {
	return r.loops.start("outbox relay", func(ctx context.Context) {
		wake := make(chan struct{}, 1)
		go r.listen(ctx, wake)
		r.loop(ctx, wake)
	})
}

func (r *Relay) loop(ctx context.Context, wake <-chan struct{}) {
	t := time.NewTicker(r.cfg.Poll)
	defer t.Stop()
	for {
		n, err := r.Flush(ctx)
		if err != nil && ctx.Err() == nil {
			r.cfg.Logger.Warn("outbox relay round failed; retrying", "published", n, "in", r.cfg.Poll, "err", err)
		} else if n > 0 {
			r.cfg.Logger.Debug("outbox relay published", "messages", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-t.C:
		}
	}
}

// listen holds a connection that LISTENs on NotifyChannel and signals wake
// on every notification, reconnecting after a second when it is lost (the
// poll covers the gap).
func (r *Relay) listen(ctx context.Context, wake chan<- struct{}) {
	signal := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	for ctx.Err() == nil {
		err := r.listenOnce(ctx, signal)
		if ctx.Err() != nil {
			return
		}
		r.cfg.Logger.Warn("outbox relay lost its LISTEN connection; polling every "+r.cfg.Poll.String()+" until it is back", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (r *Relay) listenOnce(ctx context.Context, signal func()) error {
	conn, err := r.db.DB().Conn(ctx)
	if err != nil {
		return fmt.Errorf("open a connection to LISTEN on: %w", err)
	}
	defer func() {
		// The connection's session LISTENs: it must not go back to the pool.
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		_ = conn.Close()
	}()
	return conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("LISTEN needs the pgx driver, not %T", dc)
		}
		pc := sc.Conn()
		if _, err := pc.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
			return fmt.Errorf("LISTEN %s: %w", NotifyChannel, err)
		}
		signal() // what was committed before LISTEN took effect
		for {
			if _, err := pc.WaitForNotification(ctx); err != nil {
				return fmt.Errorf("wait for a notification on %s: %w", NotifyChannel, err)
			}
			signal()
		}
	})
}

// Shutdown stops relaying: the round in progress is cancelled (its rows
// stay, unless already deleted) and Shutdown waits for it until ctx ends.
func (r *Relay) Shutdown(ctx context.Context) error {
	return r.loops.stop(ctx, "outbox relay")
}

// background is one goroutine that runs from start to stop: the Inbox's
// pruner, the Relay's loop.
type background struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// start runs run in a goroutine of its own, with a ctx that stop cancels;
// what names the goroutine in errors. A second start is an error.
func (b *background) start(what string, run func(ctx context.Context)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done != nil {
		return fmt.Errorf("%s started twice", what)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel, b.done = cancel, make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		run(ctx)
	}(b.done)
	return nil
}

// stop cancels the goroutine's ctx and waits, until ctx ends, for run to
// return. It returns nil at once when start never ran, and when run has
// returned already (a second stop).
func (b *background) stop(ctx context.Context, what string) error {
	b.mu.Lock()
	cancel, done := b.cancel, b.done
	b.mu.Unlock()
	if done == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s did not stop: %w", what, ctx.Err())
	}
}

// orDefault sets a config field left at zero (or set below it) to def.
func orDefault[T int | time.Duration](field *T, def T) {
	if *field <= 0 {
		*field = def
	}
}

// orDefaultLogger sets a config's nil Logger to slog's default one.
func orDefaultLogger(l **slog.Logger) {
	if *l == nil {
		*l = slog.Default()
	}
}
