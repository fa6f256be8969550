package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// directReplyTo is RabbitMQ's pseudo-queue for replies without a reply queue.
const directReplyTo = "amq.rabbitmq.reply-to"

// Client calls RPC routes and publishes to queue routes. It is safe for
// concurrent use; concurrent Calls and Publishes share its two channels and
// are pipelined. When the connection drops it opens new channels on the
// recovered connection.
type Client struct {
	*sessions
	encoding Encoding
}

// sessions is what every copy of a Client shares (see WithEncoding).
type sessions struct {
	conn *Conn
	opts options
	lim  limits
	pub  *publisher

	calls *slot[callSession, *callSession]

	events eventPublisher

	prefix string
	seq    atomic.Uint64 // correlation ids: unique across the copies
}

type callSession struct {
	chanState
	// replies is read by the callers waiting for a reply (see Call). A
	// reply that arrives after its caller gave up waits in amqp091-go's
	// delivery buffer until the next Call reads and drops it.
	replies <-chan amqp.Delivery
	mu      sync.Mutex
	pending map[string]chan callResult
}

type callResult struct {
	body     []byte
	returned *amqp.Return
}

// NewClient returns a client on conn.
func NewClient(conn *Conn, opts ...ClientOption) *Client {
	o := clientOptions(opts)
	if !o.maxBodySet {
		o.maxBody = conn.maxBody
	}
	return &Client{
		sessions: &sessions{
			conn:   conn,
			opts:   o,
			lim:    limits{maxBody: o.maxBody, maxDepth: o.maxDepth},
			pub:    newPublisher(conn, o.logger),
			calls:  newSlot[callSession](conn.publish, openCallSession),
			prefix: randomHex(6) + ".",
		},
		encoding: o.encoding,
	}
}

// Call sends req as {"data": req} to route and decodes the reply data into
// resp (a pointer; nil discards it). It returns:
//   - a *RemoteError when the handler failed (errors.As);
//   - an error matching ErrNoRoute at once when no queue exists for route;
//   - an error matching context.DeadlineExceeded (or Canceled) when ctx
//     ends first; the deadline travels with the request, so a worker does
//     not start it once the caller has given up;
//   - an error matching ErrConnectionLost when the connection dropped
//     while waiting;
//   - an error matching ErrClosed when the Client (or its Conn) was closed.
//
// req may be a json.RawMessage to send pre-encoded data.
func (c *Client) Call(ctx context.Context, route string, req, resp any) (err error) {
	body, err := encodeRequest(req)
	if err != nil {
		return fmt.Errorf("call %q: %w", route, err)
	}
	body, ct := c.encoding.encode(body)
	msg := amqp.Publishing{ContentType: ct, ReplyTo: directReplyTo, Body: body}
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left < time.Millisecond {
			return fmt.Errorf("call %q: deadline passed before sending: %w", route, context.DeadlineExceeded)
		}
		msg.Expiration = strconv.FormatInt(left.Milliseconds(), 10)
		msg.Headers = amqp.Table{HeaderDeadline: dl.UnixMilli()}
	}
	id := c.prefix + itoa(c.seq.Add(1))
	msg.CorrelationId = id
	msg.MessageId = id
	ctx, end := c.sending(ctx, "call", route, &msg)
	defer func() { end(err) }()
	done := make(chan callResult, 1)
	var s *callSession
	for {
		s, err = c.calls.get(ctx)
		if err != nil {
			return fmt.Errorf("call %q: %w", route, err)
		}
		s.mu.Lock()
		s.pending[id] = done
		s.mu.Unlock()
		err = s.ch.PublishWithContext(ctx, "", route, true, false, msg)
		if err == nil {
			break
		}
		s.forget(id)
		if ctx.Err() != nil {
			return fmt.Errorf("call %q: send request: %w", route, err)
		}
		// The write failed, so the channel or its connection is going away
		// (the library may not have noticed yet) and the request never
		// left: send it on a new channel once this one is gone.
		select {
		case <-s.dead:
		case <-ctx.Done():
			return fmt.Errorf("call %q: send request: %w", route, ctx.Err())
		}
	}
	defer s.forget(id)
	// The caller reads the reply channel itself instead of waiting for a
	// listener goroutine to pass its reply on: alone, it gets its reply
	// with one goroutine hand-off less; with others waiting, whoever
	// receives a reply hands it to its caller through pending.
	replies := s.replies
	for {
		select {
		case r := <-done:
			return c.result(route, r, resp)
		case d, ok := <-replies:
			if !ok {
				replies = nil // the channel is gone; dead follows
				continue
			}
			if d.CorrelationId == id {
				return c.result(route, callResult{body: d.Body}, resp)
			}
			s.deliver(d.CorrelationId, callResult{body: d.Body})
		case <-s.dead:
			if _, err := c.calls.live(); err != nil || c.conn.isClosed() { // closed by the caller
				return fmt.Errorf("call %q: no reply: %w", route, ErrClosed)
			}
			return fmt.Errorf("call %q: %w", route, ErrConnectionLost)
		case <-ctx.Done():
			return fmt.Errorf("call %q: no reply: %w", route, ctx.Err())
		}
	}
}

// sending runs the Client's send hooks (WithTracing, Metrics.Client) as
// msg is about to go to route, and returns the ctx to send it with and the
// function to call with the send's outcome, which ends the hooks last
// first. Without hooks it costs nothing.
func (c *Client) sending(ctx context.Context, op, route string, msg *amqp.Publishing) (context.Context, func(error)) {
	hooks := c.opts.sends
	if len(hooks) == 0 {
		return ctx, noEnd
	}
	ends := make([]func(error), len(hooks))
	for i, hook := range hooks {
		ctx, ends[i] = hook(ctx, op, route, msg)
	}
	return ctx, func(err error) {
		for i := len(ends) - 1; i >= 0; i-- {
			ends[i](err)
		}
	}
}

func noEnd(error) {}

// result turns the outcome of a call into Call's return value.
func (c *Client) result(route string, r callResult, resp any) error {
	if r.returned != nil {
		return fmt.Errorf("call %q: %w: no queue named %q (is its worker running?)", route, ErrNoRoute, route)
	}
	data, err := decodeReply(route, r.body, c.lim)
	if err != nil {
		return err
	}
	if raw, ok := resp.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], data...)
	} else if resp != nil {
		if err := json.Unmarshal(data, resp); err != nil {
			return fmt.Errorf("call %q: reply data does not decode into %T: %w", route, resp, err)
		}
	}
	return nil
}

// Publish sends msg as a persistent {"data": msg} to the queue route and
// returns once the broker has confirmed it (written it to the durable
// queue). When no such queue exists it fails with an error matching
// ErrNoRoute. When the connection drops before the confirm, Publish sends
// the message again once reconnected, so a consumer may see it twice
// (each message carries a unique message_id to tell). msg may be a
// json.RawMessage.
func (c *Client) Publish(ctx context.Context, queue string, data any) (err error) {
	body, err := encodeRequest(data)
	if err != nil {
		return fmt.Errorf("publish to queue %q: %w", queue, err)
	}
	body, ct := c.encoding.encode(body)
	msg := amqp.Publishing{
		ContentType:  ct,
		DeliveryMode: amqp.Persistent,
		Body:         body, // the publisher gives it a unique message id
	}
	ctx, end := c.sending(ctx, "publish", queue, &msg)
	defer func() { end(err) }()
	return c.pub.publish(ctx, queue, msg)
}

// WithEncoding returns a client that sends in encoding e, for the calls
// where it matters: it shares c's channels (closing either closes both).
func (c *Client) WithEncoding(e Encoding) *Client {
	return &Client{sessions: c.sessions, encoding: e}
}

// Close closes the client's channels. Calls and Publishes in progress, and
// any made later, fail with an error matching [ErrClosed] (a Publish cut
// off this way may still have reached its queue).
func (c *Client) Close() error {
	c.calls.close()
	c.pub.close()
	return nil
}

// openCallSession consumes direct reply-to on ch and listens to its
// returns.
func openCallSession(ch *amqp.Channel) (*callSession, error) {
	replies, err := ch.Consume(directReplyTo, "", true, false, false, false, nil)
	if err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("consume direct reply-to: %w", err)
	}
	s := &callSession{
		chanState: chanState{ch: ch, dead: make(chan struct{})},
		replies:   replies,
		pending:   map[string]chan callResult{},
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 16))
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	go s.listen(returns, closes)
	return s, nil
}

// listen passes returned (unroutable) requests to their callers and closes
// dead once the channel is gone.
func (s *callSession) listen(returns chan amqp.Return, closes chan *amqp.Error) {
	defer close(s.dead)
	for returns != nil || closes != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			s.deliver(r.CorrelationId, callResult{returned: &r})
		case _, ok := <-closes:
			if !ok {
				closes = nil
			}
		}
	}
}

func (s *callSession) deliver(id string, r callResult) {
	s.mu.Lock()
	done := s.pending[id]
	delete(s.pending, id)
	s.mu.Unlock()
	if done != nil {
		done <- r // buffered 1; each id is delivered at most once
	}
}

func (s *callSession) forget(id string) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}
