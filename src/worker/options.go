package worker

import (
	"log/slog"
	"time"
)

// Option configures a [Conn], [RPC], [Queue] or [Client]. Each option says
// which of them it applies to; the others ignore it.
type Option func(*options)

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
	delivery    int
	dlqMax      int
	dlqMaxBytes int64
	replyTo     func(string) bool
}

// Retry is the retry policy of a [Queue] worker: a failed handler runs again
// after Backoff, the wait doubling each time up to MaxBackoff, for at most
// Attempts runs in all; then the message is dead-lettered.
type Retry struct {
	Attempts   int           // runs in all, including the first; default 6
	Backoff    time.Duration // wait before the second run; default 200ms
	MaxBackoff time.Duration // longest wait; default 5s
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

func newOptions(opts []Option) options {
	o := options{
		prefetch: DefaultPrefetch,
		retry:    DefaultRetry,
		drain:    DefaultDrainTimeout,
		maxBody:  DefaultMaxBodySize,
		maxDepth: DefaultMaxDepth,

		maxInflight: DefaultMaxInflightBytes,
		maxInflate:  DefaultMaxInflateBytes,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.Default()
	}
	o.maxInflight = max(o.maxInflight, o.maxBody)
	o.maxInflate = max(o.maxInflate, o.maxBody)
	return o
}

// WithLogger sets the logger (all). Default: slog.Default(). Nothing is logged
// per message above debug level.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithName sets the connection_name client property shown by the broker's
// management UI and `rabbitmqctl list_connections` ([Dial]).
func WithName(name string) Option { return func(o *options) { o.name = name } }

// WithPrefetch sets how many deliveries of one route are handled at once
// (RPC, Queue). Default [DefaultPrefetch]; values below 1 mean 1.
func WithPrefetch(n int) Option {
	return func(o *options) { o.prefetch = max(n, 1) }
}

// WithDevelopment makes error replies carry the Go error type and a stack
// trace (RPC). Off by default: production replies carry only type and message.
func WithDevelopment(on bool) Option { return func(o *options) { o.development = on } }

// WithRetry sets the retry policy of a queue worker (Queue). Zero fields keep
// their defaults from [DefaultRetry].
func WithRetry(r Retry) Option {
	return func(o *options) {
		if r.Attempts > 0 {
			o.retry.Attempts = r.Attempts
		}
		if r.Backoff > 0 {
			o.retry.Backoff = r.Backoff
		}
		if r.MaxBackoff > 0 {
			o.retry.MaxBackoff = r.MaxBackoff
		}
	}
}

// WithDrainTimeout bounds how long Shutdown waits for running handlers when
// its context has no deadline (RPC, Queue). Default [DefaultDrainTimeout].
func WithDrainTimeout(d time.Duration) Option { return func(o *options) { o.drain = d } }

// WithMaxBodySize caps the size of a message body. On [Dial] it bounds
// what is read off the wire: a larger body is never read into memory (see
// [HeaderBodyRefused]). On RPC, Queue and Client (replies) it bounds a body
// after gzip decompression; they default to their Conn's limit. Default
// [DefaultMaxBodySize].
func WithMaxBodySize(n int64) Option {
	return func(o *options) { o.maxBody, o.maxBodySet = n, true }
}

// WithMaxInflightBytes sets how many bytes of message bodies the workers of
// a Conn may hold at once: received and not yet settled ([Dial]). Default
// [DefaultMaxInflightBytes]. A delivery whose body does not fit waits on
// the socket, before it is read, until enough others are settled: the
// broker then holds back what it would send, on every route of the
// connection. RabbitMQ's prefetch bounds deliveries by count only, so this
// is what bounds the memory they take. Values below the body limit
// ([WithMaxBodySize]) mean the body limit.
func WithMaxInflightBytes(n int64) Option { return func(o *options) { o.maxInflight = n } }

// WithMaxInflateBytes sets how many bytes the gzip bodies being
// decompressed at once may inflate to ([Dial]). Default
// [DefaultMaxInflateBytes]. A gzip body reserves the size its trailer
// states (refused at once when over the body limit) before it is
// inflated, and may not inflate past it.
func WithMaxInflateBytes(n int64) Option { return func(o *options) { o.maxInflate = n } }

// WithQueueType sets the type of the routes' queues (RPC, Queue): [Quorum]
// or [Classic]. Default: Classic for RPC routes, Quorum for queue routes
// and their dead-letter queues.
func WithQueueType(t QueueType) Option { return func(o *options) { o.queueType = t } }

// WithDeliveryLimit sets how often a quorum queue route delivers a message
// before the broker dead-letters it (Queue). Default [DefaultDeliveryLimit].
func WithDeliveryLimit(n int) Option { return func(o *options) { o.delivery = n } }

// WithDeadLetterLimit bounds each dead-letter queue to messages and bytes
// (Queue). Zero keeps a default ([DefaultDeadLetterMax],
// [DefaultDeadLetterMaxBytes]). A full dead-letter queue refuses new dead
// letters; their messages stay in the route's queue and are retried.
func WithDeadLetterLimit(messages int, bytes int64) Option {
	return func(o *options) { o.dlqMax, o.dlqMaxBytes = messages, bytes }
}

// WithReplyTo sets which reply_to values an RPC worker answers to (RPC).
// Default [ReplyQueue]: RabbitMQ's direct reply-to and server-named queues,
// never a route's queue, so a reply cannot be run as someone's request or
// job. A request whose reply_to is refused is not run; it is logged and
// acked.
func WithReplyTo(allow func(replyTo string) bool) Option {
	return func(o *options) { o.replyTo = allow }
}
