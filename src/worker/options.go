package worker

import (
	"context"
	"log/slog"
	"maps"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Options are typed by what they configure, so one that does not apply is
// a compile error, not silently ignored: [Dial] takes ConnOptions, [NewRPC]
// RPCOptions, [NewQueue] QueueOptions, [NewClient] ClientOptions. An
// [Option] applies to all four, a [ServeOption] to both workers.
type (
	// ConnOption configures [Dial].
	ConnOption interface{ applyConn(*options) }
	// RPCOption configures [NewRPC].
	RPCOption interface{ applyRPC(*options) }
	// QueueOption configures [NewQueue].
	QueueOption interface{ applyQueue(*options) }
	// ClientOption configures [NewClient].
	ClientOption interface{ applyClient(*options) }

	// ServeOption configures both workers, the RPC and the Queue.
	ServeOption interface {
		RPCOption
		QueueOption
	}
	// Option configures a Conn, both workers and a Client.
	Option interface {
		ConnOption
		RPCOption
		QueueOption
		ClientOption
	}
)

type (
	allOption    func(*options)
	workerOption func(*options)
	connOption   func(*options)
	rpcOption    func(*options)
	queueOption  func(*options)
	clientOption func(*options)
)

func (f allOption) applyConn(o *options)      { f(o) }
func (f allOption) applyRPC(o *options)       { f(o) }
func (f allOption) applyQueue(o *options)     { f(o) }
func (f allOption) applyClient(o *options)    { f(o) }
func (f workerOption) applyRPC(o *options)    { f(o) }
func (f workerOption) applyQueue(o *options)  { f(o) }
func (f connOption) applyConn(o *options)     { f(o) }
func (f rpcOption) applyRPC(o *options)       { f(o) }
func (f queueOption) applyQueue(o *options)   { f(o) }
func (f clientOption) applyClient(o *options) { f(o) }

// options is what every constructor reads its settings from.
type options struct {
	logger      *slog.Logger
	name        string
	prefetch    int
	development bool
	retry       Retry
	drain       time.Duration
	maxBody     int64
	maxBodySet  bool // WithMaxBodySize was given: else workers and clients take their Conn's
	maxDepth    int
	maxInflight int64
	maxInflate  int64
	queueType   QueueType // "" means the kind's default
	routeTypes  map[string]QueueType
	delivery    int
	dlqMax      int
	dlqMaxBytes int64
	replyTo     func(string) bool
	errorType   func(error) string
	encoding    Encoding
	exchange    string // WithEventExchange; "" means DefaultEventExchange

	// sends run as a Client sends a message (WithTracing, Metrics.Client),
	// the first outermost.
	sends []sendHook
}

// sendHook is told of a Call (op "call") or Publish (op "publish") about
// to be sent: it may add to the message's headers, which are nil or a
// table the Client made for this message (never the caller's map), and
// returns the ctx to send with and a function to call with the result.
type sendHook func(ctx context.Context, op, route string, msg *amqp.Publishing) (context.Context, func(error))

// Retry is the retry policy of a [Queue] worker: a failed handler runs again
// after Backoff, the wait doubling each time up to MaxBackoff, for at most
// Attempts runs in all; then the message is dead-lettered.
type Retry struct {
	Attempts   int           // runs in all, including the first; default 6
	Backoff    time.Duration // wait before the second run; default 200ms
	MaxBackoff time.Duration // longest wait; default 5s

	// InBroker makes the broker hold the waits instead of the worker: a
	// failed message is moved to a retry queue of its route (RetryQueue)
	// that hands it back after the wait, so it frees its prefetch slot
	// and the route's other messages flow meanwhile (see delay.go). Off:
	// the worker waits, holding the message and its slot, and a Shutdown
	// during a wait requeues it.
	InBroker bool
}

// Defaults.
const (
	DefaultPrefetch    = 200      // deliveries in flight per route
	DefaultMaxBodySize = 16 << 20 // bytes, after gzip decompression
	DefaultMaxDepth    = 128      // JSON nesting levels
	// DefaultMaxInflightBytes is the budget of a Conn for the bodies of the
	// deliveries its workers hold (received, not yet settled).
	DefaultMaxInflightBytes = 64 << 20
	// DefaultMaxInflateBytes is the budget of a Conn for gzip bodies being
	// decompressed at once.
	DefaultMaxInflateBytes = 64 << 20
	DefaultDrainTimeout    = 30 * time.Second // Shutdown wait when its ctx has no deadline
)

// DefaultRetry is the queue retry policy: 6 runs with waits of 0.2, 0.4, 0.8,
// 1.6 and 3.2 s between them, about 6 s in all, so a database restart of a
// few seconds is survived without dead-lettering.
var DefaultRetry = Retry{Attempts: 6, Backoff: 200 * time.Millisecond, MaxBackoff: 5 * time.Second}

func defaults() options {
	return options{
		prefetch: DefaultPrefetch,
		retry:    DefaultRetry,
		drain:    DefaultDrainTimeout,
		maxBody:  DefaultMaxBodySize,
		maxDepth: DefaultMaxDepth,

		maxInflight: DefaultMaxInflightBytes,
		maxInflate:  DefaultMaxInflateBytes,
		errorType:   DefaultErrorType,
		encoding:    Gzip,
	}
}

// finish fills what the options left to their defaults.
func (o options) finish() options {
	if o.logger == nil {
		o.logger = slog.Default()
	}
	o.maxInflight = max(o.maxInflight, o.maxBody)
	o.maxInflate = max(o.maxInflate, o.maxBody)
	return o
}

// build applies opts over the defaults with apply, then fills the rest.
func build[O any](opts []O, apply func(O, *options)) options {
	o := defaults()
	for _, opt := range opts {
		apply(opt, &o)
	}
	return o.finish()
}

func connOptions(opts []ConnOption) options { return build(opts, ConnOption.applyConn) }

func rpcOptions(opts []RPCOption) options { return build(opts, RPCOption.applyRPC) }

func queueOptions(opts []QueueOption) options { return build(opts, QueueOption.applyQueue) }

func clientOptions(opts []ClientOption) options { return build(opts, ClientOption.applyClient) }

// WithLogger sets the logger. Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return allOption(func(o *options) { o.logger = l }) }

// WithMaxBodySize caps the size of a message body. On [Dial] it bounds
// what is read off the wire: a larger body is never read into memory (see
// [HeaderBodyRefused]). On the workers and the Client (replies) it bounds
// a body after gzip decompression; they default to their Conn's limit.
// Default [DefaultMaxBodySize].
func WithMaxBodySize(n int64) Option {
	return allOption(func(o *options) { o.maxBody, o.maxBodySet = n, true })
}

// WithName sets the connection_name client property shown by the broker's
// management UI and `rabbitmqctl list_connections`, with " (consume)" or
// " (publish)" after it for the Conn's two connections.
func WithName(name string) ConnOption { return connOption(func(o *options) { o.name = name }) }

// WithMaxInflightBytes sets how many bytes of message bodies the workers of
// a Conn may hold at once: received and not yet settled. Default
// [DefaultMaxInflightBytes]. A delivery whose body does not fit waits on
// the socket, before it is read, until enough others are settled: the
// broker then holds back what it would send, on every route of the
// connection. RabbitMQ's prefetch bounds deliveries by count only, so this
// is what bounds the memory they take. Values below the body limit
// ([WithMaxBodySize]) mean the body limit.
func WithMaxInflightBytes(n int64) ConnOption {
	return connOption(func(o *options) { o.maxInflight = n })
}

// WithMaxInflateBytes sets how many bytes the gzip bodies being
// decompressed at once may inflate to. Default [DefaultMaxInflateBytes]. A
// gzip body reserves the size its trailer states (refused at once when over
// the body limit) before it is inflated, and may not inflate past it.
func WithMaxInflateBytes(n int64) ConnOption {
	return connOption(func(o *options) { o.maxInflate = n })
}

// WithPrefetch sets how many deliveries of one route are handled at once.
// Default [DefaultPrefetch]; values below 1 mean 1.
func WithPrefetch(n int) ServeOption {
	return workerOption(func(o *options) { o.prefetch = max(n, 1) })
}

// WithDevelopment makes error replies and dead letters carry the whole
// error text, its Go type and a trace (a panic's stack, or the chain of a
// returned error's types), and logs every failure (production samples
// them). Off by default: an untyped error is then answered "internal error"
// with its error id.
func WithDevelopment(on bool) ServeOption {
	return workerOption(func(o *options) { o.development = on })
}

// WithDrainTimeout bounds how long Shutdown waits for running handlers when
// its context has no deadline. Default [DefaultDrainTimeout].
func WithDrainTimeout(d time.Duration) ServeOption {
	return workerOption(func(o *options) { o.drain = d })
}

// WithQueueType sets the type of the routes' queues: [Quorum] or
// [Classic]. Default: Classic for RPC routes, Quorum for queue routes and
// their dead-letter queues.
func WithQueueType(t QueueType) ServeOption {
	return workerOption(func(o *options) { o.queueType = t })
}

// WithRouteQueueType declares route's queue (and its dead-letter queue) as
// t whatever the worker's type: an RPC route that must survive the loss of
// a cluster node is Quorum while the others stay Classic, say. Options
// given later for the same route win.
func WithRouteQueueType(route string, t QueueType) ServeOption {
	return workerOption(func(o *options) {
		if o.routeTypes == nil {
			o.routeTypes = map[string]QueueType{}
		} else {
			o.routeTypes = maps.Clone(o.routeTypes)
		}
		o.routeTypes[route] = t
	})
}

// WithErrorType sets how errors are named on the wire: the reply type of a
// failed request, x-error-type of a dead letter. Default
// [DefaultErrorType]. A service maps its own errors (a database's "not
// found", say) and passes the rest to DefaultErrorType. "BadRequest" means
// the caller's fault: a queue worker dead-letters it at once instead of
// retrying; "Error" means an internal failure whose text a production
// reply does not show.
func WithErrorType(f func(error) string) ServeOption {
	return workerOption(func(o *options) { o.errorType = f })
}

// WithRetry sets the retry policy of a queue worker. Zero fields keep their
// defaults from [DefaultRetry].
func WithRetry(r Retry) QueueOption {
	return queueOption(func(o *options) {
		o.retry = o.retry.with(r)
	})
}

// WithDeliveryLimit sets how often a quorum queue route delivers a message
// before the broker dead-letters it. Default [DefaultDeliveryLimit].
func WithDeliveryLimit(n int) QueueOption {
	return queueOption(func(o *options) { o.delivery = n })
}

// WithDeadLetterLimit bounds each dead-letter queue to messages and bytes.
// Zero keeps a default ([DefaultDeadLetterMax],
// [DefaultDeadLetterMaxBytes]). A full dead-letter queue refuses new dead
// letters; their messages stay in the route's queue and are retried.
func WithDeadLetterLimit(messages int, bytes int64) QueueOption {
	return queueOption(func(o *options) { o.dlqMax, o.dlqMaxBytes = messages, bytes })
}

// WithReplyTo sets which reply_to values an RPC worker answers to. Default
// [ReplyQueue]: RabbitMQ's direct reply-to and server-named queues, never a
// route's queue, so a reply cannot be run as someone's request or job. A
// request whose reply_to is refused is not run; it is logged and acked.
func WithReplyTo(allow func(replyTo string) bool) RPCOption {
	return rpcOption(func(o *options) { o.replyTo = allow })
}

// WithEncoding sets how a Client encodes the requests and messages it
// sends. Default [Gzip], which every service of the Python fleet
// (lib-python-amqp-worker gunzips every body) and every service of this
// template reads; [JSON] is a little faster between services of this
// template only.
func WithEncoding(e Encoding) ClientOption {
	return clientOption(func(o *options) { o.encoding = e })
}
