package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Header names.
const (
	// HeaderDeadline carries the caller's deadline in Unix milliseconds
	// (int64). A worker does not run a request whose deadline has passed,
	// and gives the handler a ctx with that deadline.
	HeaderDeadline = "x-deadline"

	// Headers a dead-lettered message carries besides its original ones.
	HeaderError     = "x-error"      // last error message
	HeaderErrorType = "x-error-type" // its reply type, e.g. "BadRequest"
	HeaderAttempts  = "x-attempts"   // handler runs (int32); 0 when it did not decode
	HeaderRoute     = "x-route"      // the queue it was consumed from
)

// DeadLetterSuffix is appended to a queue route's name to name its dead-letter queue.
const DeadLetterSuffix = ".dlq"

type kind int

const (
	kindRPC kind = iota
	kindQueue
)

func (k kind) String() string {
	if k == kindRPC {
		return "RPC"
	}
	return "queue"
}

// server is what RPC and Queue share: routes, consumers, lifecycle.
type server struct {
	conn   *Conn
	kind   kind
	opts   options
	lim    limits
	queues queueSettings
	logs   *sampler

	mu        sync.Mutex
	routes    map[string]route
	order     []string
	use       []Middleware // Use: around every route
	started   bool
	shut      bool // Shutdown ran
	consumers []*consumer

	stopping   atomic.Bool   // no new deliveries: StopIntake or Shutdown ran
	stop       chan struct{} // closed when the intake stops (StopIntake or Shutdown)
	base       context.Context
	cancelBase context.CancelFunc // called when Shutdown gives up waiting

	loops   sync.WaitGroup // consumer loops, which wait for their handlers
	running atomic.Int64

	dlq *publisher // queue workers only

	// Events workers only: the event exchange, and each subscription
	// queue's pattern (events.go).
	exchange string
	bindings map[string]string
}

// route is a registered route: its handler and its own middleware.
type route struct {
	h   Handler
	mws []Middleware
}

func newServer(conn *Conn, k kind, o options) *server {
	if o.replyTo == nil {
		o.replyTo = ReplyQueue
	}
	if !o.maxBodySet {
		o.maxBody = conn.maxBody
	}
	s := &server{
		conn: conn, kind: k, opts: o,
		lim:    limits{maxBody: o.maxBody, maxDepth: o.maxDepth, inflate: conn.inflate},
		queues: newQueueSettings(k, o),
		logs:   newSampler(),
		routes: map[string]route{},
		stop:   make(chan struct{}),
	}
	// Deliveries' ctx tells Use middleware which worker runs them (trace.go).
	s.base, s.cancelBase = context.WithCancel(context.WithValue(context.Background(), serverKey{}, s))
	if k == kindQueue {
		s.dlq = newPublisher(conn, o.logger)
	}
	return s
}

func (s *server) handle(name string, h Handler, mws []Middleware) {
	checkRoute(name, h)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		panic(fmt.Sprintf("worker: Handle(%q) after Start", name))
	}
	if _, dup := s.routes[name]; dup {
		panic(fmt.Sprintf("worker: route %q registered twice", name))
	}
	s.routes[name] = route{h: h, mws: mws}
	s.order = append(s.order, name)
}

func (s *server) useMiddleware(mws []Middleware) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		panic("worker: Use after Start")
	}
	s.use = append(s.use, mws...)
}

func (s *server) start(ctx context.Context) error {
	s.mu.Lock()
	switch {
	case s.stopping.Load():
		s.mu.Unlock()
		return fmt.Errorf("start %s worker: %w (it was shut down)", s.kind, ErrClosed)
	case s.started:
		s.mu.Unlock()
		return fmt.Errorf("start %s worker: already started", s.kind)
	}
	s.started = true
	s.mu.Unlock()
	// Every route is set up before any consumer loop runs, so a failure
	// leaves nothing behind: the channels opened so far are closed (their
	// unacked deliveries go back to the queue) and Start may be called again.
	var consumers []*consumer
	var deliveries []<-chan amqp.Delivery
	abort := func(err error) error {
		within(ctx, consumers, (*consumer).closeChannel)
		s.mu.Lock()
		s.started = false
		s.mu.Unlock()
		return err
	}
	for _, name := range s.order {
		r := s.routes[name]
		c := &consumer{s: s, route: name, pipeline: s.pipeline(r.h, r.mws), refusal: chain(refusal, s.use), queues: s.queues.forRoute(name)}
		d, err := c.setup(ctx)
		if err != nil {
			return abort(fmt.Errorf("start %s worker: %w", s.kind, err))
		}
		consumers = append(consumers, c)
		deliveries = append(deliveries, d)
	}
	s.mu.Lock()
	if s.stopping.Load() { // Shutdown ran while we set up
		s.mu.Unlock()
		within(ctx, consumers, (*consumer).closeChannel)
		return fmt.Errorf("start %s worker: %w (shut down while starting)", s.kind, ErrClosed)
	}
	s.consumers = consumers
	for i, c := range consumers {
		s.loops.Add(1)
		go c.loop(deliveries[i])
	}
	s.mu.Unlock()
	s.opts.logger.Debug("worker started", "kind", s.kind.String(), "routes", s.order)
	return nil
}

// stopIntake stops consuming: the first call marks the worker stopping and
// cancels its consumers (a round trip to the broker, bounded by ctx); later
// calls only return the consumers.
func (s *server) stopIntake(ctx context.Context) []*consumer {
	s.mu.Lock()
	if !s.started {
		s.mu.Unlock()
		return nil
	}
	consumers := s.consumers
	first := !s.stopping.Load()
	if first {
		s.stopping.Store(true)
		close(s.stop)
	}
	s.mu.Unlock()
	if first {
		within(ctx, consumers, func(c *consumer) { c.cancel() })
	}
	return consumers
}

func (s *server) shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.started || s.shut {
		s.mu.Unlock()
		return nil
	}
	s.shut = true
	s.mu.Unlock()

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.opts.drain)
		defer cancel()
	}
	consumers := s.stopIntake(ctx)
	done := make(chan struct{})
	go func() {
		s.loops.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		n := s.running.Load()
		s.cancelBase()
		if n > 0 {
			err = fmt.Errorf("shutdown of %s worker: %d handlers still running when the wait ended; their messages go back to the queue: %w", s.kind, n, ctx.Err())
		} else {
			err = fmt.Errorf("shutdown of %s worker: the broker did not confirm the end of consuming, or the last replies and acks could not be sent, in time (is the connection blocked?); unsettled messages go back to the queue: %w", s.kind, ctx.Err())
		}
		// Give handlers that honour ctx a moment to return and ack.
		select {
		case <-done:
		case <-time.After(100 * time.Millisecond):
		}
	}
	s.cancelBase()
	// Closing is a round trip too: once ctx has ended the closes finish in
	// the background (or when the connection closes).
	within(ctx, consumers, func(c *consumer) { c.settleAndClose() })
	if s.dlq != nil {
		within(ctx, []*publisher{s.dlq}, func(p *publisher) { p.close() })
	}
	return err
}

// within runs f on each item concurrently and waits until all return or
// ctx ends, whichever comes first.
func within[T any](ctx context.Context, items []T, f func(T)) {
	var wg sync.WaitGroup
	for _, it := range items {
		wg.Go(func() { f(it) })
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// consumer consumes one route.
type consumer struct {
	s        *server
	route    string
	pipeline Handler       // the route's handler in its middleware
	refusal  Handler       // the Use middleware alone, for deliveries that never reach the handler (see refuse)
	queues   queueSettings // how the route's queues are declared

	mu  sync.Mutex
	ch  *amqp.Channel
	tag string

	dlqFails atomic.Int32 // consecutive dead letters that could not be confirmed
}

// setup opens a channel, declares the route's queues and starts consuming.
func (c *consumer) setup(ctx context.Context) (<-chan amqp.Delivery, error) {
	s := c.s
	ch, err := s.conn.channel(ctx)
	if err != nil {
		return nil, fmt.Errorf("route %q: %w", c.route, err)
	}
	fail := func(what string, err error) (<-chan amqp.Delivery, error) {
		_ = ch.Close()
		if what == "" {
			return nil, fmt.Errorf("route %q: %w", c.route, err)
		}
		return nil, fmt.Errorf("route %q: %s: %w", c.route, what, err)
	}
	if err := ch.Qos(s.opts.prefetch, 0, false); err != nil {
		return fail("set prefetch", err)
	}
	open := func() (*amqp.Channel, error) { return s.conn.channel(ctx) }
	if s.kind == kindQueue {
		// The dead-letter queue first: the route's queue names it.
		dlq, args := c.route+DeadLetterSuffix, c.queues.deadLetterArgs()
		if _, err := ch.QueueDeclare(dlq, true, false, false, false, args); err != nil {
			return fail("", declareError(open, dlq, true, args, c.queues.typ, err))
		}
	}
	if err := c.declareRetries(ch); err != nil {
		return fail("", err)
	}
	durable, args := c.queues.routeQueue(s.kind, c.route)
	if _, err := ch.QueueDeclare(c.route, durable, false, false, false, args); err != nil {
		return fail("", declareError(open, c.route, durable, args, c.queues.typ, err))
	}
	if err := c.bind(ch); err != nil {
		return fail("", err)
	}
	tag := c.route + "." + randomHex(6)
	if s.kind == kindQueue && !c.queues.brokerDeadLetters(s.kind) {
		s.conn.budget.readWhole(tag, true)
	}
	deliveries, err := ch.Consume(c.route, tag, false, false, false, false, nil)
	if err != nil {
		return fail(fmt.Sprintf("consume queue %q", c.route), err)
	}
	c.mu.Lock()
	c.ch, c.tag = ch, tag
	c.mu.Unlock()
	if s.stopping.Load() {
		// Shutdown ran while we set up, after it cancelled the consumers
		// and read the channels it knew. Close this channel (in the
		// background: the broker may be slow to answer): what it delivered
		// meanwhile goes back to the queue untouched, and its deliveries
		// channel closes, which ends the loop.
		go c.closeChannel()
	}
	return deliveries, nil
}

// loop hands deliveries to handlers; when the channel dies it sets up
// again, until Shutdown.
func (c *consumer) loop(deliveries <-chan amqp.Delivery) {
	s := c.s
	defer s.loops.Done()
	for {
		c.mu.Lock()
		tag := c.tag
		ack := newAcker(c.ch, s.opts.logger, s.opts.prefetch, ackPeriod,
			func(deliveryTag uint64) { s.conn.release(tag, deliveryTag) })
		c.mu.Unlock()
		// A goroutine per delivery: the broker sends at most the prefetch
		// before we ack, so at most that many handlers run. A new goroutine
		// starts with a stack of the size goroutines have needed so far; a
		// fixed pool reading the channel would hand each delivery to the
		// goroutine that waited longest, whose stack the GC has shrunk
		// meanwhile, and pay for growing it again.
		var handlers sync.WaitGroup
		for d := range deliveries {
			if s.stopping.Load() {
				ack.requeue(d.DeliveryTag) // let another replica take it now
				continue
			}
			handlers.Go(func() { c.serve(ack, &d) })
		}
		handlers.Wait()
		ack.drain()
		if s.stopping.Load() {
			return
		}
		s.opts.logger.Warn("consumer stopped, resubscribing", "route", c.route)
		// The broker may have cancelled the consumer (its queue was deleted)
		// and left the channel open: close it, or each resubscribe leaks one.
		// Every delivery on it has been settled (its handlers are done).
		c.closeChannel()
		backoff := 100 * time.Millisecond
		for {
			ctx, cancel := untilClosed(s.stop)
			var err error
			deliveries, err = c.setup(ctx)
			cancel()
			if err == nil {
				s.opts.logger.Info("consumer resumed", "route", c.route)
				break
			}
			if s.stopping.Load() || errors.Is(err, ErrClosed) {
				return
			}
			s.opts.logger.Warn("cannot resubscribe, retrying", "route", c.route, "err", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.stop:
				return
			}
			backoff = min(backoff*2, 5*time.Second)
		}
	}
}

// cancel stops the consumer; deliveries already sent still arrive.
func (c *consumer) cancel() {
	c.mu.Lock()
	ch, tag := c.ch, c.tag
	c.mu.Unlock()
	if ch != nil {
		_ = ch.Cancel(tag, false)
	}
}

// settleAndClose closes the consumer's channel once the broker has applied
// the acks sent on it. A quorum queue applies acks asynchronously: on
// RabbitMQ 3.10 a channel closed right after its last acks returns most of
// those messages to the queue as if never acked (measured: 167 of 200), so a
// clean shutdown would redeliver work it finished. A basic.get on the same
// channel reaches the queue after the acks, so its answer means they were
// applied; a message it happens to take goes straight back.
func (c *consumer) settleAndClose() {
	c.mu.Lock()
	ch := c.ch
	c.mu.Unlock()
	if ch != nil && c.queues.typ == Quorum && !ch.IsClosed() {
		if d, ok, err := ch.Get(c.route, false); err == nil && ok {
			_ = d.Nack(false, true)
		}
	}
	c.closeChannel()
}

func (c *consumer) closeChannel() {
	c.mu.Lock()
	ch, tag := c.ch, c.tag
	c.mu.Unlock()
	c.s.conn.budget.readWhole(tag, false)
	if ch != nil {
		_ = ch.Close()
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// RPC is a request/reply worker: each route is a queue (classic and
// non-durable, as the seed declared them, unless [WithQueueType]) whose
// requests are answered to their reply_to with their correlation_id.
// Several processes running the same routes share the work (competing
// consumers).
//
// Register routes with Handle, and middleware with Use, before Start. Up to
// the prefetch ([WithPrefetch], default 200) requests per route run at
// once.
type RPC struct{ worker }

// NewRPC returns an RPC worker on conn.
func NewRPC(conn *Conn, opts ...RPCOption) *RPC {
	return &RPC{worker{newServer(conn, kindRPC, rpcOptions(opts))}}
}

// Queue is a work-queue worker: each route is a durable queue (quorum
// unless [WithQueueType]) of persistent messages. A handler failure is
// retried ([WithRetry], default [DefaultRetry]); after the last attempt, or
// at once for a message that does not decode or fails with a BadRequest,
// the message goes to the durable queue "<route>.dlq" with the failure in
// its headers ([HeaderError], [HeaderErrorType], [HeaderErrorID],
// [HeaderAttempts], [HeaderRoute]), and only then is it acked. A message
// that arrives with a reply_to gets no reply.
type Queue struct{ worker }

// NewQueue returns a queue worker on conn.
func NewQueue(conn *Conn, opts ...QueueOption) *Queue {
	return &Queue{worker{newServer(conn, kindQueue, queueOptions(opts))}}
}

// worker is what [RPC], [Queue] and [Events] share: routes, middleware,
// start and drain. Events replaces Handle and HandleFunc with its own.
type worker struct{ s *server }

// Handle registers h for route, inside mws (the first outermost) and the
// worker's middleware. It panics when route is empty or reserved (amq.),
// registered twice, or the worker has started.
func (w worker) Handle(route string, h Handler, mws ...Middleware) { w.s.handle(route, h, mws) }

// HandleFunc registers f for route, like Handle(route, HandlerFunc(f)).
func (w worker) HandleFunc(route string, f func(ctx context.Context, req *Request) ([]byte, error), mws ...Middleware) {
	w.s.handle(route, HandlerFunc(f), mws)
}

// Use adds middleware around every route, the first outermost, outside the
// worker's own (see [Middleware]) and so, on a Queue or Events worker,
// outside its retries: it runs once per delivery, also for a delivery
// refused before its handler (a body that does not decode, a reply sent as
// a request), where its next returns the refusal's error at once and
// req.Data is nil; tracing and metrics see those too. It panics after
// Start.
func (w worker) Use(mws ...Middleware) { w.s.useMiddleware(mws) }

// Start declares the routes' queues (for a Queue or Events worker their
// dead-letter queues too; for Events the event exchange and the bindings)
// and starts consuming them. It returns once every route is consuming, or
// an error naming the route that failed; then no route is consuming and
// Start may be called again (after fixing the cause, e.g. deleting a queue
// declared with other settings). After a successful Start, lost
// connections are recovered in the background. Start after Shutdown fails
// with [ErrClosed].
func (w worker) Start(ctx context.Context) error { return w.s.start(ctx) }

// Shutdown stops taking deliveries, waits for running handlers (retries
// included) and their replies and acks until ctx ends (or the drain timeout
// when ctx has no deadline), then closes the worker's channels. Unfinished
// deliveries return to their queue, and what is published meanwhile waits
// there. It does not close the Conn.
func (w worker) Shutdown(ctx context.Context) error { return w.s.shutdown(ctx) }

// StopIntake stops taking new deliveries (cancels the consumers) without
// waiting for the ones in flight; Shutdown then drains them. A runner calls
// it on every worker first, so none takes work while another drains.
func (w worker) StopIntake(ctx context.Context) error {
	w.s.stopIntake(ctx)
	return nil
}
