package worker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	amqp "github.com/rabbitmq/amqp091-go"
)

// chanState is what every session has: its channel, and a signal that the
// channel is gone.
type chanState struct {
	ch   *amqp.Channel
	dead chan struct{} // closed once the channel is gone
}

func (c *chanState) state() *chanState { return c }

func (c *chanState) alive() bool {
	select {
	case <-c.dead:
		return false
	default:
		return true
	}
}

// slot holds the session a Client or publisher works on (a channel and what
// lives on it) and replaces it once its channel is gone. One caller at a
// time opens a session (which waits while the connection is down); the
// others wait for it only as long as their own ctx lets them.
type slot[T any, S interface {
	*T
	state() *chanState
}] struct {
	conn *link
	// open sets up a session on ch; when it fails, it closes ch.
	open func(ch *amqp.Channel) (*T, error)

	cur     atomic.Pointer[T] // the current session, maybe dead; nil once closed
	mu      sync.Mutex        // guards closed; never held while waiting
	closed  bool
	opening chan struct{} // 1 slot: held by the caller opening a session
}

func newSlot[T any, S interface {
	*T
	state() *chanState
}](conn *link, open func(ch *amqp.Channel) (*T, error),
) *slot[T, S] {
	return &slot[T, S]{conn: conn, open: open, opening: make(chan struct{}, 1)}
}

// get returns the live session, opening one when needed, or an error
// matching ErrClosed once close ran.
func (s *slot[T, S]) get(ctx context.Context) (*T, error) {
	if t := s.cur.Load(); t != nil && S(t).state().alive() {
		return t, nil
	}
	if t, err := s.live(); t != nil || err != nil {
		return t, err
	}
	select {
	case s.opening <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("RabbitMQ at %s is unreachable: %w", s.conn.where(), ctx.Err())
	}
	defer func() { <-s.opening }()
	if t, err := s.live(); t != nil || err != nil { // opened while we waited
		return t, err
	}
	ch, err := s.conn.channel(ctx)
	if err != nil {
		return nil, err
	}
	t, err := s.open(ch)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed { // close ran meanwhile
		_ = ch.Close()
		return nil, ErrClosed
	}
	s.cur.Store(t)
	return t, nil
}

// live returns the current session if it is alive, and ErrClosed once
// close ran.
func (s *slot[T, S]) live() (*T, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if t := s.cur.Load(); t != nil && S(t).state().alive() {
		return t, nil
	}
	return nil, nil
}

// close closes the current session's channel; later gets fail with
// ErrClosed.
func (s *slot[T, S]) close() {
	s.mu.Lock()
	s.closed = true
	t := s.cur.Swap(nil)
	s.mu.Unlock()
	if t != nil {
		_ = S(t).state().ch.Close()
	}
}
