package worker

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DeadLetters inspects and replays the dead-letter queues ("<route>.dlq")
// of queue routes and event subscriptions: `service dlq` is built on it.
// It uses its Conn's publishing connection and declares nothing.
type DeadLetters struct {
	conn *Conn
}

// NewDeadLetters returns the dead-letter tools on conn.
func NewDeadLetters(conn *Conn) *DeadLetters { return &DeadLetters{conn: conn} }

// DeadLetterCount is how many dead letters a route's dead-letter queue
// holds.
type DeadLetterCount struct {
	Route    string // the route (or subscription queue)
	Queue    string // its dead-letter queue
	Messages int    // ready dead letters
	Missing  bool   // the queue does not exist (the route never started)
}

// DeadLetter is one dead letter as [DeadLetters.Show] reads it from its
// headers.
type DeadLetter struct {
	MessageID string
	Route     string // HeaderRoute: where it failed
	Event     string // HeaderEvent: an event's name
	ErrorType string // HeaderErrorType
	Error     string // HeaderError
	ErrorID   string // HeaderErrorID: the id the service logged the error under
	Attempts  int    // HeaderAttempts
	Timestamp time.Time
	Body      []byte // as published (maybe gzip)
}

// List counts the dead letters of each route. A route whose dead-letter
// queue does not exist is reported Missing, not as an error.
func (t *DeadLetters) List(ctx context.Context, routes ...string) ([]DeadLetterCount, error) {
	out := make([]DeadLetterCount, 0, len(routes))
	for _, r := range routes {
		c := DeadLetterCount{Route: r, Queue: r + DeadLetterSuffix}
		n, err := t.count(ctx, c.Queue)
		switch {
		case errors.Is(err, errNoQueue):
			c.Missing = true
		case err != nil:
			return out, err
		}
		c.Messages = n
		out = append(out, c)
	}
	return out, nil
}

var errNoQueue = errors.New("no such queue")

// count reads a queue's ready messages with a passive declaration, on a
// channel of its own (a missing queue closes it).
func (t *DeadLetters) count(ctx context.Context, queue string) (int, error) {
	ch, err := t.conn.publish.channel(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = ch.Close() }()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.NotFound {
		return 0, fmt.Errorf("queue %q does not exist: has the route run on this broker and vhost (BROKER_VHOST), and is its name right? %w", queue, errNoQueue)
	}
	if err != nil {
		return 0, fmt.Errorf("count the messages of queue %q: %w", queue, err)
	}
	return q.Messages, nil
}

// Show returns the first n dead letters of route (n < 1 means 10) and how
// many there are. It takes them from the queue without acking and gives
// them back when it returns, in their order; nothing is removed. (On
// RabbitMQ 4 each look counts as a delivery toward a quorum queue's
// delivery limit.)
func (t *DeadLetters) Show(ctx context.Context, route string, n int) ([]DeadLetter, int, error) {
	if n < 1 {
		n = 10
	}
	queue := route + DeadLetterSuffix
	total, err := t.count(ctx, queue)
	if err != nil {
		return nil, 0, fmt.Errorf("show the dead letters of route %q: %w", route, err)
	}
	ch, err := t.conn.publish.channel(ctx)
	if err != nil {
		return nil, total, err
	}
	defer func() { _ = ch.Close() }() // gives back what was taken
	var out []DeadLetter
	var last uint64
	defer func() { t.giveBack(ctx, ch, last, queue, total) }()
	for len(out) < min(n, total) {
		d, ok, err := ch.Get(queue, false)
		if err != nil {
			return out, total, fmt.Errorf("read the dead letters of route %q from queue %q: %w", route, queue, err)
		}
		if !ok {
			break
		}
		last = d.DeliveryTag
		out = append(out, readDeadLetter(&d))
	}
	return out, total, nil
}

// giveBack returns the unacked messages of ch up to tag to queue and waits
// (up to 5 s) until it holds want ready messages again: a quorum queue
// takes them back asynchronously, and a count read at once would miss
// them.
func (t *DeadLetters) giveBack(ctx context.Context, ch *amqp.Channel, tag uint64, queue string, want int) {
	if tag == 0 {
		return
	}
	if err := ch.Nack(tag, true, true); err != nil {
		return // the channel is gone, and with it the messages went back
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if n, err := t.count(ctx, queue); err != nil || n >= want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readDeadLetter(d *amqp.Delivery) DeadLetter {
	str := func(k string) string { s, _ := d.Headers[k].(string); return s }
	dl := DeadLetter{
		MessageID: d.MessageId, Route: str(HeaderRoute), Event: str(HeaderEvent),
		ErrorType: str(HeaderErrorType), Error: str(HeaderError), ErrorID: str(HeaderErrorID),
		Timestamp: d.Timestamp, Body: d.Body,
	}
	switch n := d.Headers[HeaderAttempts].(type) {
	case int32:
		dl.Attempts = int(n)
	case int64:
		dl.Attempts = int(n)
	}
	return dl
}

// replayDropped are the headers a replayed message loses: the failure's
// and the broker's dead-lettering records, so it starts over.
var replayDropped = []string{
	HeaderError, HeaderErrorType, HeaderErrorID, HeaderAttempts, HeaderRoute, HeaderHeadersDropped,
	publishKeyHeader, "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
	"x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count",
}

// Replay moves up to limit dead letters of route back to the queue they
// failed on (HeaderRoute, else route), oldest first, and returns how many
// it moved. With limit < 1 it moves letters until the dead-letter queue is
// empty or it meets one it moved earlier in this run (the message failed
// again: it stays a dead letter, so no run replays a letter twice). Letters
// are known by message id, or by body and properties when they have none.
// Counting at the start would not do: a letter a just-closed connection
// still held (a Replay or Show killed mid-way) is not counted until the
// broker puts it back, a moment later.
// Each is published with a publisher confirm, mandatory, and its dead
// letter is acked only once the republish is confirmed: interrupted at any
// point, a message is in the dead-letter queue, in the route's queue, or
// (between the confirm and the ack) in both, never in neither. The replayed
// message keeps its body, properties and message id, and loses the
// failure's headers. When a route's queue does not exist, Replay stops
// with an error and leaves that dead letter where it was.
func (t *DeadLetters) Replay(ctx context.Context, route string, limit int) (int, error) {
	queue := route + DeadLetterSuffix
	total, err := t.count(ctx, queue)
	if err != nil {
		return 0, fmt.Errorf("replay the dead letters of route %q: %w", route, err)
	}
	all := limit < 1
	if limit > total {
		limit = total
	}
	ch, err := t.conn.publish.channel(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = ch.Close() }()
	if err := ch.Confirm(false); err != nil {
		return 0, fmt.Errorf("replay route %q: put channel in confirm mode: %w", route, err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	moved := 0
	var taken uint64 // the dead letter not yet acked, given back on an error
	defer func() { t.giveBack(ctx, ch, taken, queue, max(total-moved, 1)) }()
	var seen map[letterKey]bool // with all: the letters moved so far
	if all {
		seen = make(map[letterKey]bool, total)
	}
	for all || moved < limit {
		taken = 0
		d, ok, err := ch.Get(queue, false)
		if err != nil {
			return moved, fmt.Errorf("replay route %q: read queue %q: %w", route, queue, err)
		}
		if !ok {
			break // empty, or someone else took the rest
		}
		taken = d.DeliveryTag
		key := keyOf(&d)
		if all && seen[key] {
			break // it failed again since this run moved it: given back by the deferred giveBack
		}
		to, _ := d.Headers[HeaderRoute].(string)
		if to == "" {
			to = route
		}
		headers := amqp.Table{}
		for k, v := range d.Headers {
			if !slices.Contains(replayDropped, k) && !strings.HasPrefix(k, "x-first-death") && !strings.HasPrefix(k, "x-last-death") {
				headers[k] = v
			}
		}
		if len(headers) == 0 {
			headers = nil
		}
		conf, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", to, true, false, amqp.Publishing{
			Headers: headers, ContentType: d.ContentType, ContentEncoding: d.ContentEncoding,
			DeliveryMode: amqp.Persistent, CorrelationId: d.CorrelationId, MessageId: d.MessageId,
			Timestamp: d.Timestamp, Type: d.Type, AppId: d.AppId, Body: d.Body,
		})
		if err != nil {
			return moved, fmt.Errorf("replay route %q: republish message %q to queue %q: %w", route, d.MessageId, to, err)
		}
		acked, err := conf.WaitContext(ctx)
		if err != nil {
			return moved, fmt.Errorf("replay route %q: message %q: no confirm from the broker: %w; it stays a dead letter (and may also be in %q)", route, d.MessageId, err, to)
		}
		select {
		case r, ok := <-returns: // a return comes before its confirm
			if !ok { // the channel closed: the connection was lost
				return moved, fmt.Errorf("replay route %q: the connection to the broker was lost before message %q was confirmed; it stays a dead letter (and may also be in %q): replay again", route, d.MessageId, to)
			}
			return moved, fmt.Errorf("replay route %q: %w: queue %q does not exist (broker: %s); message %q stays a dead letter; start the service that declares it and replay again",
				route, ErrNoRoute, to, r.ReplyText, d.MessageId)
		default:
		}
		if !acked {
			return moved, fmt.Errorf("replay route %q: the broker refused message %q for queue %q (is it full?); it stays a dead letter", route, d.MessageId, to)
		}
		if err := d.Ack(false); err != nil {
			return moved, fmt.Errorf("replay route %q: message %q is back in %q but its dead letter could not be acked (%w): it will show up again", route, d.MessageId, to, err)
		}
		taken = 0
		moved++
		if all {
			seen[key] = true
		}
	}
	return moved, nil
}

// letterKey tells dead letters apart within one Replay: by message id, or,
// for a message published without one, by a hash of its body and the
// properties that travel with it (two such letters alike in all of these
// count as one, so Replay stops early rather than replaying one twice).
type letterKey struct {
	id   string
	hash [sha256.Size]byte
}

func keyOf(d *amqp.Delivery) letterKey {
	if d.MessageId != "" {
		return letterKey{id: d.MessageId}
	}
	h := sha256.New()
	fmt.Fprintf(h, "%q %q %q %d\n", d.CorrelationId, d.Type, d.AppId, d.Timestamp.UnixNano())
	h.Write(d.Body)
	var k letterKey
	h.Sum(k.hash[:0])
	return k
}
