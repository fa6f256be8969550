package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The path of one delivery, from the consumer's receive to its ack, top to
// bottom in this file:
//
//	serve      counts it running, then
//	admit      refuses what must never run
//	decode     reads the body once into a Request
//	pipeline   the middleware and the route's handler (middleware.go);
//	           refuse, for what admit or decode refused: the Use
//	           middleware alone (tracing and metrics see it too)
//	reply      RPC: the reply envelope to reply_to, then the ack
//	settle     queue: the ack, a requeue, or the dead letter (deadletter.go)
//
// The acker (acker.go) sends the replies and acks of one channel.

// serve handles one delivery on its own goroutine.
func (c *consumer) serve(ack *acker, d *amqp.Delivery) {
	s := c.s
	s.running.Add(1)
	defer s.running.Add(-1)
	if !c.admit(ack, d) {
		return
	}
	req, gz, err := c.decode(d)
	var out []byte
	if err == nil {
		out, err = c.pipeline.Serve(s.base, req)
	} else {
		err = c.refuse(req, err)
	}
	if s.kind == kindRPC {
		c.reply(ack, d, out, gz, err)
	} else {
		c.settle(ack, d, req, err)
	}
}

// admit refuses, before anything is read, a delivery that must not run,
// and settles it: a reply sent here as somebody's reply_to (replies carry
// type result or error); an RPC request whose reply_to is not a reply queue
// (its reply would land in a queue that runs it); a queue message whose
// body was too large to read (the broker moves it, whole, to the
// dead-letter queue).
func (c *consumer) admit(ack *acker, d *amqp.Delivery) bool {
	s := c.s
	if s.kind == kindQueue {
		if why, ok := d.Headers[HeaderBodyRefused].(string); ok {
			err := c.refuse(c.request(d), badRequest("%s", why))
			s.logFailure(c.route, "message rejected to the dead-letter queue", s.describe(err), "message_id", d.MessageId)
			ack.reject(d.DeliveryTag)
			return false
		}
		return true // a reply on a queue route is dead-lettered, see decode
	}
	switch {
	case isReply(d):
		_ = c.refuse(c.request(d), fmt.Errorf("%w: a reply (AMQP type %q) arrived as a request", errRefused, d.Type))
		s.logRefused(c.route, "a reply arrived as a request; not run", "type", d.Type, "correlation_id", d.CorrelationId)
	case d.ReplyTo != "" && !s.opts.replyTo(d.ReplyTo):
		_ = c.refuse(c.request(d), fmt.Errorf("%w: its reply_to is not a reply queue", errRefused))
		s.logRefused(c.route, "request refused: its reply_to is not a reply queue (direct reply-to or a server-named queue); not run",
			"reply_to", truncate(d.ReplyTo, 100), "correlation_id", d.CorrelationId)
	default:
		return true
	}
	ack.ack(d.DeliveryTag)
	return false
}

// errRefused marks an RPC request that is neither run nor answered (see
// admit): its outcome is OutcomeRefused.
var errRefused = errors.New("request refused")

// refuse passes a delivery that does not reach its route's handler through
// the worker's Use middleware (tracing, metrics) with err as the handler's
// result, so that those see it as they see every other delivery, and
// returns the error they return: err, or another one if a middleware
// replaced it. A middleware cannot turn a refusal into a success: when
// they return nil, refuse returns err.
func (c *consumer) refuse(req *Request, err error) error {
	if _, got := c.refusal.Serve(context.WithValue(c.s.base, refusalKey{}, err), req); got != nil {
		return got
	}
	return err
}

// refusal is the handler under the Use middleware in refuse: it returns
// the error refuse was given.
var refusal = HandlerFunc(func(ctx context.Context, _ *Request) ([]byte, error) {
	err, _ := ctx.Value(refusalKey{}).(error)
	return nil, err
})

type refusalKey struct{}

// request is the Request of d but for its data, which decode reads.
func (c *consumer) request(d *amqp.Delivery) *Request {
	return &Request{
		Route: c.route, Deadline: deadlineOf(d), Event: c.eventOf(d),
		Headers: d.Headers, MessageID: d.MessageId, CorrelationID: d.CorrelationId, AppID: d.AppId,
		Timestamp: d.Timestamp, Redelivered: d.Redelivered,
	}
}

// decode reads d once into the Request the pipeline gets. Every error is a
// BadRequest saying what is wrong with the message; the Request is
// returned with it (attempt 0), for the dead letter.
func (c *consumer) decode(d *amqp.Delivery) (req *Request, gz bool, err error) {
	req = c.request(d)
	for _, h := range []string{HeaderBodyRefused, HeaderHeadersRefused} {
		if why, ok := d.Headers[h].(string); ok { // the guard could not hand it on whole
			return req, false, badRequest("%s", why)
		}
	}
	if isReply(d) {
		return req, false, badRequest("a reply (AMQP type %q) arrived on queue route %q, sent here as somebody's reply_to; it is not a job", d.Type, c.route)
	}
	req.Data, gz, err = decodeBody(c.s.base, d.Body, d.ContentEncoding, c.s.lim)
	if err == nil {
		req.Attempt = 1 + c.s.priorAttempts(d)
	}
	return req, gz, err
}

// deadlineOf reads HeaderDeadline.
func deadlineOf(d *amqp.Delivery) time.Time {
	switch v := d.Headers[HeaderDeadline].(type) {
	case int64:
		return time.UnixMilli(v)
	case int32:
		return time.UnixMilli(int64(v))
	}
	return time.Time{}
}

// AMQP types of replies as aio-pika's RPC (the Python seed's) sets them:
// every reply of this package is "result"; "error" is aio-pika's for an
// exception object.
const (
	replyResult = "result"
	replyError  = "error"
)

// isReply reports whether d is a reply: it never runs as a request or job.
func isReply(d *amqp.Delivery) bool { return d.Type == replyResult || d.Type == replyError }

// reply sends an RPC request's reply, in the encoding it came in, and acks
// it. A request without reply_to is acked; one whose caller gave up before
// it ran is acked without a reply.
func (c *consumer) reply(ack *acker, d *amqp.Delivery, out []byte, gz bool, err error) {
	s := c.s
	if errors.Is(err, errExpired) {
		s.opts.logger.Debug("request expired before it ran; dropped", "route", c.route, "correlation_id", d.CorrelationId)
		ack.ack(d.DeliveryTag)
		return
	}
	body := encodeSuccess(out)
	if err != nil {
		body = encodeFailure(wire(c.failed(err, 1), s.opts.development))
	}
	if d.ReplyTo == "" {
		ack.ack(d.DeliveryTag)
		return
	}
	ct := ContentJSON
	if gz {
		body, ct = gzipBytes(body), ContentGzip
	}
	ack.replyAndAck(d.DeliveryTag, d.ReplyTo, amqp.Publishing{
		ContentType:   ct,
		CorrelationId: d.CorrelationId,
		// "result" for failures too, as lib-python-amqp-worker answers:
		// aio-pika callers take "error" as an exception object, and hang
		// (6.8) or raise (8) on the envelope.
		Type:         replyResult,
		DeliveryMode: d.DeliveryMode,
		Body:         body,
	})
}

// settle acks a queue message that was handled, requeues one whose retries
// Shutdown cut short, and dead-letters one that failed.
func (c *consumer) settle(ack *acker, d *amqp.Delivery, req *Request, err error) {
	switch {
	case err == nil:
		ack.ack(d.DeliveryTag)
	case errors.Is(err, errRequeue):
		ack.requeue(d.DeliveryTag)
	default:
		o := c.failed(err, req.Attempt)
		if delay, ok := c.s.brokerDelay(req.Attempt, o); ok {
			c.publishCopy(ack, d, o, req.Attempt, RetryQueue(c.route, delay))
			return
		}
		c.publishDeadLetter(ack, d, o, req.Attempt)
	}
}

// failed describes err; one that did not come through the pipeline (the
// message did not decode) is logged here, as the pipeline logs the others.
func (c *consumer) failed(err error, attempts int) *outcome {
	var logged *outcome
	if errors.As(err, &logged) {
		return logged
	}
	o := c.s.describe(err)
	msg := "request refused"
	if c.s.kind == kindQueue {
		msg = "message refused; dead-lettering it"
	}
	c.s.logFailure(c.route, msg, o, "attempts", attempts)
	return o
}

// wire is the error member of a failure reply for o.
func wire(o *outcome, development bool) wireError {
	msg := truncate(o.Public, maxReplyText)
	we := wireError{Type: o.Type, Message: msg, Args: []any{msg}, ID: o.ID}
	if development {
		if o.Panic != nil {
			we.GoType = fmt.Sprintf("panic(%T)", o.Panic.value)
			we.Trace = string(o.Panic.stack)
		} else {
			we.GoType, we.Trace = o.GoType, o.Chain
		}
	}
	return we
}

// pipeline wraps a route's handler in the worker's middleware (see
// middleware.go for the order).
func (s *server) pipeline(h Handler, route []Middleware) Handler {
	if _, typed := h.(*typed); !typed && s.kind == kindRPC {
		h = validJSON(h)
	}
	h = chain(h, route)
	h = deadline(h)
	h = recoverPanics(h)
	if s.kind == kindQueue {
		h = s.retry(h)
	}
	h = s.logFailures(h)
	return chain(h, s.use)
}

// validJSON refuses a raw handler's output that is not JSON: it would make
// the reply envelope invalid.
func validJSON(next Handler) Handler {
	return HandlerFunc(func(ctx context.Context, req *Request) ([]byte, error) {
		out, err := next.Serve(ctx, req)
		if err == nil && len(out) > 0 && !json.Valid(out) {
			return nil, fmt.Errorf("handler of route %q returned invalid JSON (%d bytes)", req.Route, len(out))
		}
		return out, err
	})
}
