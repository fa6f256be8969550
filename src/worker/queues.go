package worker

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// QueueType is the kind of queue a route is declared as.
type QueueType string

const (
	// Classic queues live on one broker node: the lowest latency, lost
	// while that node is down. RPC routes use them by default, as the
	// seed did (non-durable).
	Classic QueueType = "classic"
	// Quorum queues are replicated by the broker across a cluster's nodes
	// (Raft) and survive the loss of a minority of them; they count
	// deliveries, so a message that keeps failing to be processed is
	// dead-lettered by the broker after the delivery limit. Queue routes
	// and dead-letter queues use them by default.
	Quorum QueueType = "quorum"
)

// Defaults of the queues a worker declares.
const (
	// DefaultDeliveryLimit is how often a quorum queue delivers a message
	// before the broker dead-letters it (the default of RabbitMQ 4).
	// Retries inside the worker do not count; redeliveries after a crash,
	// a lost connection or a requeue do.
	DefaultDeliveryLimit = 20
	// DefaultDeadLetterMax and DefaultDeadLetterMaxBytes bound a
	// dead-letter queue. Past either bound it refuses new dead letters
	// (x-overflow reject-publish): the failing message then stays in its
	// route's queue, retried slowly, and nothing is lost.
	DefaultDeadLetterMax      = 100_000
	DefaultDeadLetterMaxBytes = 1 << 30
)

// queueSettings say how a worker declares its queues.
type queueSettings struct {
	typ                QueueType
	deliveryLimit      int
	deadLetterMax      int
	deadLetterMaxBytes int64
}

func newQueueSettings(k kind, o options) queueSettings {
	q := queueSettings{typ: Quorum, deliveryLimit: DefaultDeliveryLimit, deadLetterMax: DefaultDeadLetterMax, deadLetterMaxBytes: DefaultDeadLetterMaxBytes}
	if k == kindRPC {
		q.typ = Classic
	}
	if o.queueType != "" {
		q.typ = o.queueType
	}
	if o.delivery > 0 {
		q.deliveryLimit = o.delivery
	}
	if o.dlqMax > 0 {
		q.deadLetterMax = o.dlqMax
	}
	if o.dlqMaxBytes > 0 {
		q.deadLetterMaxBytes = o.dlqMaxBytes
	}
	return q
}

// ParseQueueType reads a queue type as written in configuration
// ("quorum", "classic").
func ParseQueueType(s string) (QueueType, error) {
	switch QueueType(s) {
	case Quorum, Classic:
		return QueueType(s), nil
	}
	return "", fmt.Errorf("queue type %q: want quorum or classic", s)
}

// ReplyQueue reports whether replyTo names a queue that replies may go to:
// RabbitMQ's direct reply-to (amq.rabbitmq.reply-to...) or a server-named
// queue (amq.gen-...), which is what RPC clients declare for their replies.
// Route names cannot start with "amq.", so a reply never lands in a
// route's queue.
func ReplyQueue(replyTo string) bool {
	return strings.HasPrefix(replyTo, "amq.rabbitmq.reply-to") || strings.HasPrefix(replyTo, "amq.gen-")
}

// routeQueue returns how route's queue is declared: durable or not, and its
// arguments.
func (q queueSettings) routeQueue(k kind, route string) (durable bool, args amqp.Table) {
	if k == kindRPC {
		if q.typ == Quorum {
			return true, amqp.Table{"x-queue-type": string(Quorum)}
		}
		return false, nil // as the seed declares them
	}
	// A queue route's messages that the broker dead-letters (past the
	// delivery limit, or rejected by the worker because their body was too
	// large to read) go to its dead-letter queue.
	args = amqp.Table{
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": route + DeadLetterSuffix,
	}
	if q.typ == Quorum {
		args["x-queue-type"] = string(Quorum)
		args["x-delivery-limit"] = int32(q.deliveryLimit)
		// Dead-lettering by the broker is confirmed between the queues,
		// so a dead letter is never lost on the way; it needs the source
		// to refuse publishes rather than drop messages when full.
		args["x-dead-letter-strategy"] = "at-least-once"
		args["x-overflow"] = "reject-publish"
	}
	return true, args
}

// deadLetterArgs returns the arguments of a dead-letter queue.
func (q queueSettings) deadLetterArgs() amqp.Table {
	args := amqp.Table{
		"x-max-length":       int32(q.deadLetterMax),
		"x-max-length-bytes": q.deadLetterMaxBytes,
		"x-overflow":         "reject-publish",
	}
	if q.typ == Quorum {
		args["x-queue-type"] = string(Quorum)
	}
	return args
}

// inequivalent matches the broker's reason for refusing a redeclaration:
// "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in
// vhost '/': received the value 'quorum' of type 'longstr' but current is
// none".
var inequivalent = regexp.MustCompile(`inequivalent arg '([^']+)' for queue '[^']*' in vhost '[^']*': received (?:the value '([^']*)'|none)[^,]*(?:,)? but current is (?:the value '([^']*)'|none)`)

// declareError explains a refused queue declaration. The common case is a
// queue left by an earlier version or another service with other settings
// (classic where this version wants quorum, say): starting again cannot
// help, so the error says which queue, what differs and how to migrate.
func declareError(queue string, want QueueType, err error) error {
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		return fmt.Errorf("declare queue %q: %w", queue, err)
	}
	m := inequivalent.FindStringSubmatch(ae.Reason)
	if m == nil {
		return fmt.Errorf("declare queue %q: it exists with other settings (%s); delete it or rename the route: %w", queue, ae.Reason, err)
	}
	arg, wanted, current := m[1], or(m[2], "none"), or(m[3], "none")
	if arg == "x-queue-type" {
		return fmt.Errorf("declare queue %q: it exists as a %s queue and this service declares it as a %s queue; "+
			"see README, \"Moving a route to quorum queues\": stop the service, drain the queue, delete it and start again, "+
			"or keep the old type with BROKER_QUEUE_TYPE=%s: %w",
			queue, or(m[3], string(Classic)), want, or(m[3], string(Classic)), err)
	}
	return fmt.Errorf("declare queue %q: it exists with %s = %s and this service declares it with %s = %s; "+
		"see README, \"Moving a route to quorum queues\" (delete the queue once it is drained, and start again): %w",
		queue, arg, current, arg, wanted, err)
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
