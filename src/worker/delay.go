package worker

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Broker-delayed retries (Retry.InBroker): a failed message is not held by
// the worker while it waits. It is copied, publisher-confirmed, to one of
// the route's retry queues, "<route>.retry.<ms>", one per distinct wait of
// the policy, and acked, which frees its prefetch slot at once. A retry
// queue holds every message for its wait (x-message-ttl), then the broker
// dead-letters it back to the route through the default exchange. One
// queue per wait, because a queue expires only the message at its head: a
// 3.2 s wait in the same queue would hold back a 0.2 s one behind it.
//
// The copy carries the handler runs so far in HeaderAttempts and the last
// failure in HeaderError, HeaderErrorType and HeaderErrorID; the run after
// the last wait that fails, or a BadRequest at any run, is dead-lettered to
// "<route>.dlq" as without InBroker.

// RetryQueue is the name of route's retry queue for waits of delay:
// "<route>.retry.<milliseconds>", e.g. "emails.retry.200".
func RetryQueue(route string, delay time.Duration) string {
	return route + ".retry." + strconv.FormatInt(delay.Milliseconds(), 10)
}

// RetryDelays returns the waits of r, in order: the wait after run k is
// Backoff doubled k-1 times, at most MaxBackoff, for runs 1 to Attempts-1.
// Zero fields take their defaults from [DefaultRetry].
func RetryDelays(r Retry) []time.Duration {
	r = DefaultRetry.with(r)
	var out []time.Duration
	wait := r.Backoff
	for range r.Attempts - 1 {
		out = append(out, wait)
		wait = min(wait*2, r.MaxBackoff)
	}
	return out
}

// with returns r with the non-zero fields of o.
func (r Retry) with(o Retry) Retry {
	setPositive(&r.Attempts, o.Attempts)
	setPositive(&r.Backoff, o.Backoff)
	setPositive(&r.MaxBackoff, o.MaxBackoff)
	r.InBroker = r.InBroker || o.InBroker
	return r
}

// brokerDelay returns the wait before the next run of a message whose run
// attempt failed with o, when the broker is to hold it.
func (s *server) brokerDelay(attempt int, o *outcome) (time.Duration, bool) {
	r := s.opts.retry
	if !r.InBroker || s.kind != kindQueue || attempt < 1 || attempt >= r.Attempts || o.Type == TypeBadRequest {
		return 0, false
	}
	return RetryDelays(r)[attempt-1], true
}

// priorAttempts reads the handler runs a message made before (the header
// its retry copies carry), when the broker holds retries.
func (s *server) priorAttempts(d *amqp.Delivery) int {
	if !s.opts.retry.InBroker {
		return 0
	}
	switch n := d.Headers[HeaderAttempts].(type) {
	case int32:
		return max(int(n), 0)
	case int64:
		return int(max(n, 0))
	case int16:
		return max(int(n), 0)
	}
	return 0
}

// retryQueueArgs are the arguments of a retry queue of route waiting
// delay: of the route's type, each message expiring after delay back into
// the route; a quorum one confirms the move (at-least-once), which needs
// it to refuse publishes rather than drop messages when full.
func (q queueSettings) retryQueueArgs(route string, delay time.Duration) amqp.Table {
	args := amqp.Table{
		"x-message-ttl":             delay.Milliseconds(),
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": route,
	}
	if q.typ == Quorum {
		args["x-queue-type"] = string(Quorum)
		args["x-dead-letter-strategy"] = "at-least-once"
		args["x-overflow"] = "reject-publish"
	}
	return args
}

// declareRetries declares the route's retry queues on ch, when the broker
// holds its retries.
func (c *consumer) declareRetries(ch *amqp.Channel) error {
	s := c.s
	if !s.opts.retry.InBroker || s.kind != kindQueue {
		return nil
	}
	delays := RetryDelays(s.opts.retry)
	slices.Sort(delays)
	for _, d := range slices.Compact(delays) {
		name, args := RetryQueue(c.route, d), c.queues.retryQueueArgs(c.route, d)
		if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
			open := func() (*amqp.Channel, error) { return s.conn.channel(context.Background()) }
			return declareError(open, name, true, args, c.queues.typ, err)
		}
	}
	return nil
}

// redeclareRetries declares the retry queues again on a channel of its
// own, after a copy found one missing.
func (c *consumer) redeclareRetries(ctx context.Context) error {
	ch, err := c.s.conn.publish.channel(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()
	if err := c.declareRetries(ch); err != nil {
		return fmt.Errorf("declare the retry queues of route %q again: %w", c.route, err)
	}
	return nil
}
