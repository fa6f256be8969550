package worker

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"
)

// Every request runs through these middleware, outermost first:
//
//	what Use added               (tracing, metrics, auth: once per delivery)
//	logFailures                  one warn line per failure, with its error id
//	retry                        queue routes: attempts with backoff
//	recoverPanics                a panic becomes an error
//	deadline                     the caller's deadline on ctx; an expired request is not run
//	what Handle added            (one route's own)
//	the route's handler
//
// They are built per worker, from its options.

// errExpired is the deadline middleware's answer to a request whose caller
// has given up: it is acked, and nothing is sent back.
var errExpired = errors.New("the caller's deadline passed before the request ran")

// errRequeue is the retry middleware's answer when Shutdown ends a retry's
// wait: the message goes back to its queue for another replica.
var errRequeue = errors.New("stopped while waiting to retry")

// deadline puts the request's deadline on ctx and refuses a request whose
// caller has already given up.
func deadline(next Handler) Handler {
	return HandlerFunc(func(ctx context.Context, req *Request) ([]byte, error) {
		if req.Deadline.IsZero() {
			return next.Serve(ctx, req)
		}
		if !time.Now().Before(req.Deadline) {
			return nil, errExpired
		}
		ctx, cancel := context.WithDeadline(ctx, req.Deadline)
		defer cancel()
		return next.Serve(ctx, req)
	})
}

// recoverPanics turns a panic of next into a *panicError.
func recoverPanics(next Handler) Handler {
	return HandlerFunc(func(ctx context.Context, req *Request) (out []byte, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = &panicError{route: req.Route, value: r, stack: debug.Stack()}
			}
		}()
		return next.Serve(ctx, req)
	})
}

type panicError struct {
	route string
	value any
	stack []byte
}

func (e *panicError) Error() string {
	return fmt.Sprintf("handler of route %q panicked: %v", e.route, e.value)
}

// retry runs next up to the retry policy's attempts, waiting between them
// with backoff, until it succeeds or fails with a BadRequest (the caller's
// fault: no attempt can fix it). A Shutdown during a wait ends it with
// errRequeue.
func (s *server) retry(next Handler) Handler {
	return HandlerFunc(func(ctx context.Context, req *Request) ([]byte, error) {
		if s.opts.retry.InBroker { // one run; settle moves a failure to a retry queue
			return next.Serve(ctx, req)
		}
		backoff := s.opts.retry.Backoff
		for attempt := 1; ; attempt++ {
			req.Attempt = attempt
			out, err := next.Serve(ctx, req)
			if err == nil || s.opts.errorType(err) == TypeBadRequest || attempt >= s.opts.retry.Attempts {
				return out, err
			}
			s.opts.logger.Debug("handler failed, retrying", "route", req.Route, "attempt", attempt, "err", truncate(err.Error(), maxLogText), "in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil, errRequeue
			}
			backoff = min(backoff*2, s.opts.retry.MaxBackoff)
		}
	})
}

// logFailures logs each failure once, at warn level (a panic at error
// level, with its stack), sampled in production, and hands the described
// failure on so the reply or dead letter carries the id it was logged
// under.
func (s *server) logFailures(next Handler) Handler {
	return HandlerFunc(func(ctx context.Context, req *Request) ([]byte, error) {
		out, err := next.Serve(ctx, req)
		if err == nil || errors.Is(err, errExpired) || errors.Is(err, errRequeue) {
			return out, err
		}
		o := s.describe(err)
		if delay, ok := s.brokerDelay(req.Attempt, o); ok {
			s.opts.logger.Debug("handler failed, retrying through the broker", "route", req.Route, "attempt", req.Attempt,
				"err", truncate(o.Public, maxLogText), "error_id", o.ID, "in", delay)
			return nil, o
		}
		msg := "request failed"
		if s.kind == kindQueue {
			msg = "message failed; dead-lettering it"
		}
		s.logFailure(req.Route, msg, o, "attempts", req.Attempt)
		return nil, o
	})
}
