package worker

import (
	"errors"
	"fmt"
)

// ConnState is what a [Conn] reports of its two connections.
type ConnState struct {
	ConsumeUp, PublishUp                 bool  // connected now (false while reconnecting)
	ConsumeReconnects, PublishReconnects int64 // connections restored after a loss, since Dial
}

// State reports whether the Conn's connections are up and how often they
// were restored.
func (c *Conn) State() ConnState {
	return ConnState{
		ConsumeUp: c.consume.isUp(), PublishUp: c.publish.isUp(),
		ConsumeReconnects: c.consume.reconnects.Load(), PublishReconnects: c.publish.reconnects.Load(),
	}
}

func (c *link) isUp() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur != nil && !c.cur.IsClosed()
}

// ErrNotReady is matched by the errors of Ready.
var ErrNotReady = errors.New("not ready")

// Ready returns nil while the worker consumes on every route, and else an
// error matching [ErrNotReady] saying why: not started, draining (StopIntake
// or Shutdown ran), or a route whose channel is gone (the connection is
// lost and the worker waits to resubscribe). For a readiness probe.
func (r *RPC) Ready() error { return r.s.ready() }

// Ready returns nil while the worker consumes on every route; see
// [RPC.Ready].
func (q *Queue) Ready() error { return q.s.ready() }

func (s *server) ready() error {
	s.mu.Lock()
	started, consumers := s.started, s.consumers
	s.mu.Unlock()
	switch {
	case s.stopping.Load():
		return fmt.Errorf("%s worker: %w: draining (shutting down)", s.kind, ErrNotReady)
	case !started || consumers == nil:
		return fmt.Errorf("%s worker: %w: not started", s.kind, ErrNotReady)
	}
	for _, c := range consumers {
		c.mu.Lock()
		ch := c.ch
		c.mu.Unlock()
		if ch == nil || ch.IsClosed() {
			return fmt.Errorf("%s worker: %w: route %q is not consuming (reconnecting to RabbitMQ)", s.kind, ErrNotReady, c.route)
		}
	}
	if !s.conn.consume.isUp() {
		return fmt.Errorf("%s worker: %w: the RabbitMQ connection is down (reconnecting)", s.kind, ErrNotReady)
	}
	return nil
}
