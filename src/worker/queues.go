package worker

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

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
	routeTypes         map[string]QueueType // WithRouteQueueType
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
	q.routeTypes = o.routeTypes
	setPositive(&q.deliveryLimit, o.delivery)
	setPositive(&q.deadLetterMax, o.dlqMax)
	setPositive(&q.deadLetterMaxBytes, o.dlqMaxBytes)
	return q
}

// forRoute returns the settings of route's queues: the worker's, with the
// type WithRouteQueueType gave the route.
func (q queueSettings) forRoute(route string) queueSettings {
	if t, ok := q.routeTypes[route]; ok {
		q.typ = t
	}
	return q
}

// ReplyQueue reports whether replyTo names a queue that replies may go to:
// RabbitMQ's direct reply-to (amq.rabbitmq.reply-to...), a server-named
// queue (amq.gen-..., what pika and most RPC clients declare), or an
// aio-pika RPC caller's result queue (amq_..., as lib-python-amqp-worker's
// callers name theirs). Route names may not start with "amq." or "amq_",
// so a reply never lands in a route's queue.
func ReplyQueue(replyTo string) bool {
	return strings.HasPrefix(replyTo, "amq.rabbitmq.reply-to") || strings.HasPrefix(replyTo, "amq.gen-") || strings.HasPrefix(replyTo, "amq_")
}

// routeQueue returns how route's queue is declared: durable or not, and its
// arguments.
func (q queueSettings) routeQueue(k kind, route string) (durable bool, args amqp.Table) {
	if k == kindRPC {
		if q.typ == Quorum {
			return true, amqp.Table{"x-queue-type": string(Quorum)}
		}
		// As aio-pika's RPC (the Python fleet's) declares them, so replicas
		// of both can share a route; a request that expires in the queue
		// goes to rpc.dlx, through which an aio-pika caller learns it timed
		// out.
		return false, amqp.Table{"x-dead-letter-exchange": "rpc.dlx"}
	}
	if q.typ == Classic {
		// As the seed (and lib-python-amqp-worker) declares them: durable,
		// no arguments, so a Python replica can share the route.
		return true, nil
	}
	return true, amqp.Table{
		"x-queue-type":     string(Quorum),
		"x-delivery-limit": int32(q.deliveryLimit),
		// What the broker dead-letters (past the delivery limit, or
		// rejected by the worker because its body was too large to read)
		// goes to the route's dead-letter queue, confirmed between the
		// queues so that it is never lost on the way; that needs the
		// source to refuse publishes rather than drop messages when full.
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": route + DeadLetterSuffix,
		"x-dead-letter-strategy":    "at-least-once",
		"x-overflow":                "reject-publish",
	}
}

// deadLetterArgs returns the arguments of a dead-letter queue: bounded for
// quorum routes; none for classic ones, as earlier versions declared them
// (bound those with a policy: README, "Moving a route to quorum queues").
func (q queueSettings) deadLetterArgs() amqp.Table {
	if q.typ == Classic {
		return nil
	}
	return amqp.Table{
		"x-queue-type":       string(Quorum),
		"x-max-length":       int32(q.deadLetterMax),
		"x-max-length-bytes": q.deadLetterMaxBytes,
		"x-overflow":         "reject-publish",
	}
}

// brokerDeadLetters reports whether the broker can dead-letter the route's
// messages itself (its queue has a dead-letter exchange).
func (q queueSettings) brokerDeadLetters(k kind) bool { return k == kindQueue && q.typ == Quorum }

// inequivalent matches the broker's reason for refusing a redeclaration,
// e.g. "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q'
// in vhost '/': received the value 'quorum' of type 'longstr' but current
// is none", or "... arg 'durable' ...: received 'true' but current is
// 'false'".
var inequivalent = regexp.MustCompile(`inequivalent arg '([^']+)' for queue '.*' in vhost '.*': received (.*) but current is (.*)$`)

// valueOf reads one side of an inequivalence: none, 'v', or the value 'v'
// of type 't'.
var valueOf = regexp.MustCompile(`^(?:none|'([^']*)'|the value '([^']*)' of type '([^']*)')$`)

// argDiff is one argument in which an existing queue differs from ours.
type argDiff struct {
	arg            string
	want, current  string // "none" when unset
	currentType    string // the broker's name of the current value's type
	currentPresent bool
}

// parseInequivalent reads the broker's reason; ok is false when it is not
// an inequivalence.
func parseInequivalent(reason string) (d argDiff, ok bool) {
	m := inequivalent.FindStringSubmatch(reason)
	if m == nil {
		return d, false
	}
	d.arg = m[1]
	side := func(s string) (v, typ string, present bool) {
		sm := valueOf.FindStringSubmatch(s)
		switch {
		case sm == nil:
			return s, "", true
		case sm[0] == "none":
			return "none", "", false
		case sm[2] != "" || sm[3] != "":
			return sm[2], sm[3], true
		default:
			return sm[1], "", true
		}
	}
	d.want, _, _ = side(m[2])
	d.current, d.currentType, d.currentPresent = side(m[3])
	return d, true
}

// mismatch finds how the existing queue differs from a declaration with
// durable and args. The broker names one differing argument per refusal,
// so it declares again on a fresh channel (open) with that argument set to
// the queue's current value, until the declaration matches or a value
// cannot be mirrored. Declaring a queue with its own settings changes
// nothing.
func mismatch(open func() (*amqp.Channel, error), queue string, durable bool, args amqp.Table, first argDiff) []argDiff {
	probe := amqp.Table{}
	for k, v := range args {
		probe[k] = v
	}
	diffs := []argDiff{first}
	d := first
	for range 12 {
		switch {
		case d.arg == "durable":
			durable = d.current == "true"
		case !d.currentPresent:
			delete(probe, d.arg)
		case d.currentType == "longstr":
			probe[d.arg] = d.current
		case d.currentType == "signedint" || d.currentType == "long":
			var n int64
			if _, err := fmt.Sscan(d.current, &n); err != nil {
				return diffs
			}
			probe[d.arg] = n
		default:
			return diffs // a value we cannot write back as it is
		}
		ch, err := open()
		if err != nil {
			return diffs
		}
		_, err = ch.QueueDeclare(queue, durable, false, false, false, probe)
		_ = ch.Close()
		var ae *amqp.Error
		if err == nil || !errors.As(err, &ae) {
			return diffs
		}
		next, ok := parseInequivalent(ae.Reason)
		if !ok {
			return diffs
		}
		d = next
		diffs = append(diffs, d)
	}
	return diffs
}

// declareError explains a refused queue declaration. The common case is a
// queue left by an earlier version or another service with other settings
// (classic where this version wants quorum, say): starting again cannot
// help, so the error says which queue, what differs and how to migrate.
// open gives fresh channels to find every difference (see mismatch).
func declareError(open func() (*amqp.Channel, error), queue string, durable bool, args amqp.Table, want QueueType, err error) error {
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		return fmt.Errorf("declare queue %q: %w", queue, err)
	}
	first, ok := parseInequivalent(ae.Reason)
	if !ok {
		return fmt.Errorf("declare queue %q: it exists with other settings (%s); delete it or rename the route: %w", queue, ae.Reason, err)
	}
	diffs := mismatch(open, queue, durable, args, first)
	var typeDiff *argDiff
	var others []string
	for i, d := range diffs {
		if d.arg == "x-queue-type" {
			typeDiff = &diffs[i]
			continue
		}
		others = append(others, fmt.Sprintf("%s %s (this service: %s)", d.arg, quoted(d.current), quoted(d.want)))
	}
	differs := strings.Join(others, ", ")
	if typeDiff != nil {
		current := typeDiff.current
		if current == "none" {
			current = string(Classic)
		}
		if differs != "" {
			differs = "; it also differs in " + differs
		}
		return fmt.Errorf("declare queue %q: it exists as a %s queue and this service declares it as a %s queue%s. "+
			"See README, \"Moving a route to quorum queues\": stop the service, drain the queue, delete it and start again; "+
			"or keep its type with BROKER_QUEUE_TYPE=%s (queue routes) or BROKER_RPC_QUEUE_TYPE=%s (RPC routes): %w",
			queue, current, want, differs, current, current, err)
	}
	return fmt.Errorf("declare queue %q: it exists with other settings: %s. "+
		"See README, \"Moving a route to quorum queues\": stop the service, drain the queue, delete it and start again: %w",
		queue, differs, err)
}

// quoted quotes a value from a broker's reason, "none" aside.
func quoted(v string) string {
	if v == "none" {
		return v
	}
	return strconv.Quote(v)
}

// setPositive sets *field to v when v is above zero: an option or a Retry
// field left at zero keeps the default.
func setPositive[T int | int64 | time.Duration](field *T, v T) {
	if v > 0 {
		*field = v
	}
}
