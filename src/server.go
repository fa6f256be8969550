// Command service is the example service of this template: RPC and
// work-queue routes over RabbitMQ, backed by PostgreSQL. Read it top to
// bottom: configuration, database, models, workers, routes, run.
//
// Add a route by registering a handler on a worker below and putting its
// logic in lib.go; add a table as a .go + .sql pair in models/.
//
// Usage (commands.go has the others):
//
//	service              run until SIGINT or SIGTERM
//	service routes       list the routes (also: asyncapi, call, publish)
//	service healthcheck  exit 0 when the service is ready (/readyz at METRICS_ADDR), or else when RabbitMQ and PostgreSQL answer
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"example.com/service/src/db"
	"example.com/service/src/internal/env"
	"example.com/service/src/internal/redact"
	"example.com/service/src/models"
	"example.com/service/src/outbox"
	"example.com/service/src/runner"
	"example.com/service/src/telemetry"
	"example.com/service/src/worker"
)

//
// CONFIGURATION
//

// config is read from the environment once, at start.
type config struct {
	Mode     string        // MODE: development (debug logs, error details in replies) or production
	Broker   worker.Config // BROKER_HOST, BROKER_PORT, BROKER_USER, BROKER_PASS, BROKER_VHOST (or BROKER_URL), BROKER_TLS*
	Database db.Config     // DB_HOST, DB_PORT, DB_USER, DB_PASS, DB_NAME (or DB_URL), DB_SSL*

	// QueueType is the type of the queue routes' queues and their
	// dead-letter queues (BROKER_QUEUE_TYPE, default quorum);
	// RPCQueueType that of the RPC routes' queues (BROKER_RPC_QUEUE_TYPE,
	// default classic).
	QueueType, RPCQueueType worker.QueueType

	// RetryInBroker makes the queue routes' retries wait in the broker
	// (BROKER_RETRY=broker) instead of in the worker (worker, the default):
	// see README, "Events, delayed retries and dead letters".
	RetryInBroker bool

	// StartTimeout bounds connecting at start (START_TIMEOUT, default 30s):
	// past it the service exits non-zero naming what it could not reach.
	StartTimeout time.Duration
	// DrainTimeout bounds the graceful stop (DRAIN_TIMEOUT, default 10s):
	// in-flight requests get this long to finish and be answered.
	DrainTimeout time.Duration

	// MetricsAddr is where /metrics, /healthz and /readyz are served
	// (METRICS_ADDR, host:port; default empty: not served).
	MetricsAddr string
	// Inbox configures the idempotent routes' inbox: INBOX_RETENTION
	// (default 168h) and INBOX_PRUNE_EVERY (default 1h).
	Inbox outbox.InboxConfig
	// Relay configures the outbox relay: OUTBOX_POLL (default 5s), how often
	// it looks at the outbox without a NOTIFY.
	Relay outbox.RelayConfig
}

func (c config) development() bool { return c.Mode == "development" }

// loadConfig reads the environment; an invalid value is an error naming the
// variable, its value and what is accepted.
func loadConfig() (config, error) {
	var cfg config
	var errs [12]error
	var qt, rqt, retry string
	cfg.Mode, errs[0] = env.OneOf("MODE", "development", "development", "production")
	cfg.Broker, errs[1] = worker.ConfigFromEnv()
	cfg.Database, errs[2] = db.ConfigFromEnv()
	cfg.StartTimeout, errs[3] = env.Duration("START_TIMEOUT", 30*time.Second)
	cfg.DrainTimeout, errs[4] = env.Duration("DRAIN_TIMEOUT", 10*time.Second)
	qt, errs[5] = env.OneOf("BROKER_QUEUE_TYPE", string(worker.Quorum), string(worker.Quorum), string(worker.Classic))
	rqt, errs[6] = env.OneOf("BROKER_RPC_QUEUE_TYPE", string(worker.Classic), string(worker.Classic), string(worker.Quorum))
	cfg.QueueType, cfg.RPCQueueType = worker.QueueType(qt), worker.QueueType(rqt)
	retry, errs[8] = env.OneOf("BROKER_RETRY", "worker", "worker", "broker")
	cfg.RetryInBroker = retry == "broker"
	cfg.MetricsAddr = env.Get("METRICS_ADDR", "")
	cfg.Inbox.Retention, errs[9] = env.Duration("INBOX_RETENTION", outbox.DefaultInboxRetention)
	cfg.Inbox.PruneEvery, errs[10] = env.Duration("INBOX_PRUNE_EVERY", outbox.DefaultInboxPruneEvery)
	cfg.Relay.Poll, errs[11] = env.Duration("OUTBOX_POLL", outbox.DefaultRelayPoll)
	if !cfg.development() {
		errs[7] = productionChecks()
		if cfg.Database.SSLMode == "" && os.Getenv("DB_URL") == "" {
			cfg.Database.SSLMode = "verify-full" // never fall back to plaintext silently
		}
	}
	return cfg, errors.Join(errs[:]...)
}

// productionChecks refuses what is only fit for development: credentials
// left to their defaults (guest/guest, postgres/postgres). Set them, even
// to those values, and they are taken.
func productionChecks() error {
	var errs []error
	need := func(url string, vars ...string) {
		if os.Getenv(url) != "" {
			return
		}
		var unset []string
		for _, v := range vars {
			if os.Getenv(v) == "" {
				unset = append(unset, v)
			}
		}
		if len(unset) > 0 {
			errs = append(errs, fmt.Errorf("%s not set: production mode (MODE=production) takes no default credentials; set %s, or %s",
				strings.Join(unset, " and "), strings.Join(vars, " and "), url))
		}
	}
	need("BROKER_URL", "BROKER_USER", "BROKER_PASS")
	need("DB_URL", "DB_USER", "DB_PASS")
	return errors.Join(errs...)
}

// newLogger logs text at debug level in development, JSON at info level in
// production; no record carries a password (those of the configuration,
// and any in a URL).
func newLogger(cfg config) *slog.Logger {
	var h slog.Handler = slog.NewJSONHandler(os.Stderr, nil)
	if cfg.development() {
		h = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	return slog.New(telemetry.LogHandler(redact.Handler(h, secrets()...)))
}

// secrets are the passwords of the configuration, to keep out of output.
func secrets() []string {
	return []string{os.Getenv("BROKER_PASS"), os.Getenv("DB_PASS"), os.Getenv("DB_OWNER_PASS")}
}

// fail prints err without secrets and exits with code.
func fail(code int, prefix string, err error) {
	fmt.Fprintln(os.Stderr, redact.Secrets(prefix+err.Error(), secrets()...))
	os.Exit(code)
}

func main() {
	cmd, args := "", []string(nil)
	if len(os.Args) > 1 {
		cmd, args = os.Args[1], os.Args[2:]
	}
	switch cmd { // the commands that need no configuration
	case "routes":
		os.Exit(printRoutes(args, os.Stdout))
	case "asyncapi":
		os.Exit(printAsyncAPI(os.Stdout))
	case "help", "-h", "--help":
		fmt.Println(usage)
		return
	}
	cfg, err := loadConfig()
	if err != nil {
		fail(2, "invalid configuration: ", err)
	}
	switch cmd {
	case "":
	case "healthcheck":
		os.Exit(healthcheck(cfg))
	case "call", "publish":
		os.Exit(callOrPublish(cfg, cmd, args, os.Stdin, os.Stdout))
	case "dlq":
		os.Exit(deadLetters(cfg, args, os.Stdout))
	default:
		fmt.Fprintf(os.Stderr, "service: unknown command %q\n%s\n", cmd, usage)
		os.Exit(2)
	}
	log := newLogger(cfg)
	slog.SetDefault(log)
	if errs := buildErrors(); errs != "" {
		// Under `task dev` (Air) after a save that does not compile.
		if err := serveUnavailable(context.Background(), cfg, log, errs); err != nil {
			fail(1, "", err)
		}
		return
	}
	if !cfg.development() && slices.Contains([]string{"allow", "prefer"}, cfg.Database.SSLMode) {
		log.Warn("DB_SSLMODE falls back to plaintext without a word when the server offers no TLS; use require, verify-ca or verify-full in production",
			"DB_SSLMODE", cfg.Database.SSLMode)
	}
	if err := run(context.Background(), cfg, log); err != nil {
		fail(1, "", err)
	}
}

func run(ctx context.Context, cfg config, log *slog.Logger) error {
	//
	// TELEMETRY: traces go to an OTLP endpoint when OTEL_* variables name one.
	//
	tel, err := telemetry.FromEnv(ctx, "service")
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tel.Shutdown(ctx); err != nil {
			log.Warn("traces not all exported", "err", err)
		}
	}()

	//
	// DATABASE SETUP: connect first, retrying until StartTimeout.
	//
	startCtx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	cfg.Database.Logger = log
	if tel.Tracing {
		cfg.Database.QueryTracer = db.NewTracer(tel.TracerProvider) // a span per statement
	}
	database, err := db.Open(startCtx, cfg.Database)
	if err != nil {
		return err // "cannot reach PostgreSQL at ..."
	}
	defer database.Close()

	//
	// AMQP SETUP: one connection, shared by the workers; it reconnects by itself.
	//
	broker, err := worker.Dial(startCtx, cfg.Broker, worker.WithLogger(log))
	if err != nil {
		return err // "cannot reach RabbitMQ at ..."
	}
	defer broker.Close()

	//
	// WORKERS: an RPC worker answers requests; a queue worker consumes
	// fire-and-forget messages (retried, then dead-lettered to <route>.dlq).
	//
	rpc := worker.NewRPC(broker, worker.WithLogger(log), worker.WithDevelopment(cfg.development()),
		worker.WithQueueType(cfg.RPCQueueType), worker.WithErrorType(errorType))
	queue := worker.NewQueue(broker, worker.WithLogger(log), worker.WithDevelopment(cfg.development()),
		worker.WithQueueType(cfg.QueueType), worker.WithErrorType(errorType),
		worker.WithRetry(worker.Retry{InBroker: cfg.RetryInBroker}))
	if tel.Tracing { // a span per delivery, child of the caller's
		rpc.Use(worker.Trace(tel.TracerProvider, tel.Propagator))
		queue.Use(worker.Trace(tel.TracerProvider, tel.Propagator))
	}
	// The services run in this order and stop in reverse. With METRICS_ADDR:
	// metrics per route, and the health checks.
	var services []runner.Service
	if cfg.MetricsAddr != "" {
		listener, err := observe(cfg, broker, database, rpc, queue)
		if err != nil {
			return err
		}
		// First to start, last to stop: /readyz says "not ready" while the workers drain.
		services = append(services, runner.Named("metrics and health listener", listener))
	}

	//
	// MODELS and ROUTES: a model is a table's row type plus its queries (the
	// built-in CRUD comes with db.Model); the routes, below, use them.
	//
	cfg.Inbox.Logger = log
	if route := os.Getenv("TEST_HOOK_KILL_AFTER_COMMIT"); route != "" {
		// Test hook (e2e TestServiceKilledBetweenCommitAndPublish): die by
		// SIGKILL right after a transaction of the idempotent route named
		// commits, before its ack and before the relay publishes what it
		// recorded.
		log.Warn("TEST_HOOK_KILL_AFTER_COMMIT is set: this process kills itself after the first commit on the route", "route", route)
		cfg.Inbox.AfterCommit = func(r, _ string) {
			if self, err := os.FindProcess(os.Getpid()); err == nil && r == route {
				_ = self.Kill() // SIGKILL
			}
		}
	}
	inbox := outbox.NewInbox(database, cfg.Inbox) // the idempotent routes' record; prunes itself while running
	// The outbox relay publishes what handlers recorded with outbox.Add in
	// their transactions, after commit, with confirms.
	clientOpts := []worker.ClientOption{worker.WithLogger(log)}
	if tel.Tracing { // a send span in the trace of the handler that recorded the message
		clientOpts = append(clientOpts, worker.WithTracing(tel.TracerProvider, tel.Propagator))
	}
	client := worker.NewClient(broker, clientOpts...)
	defer client.Close()
	cfg.Relay.Logger = log
	relay := outbox.NewRelay(database, client, cfg.Relay)
	services = append(services, runner.Named("inbox pruner", inbox), runner.Named("outbox relay", relay),
		runner.Named("rpc worker", rpc), runner.Named("queue worker", queue))
	routes(rpc, queue, &service{database: database, items: models.NewExampleItems(database), inbox: inbox, log: log})

	//
	// RUN: start the workers, serve until SIGINT or SIGTERM, then stop taking
	// work, let in-flight requests finish (DrainTimeout) and close in reverse.
	//
	r := &runner.Runner{Logger: log, DrainTimeout: cfg.DrainTimeout}
	return r.Run(ctx, services...)
}

// observe counts the workers' deliveries, the connections' state and the
// database pool in a Prometheus registry, and returns the listener that
// serves it at /metrics with /healthz and /readyz (ready while both
// workers consume on every route and the database answers).
func observe(cfg config, broker *worker.Conn, database *db.Client, rpc *worker.RPC, queue *worker.Queue) (*telemetry.Server, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewDBStatsCollector(database.DB().DB, cfg.Database.Database))
	metrics, err := worker.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	if err := metrics.Watch(broker); err != nil {
		return nil, err
	}
	rpc.Use(metrics.Middleware())
	queue.Use(metrics.Middleware())
	return telemetry.Listen(cfg.MetricsAddr, reg, func(ctx context.Context) error {
		return errors.Join(rpc.Ready(), queue.Ready(), database.Ping(ctx))
	})
}

// errorType names the service's errors on the wire, in one place: an error
// that names itself (worker.Errorf, or lib.go's with an ErrorType method),
// then the database's, then the worker's default ("Error": an internal
// failure, whose text a production reply does not show). BadRequest means
// the caller's fault: a queue message failing with it is dead-lettered at
// once.
func errorType(err error) string {
	var typed worker.Typed
	switch {
	case errors.As(err, &typed) && typed.ErrorType() != "":
		return typed.ErrorType()
	case errors.Is(err, db.ErrNotFound):
		return "NotFound"
	case errors.Is(err, db.ErrConflict):
		return "Conflict"
	case errors.Is(err, db.ErrInvalid):
		return worker.TypeBadRequest
	}
	return worker.DefaultErrorType(err)
}

// service is what the routes need: the database, its models, the logger.
type service struct {
	database *db.Client
	items    *models.ExampleItems
	inbox    *outbox.Inbox
	log      *slog.Logger
}

// routes registers every route of the service. The route name is the queue
// name. worker.Func adapts a typed function func(ctx, Req) (Resp, error);
// worker.Job a func(ctx, Msg) error. The same function fills the running
// workers and, for `service routes` and `service asyncapi`, a catalog that
// needs no connection (s is then empty: nothing below runs).
func routes(rpc, queue worker.Router, s *service) {
	rpc.Handle("hello_world", worker.Func(helloWorld))
	rpc.Handle("test", worker.Func(tookForever))
	rpc.Handle("will-error", worker.Func(willError))
	rpc.Handle("dictionary", worker.Func(addBar))
	rpc.Handle("db", worker.Func(func(ctx context.Context, _ any) ([]string, error) {
		return s.database.Tables(ctx)
	}))
	rpc.Handle("example-items", worker.Func(func(ctx context.Context, match *string) ([]models.ExampleItem, error) {
		m, err := wantString(match)
		if err != nil {
			return nil, err
		}
		return s.items.AllByString(ctx, m)
	}))
	// Creating an item also announces it: the event item.created, recorded
	// through the outbox in the insert's transaction, reaches every service
	// subscribed to it (worker.NewEvents) once the row is committed, and
	// never for a row that was not.
	rpc.Handle("example-item.create", worker.Func(func(ctx context.Context, in newItem) (models.ExampleItem, error) {
		item, err := in.toItem()
		if err != nil {
			return item, err
		}
		var created models.ExampleItem
		err = s.database.InTx(ctx, func(tx *db.Tx) error {
			if created, err = s.items.In(tx).Create(ctx, item); err != nil {
				return err
			}
			_, err = outbox.Event(ctx, tx, "item.created", created)
			return err
		})
		return created, err
	}))
	rpc.Handle("example-item.read", worker.Func(func(ctx context.Context, id uuid.UUID) (models.ExampleItem, error) {
		return s.items.Read(ctx, id)
	}))
	rpc.Handle("example-item.update", worker.Func(func(ctx context.Context, in itemChanges) (models.ExampleItem, error) {
		if err := in.check(); err != nil {
			return models.ExampleItem{}, err
		}
		changes, err := s.items.Changes(in.Changes) // JSON values -> the columns' Go types
		if err != nil {
			return models.ExampleItem{}, err
		}
		return s.items.Update(ctx, in.ID, changes)
	}))
	rpc.Handle("example-item.delete", worker.Func(func(ctx context.Context, id uuid.UUID) (models.ExampleItem, error) {
		return s.items.Delete(ctx, id)
	}))

	queue.Handle("queue-test", worker.Job(func(ctx context.Context, data json.RawMessage) error {
		s.log.InfoContext(ctx, "queue-test received a message", "bytes", len(data), "data", preview(data, 200))
		return nil
	}))
	queue.Handle("example-item.store", worker.Job(func(ctx context.Context, in newItem) error {
		item, err := in.toItem()
		if err != nil {
			return err
		}
		_, err = s.items.Create(ctx, item)
		return err
	}))
	// The same, idempotent: a redelivered message stores nothing twice. The
	// inbox runs the handler in a transaction (db.TxFrom), which the
	// handler's writes must use.
	queue.Handle("example-item.store-once", worker.Job(func(ctx context.Context, in newItem) error {
		item, err := in.toItem()
		if err != nil {
			return err
		}
		items := s.items.Model
		if tx, ok := db.TxFrom(ctx); ok {
			items = items.In(tx)
		}
		_, err = items.Create(ctx, item)
		return err
	}), s.inbox.Idempotent())
	// Exactly-once forwarding: the item goes on to example-item.store-once
	// through the outbox, recorded in the inbox's transaction, so neither a
	// redelivery nor a crash between commit and publish sends it twice or
	// loses it.
	queue.Handle("example-item.forward", worker.Job(func(ctx context.Context, in newItem) error {
		if _, err := in.toItem(); err != nil {
			return err
		}
		forward := func(tx *db.Tx) error {
			_, err := outbox.Publish(ctx, tx, "example-item.store-once", in)
			return err
		}
		if tx, ok := db.TxFrom(ctx); ok {
			return forward(tx)
		}
		// A message without a message id (the Python library sends none)
		// passes the inbox without a transaction: open one, so the item
		// still goes through the outbox (at least once; the inbox cannot
		// tell its copies apart).
		return s.database.InTx(ctx, forward)
	}), s.inbox.Idempotent())
}

// healthcheck answers whether the service is ready, for a container's
// HEALTHCHECK in an image without a shell: with METRICS_ADDR set it asks
// the running service's /readyz (consuming on every route, database
// reachable); without, whether RabbitMQ and PostgreSQL can be reached,
// trying both at once for up to 3 s each. It prints one line and returns
// the exit code.
func healthcheck(cfg config) int {
	if cfg.MetricsAddr != "" {
		return readyz(cfg.MetricsAddr)
	}
	slog.SetDefault(slog.New(slog.DiscardHandler)) // no retry chatter: the verdict is the output
	probe := func(connect func(context.Context) (io.Closer, error)) <-chan error {
		result := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			c, err := connect(ctx)
			if err == nil {
				_ = c.Close()
			}
			result <- err
		}()
		return result
	}
	database := probe(func(ctx context.Context) (io.Closer, error) { return db.Open(ctx, cfg.Database) })
	broker := probe(func(ctx context.Context) (io.Closer, error) { return worker.Dial(ctx, cfg.Broker) })
	if err := errors.Join(<-broker, <-database); err != nil {
		fmt.Fprintln(os.Stderr, "unhealthy:", err)
		return 1
	}
	fmt.Println("healthy: RabbitMQ and PostgreSQL answer")
	return 0
}

// readyz asks the service listening at addr (METRICS_ADDR; an empty host
// means this machine) whether it is ready.
func readyz(addr string) int {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "unhealthy: METRICS_ADDR=%q is not host:port: %v\n", addr, err)
		return 1
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	url := "http://" + net.JoinHostPort(host, port) + "/readyz"
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, http.NoBody)
	if err != nil {
		fmt.Fprintf(os.Stderr, "unhealthy: METRICS_ADDR=%q does not make a URL: %v\n", addr, err)
		return 1
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(os.Stderr, "unhealthy: no answer from %s (is the service running with METRICS_ADDR=%s?): %v\n", url, addr, err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "unhealthy: %s answered %d: %s\n", url, resp.StatusCode, strings.TrimSpace(string(body)))
		return 1
	}
	fmt.Println("healthy: ready (consuming on every route, database reachable)")
	return 0
}
