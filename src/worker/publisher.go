package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"

	amqp "github.com/rabbitmq/amqp091-go"
)

// publisher publishes mandatory messages on a confirm-mode channel and
// waits for each confirm; many goroutines publish at once, so confirms are
// pipelined. When the channel dies before a confirm, the message is
// published again on a new channel (at-least-once).
type publisher struct {
	logger *slog.Logger
	prefix string

	ids      atomic.Uint64
	sessions *slot[pubSession, *pubSession]
}

type pubSession struct {
	chanState
	pubMu sync.Mutex // orders sequence numbers with publishes

	pendMu  sync.Mutex // never held while calling the channel
	pending map[uint64]*pendingPub
	byKey   map[string]uint64
}

// publishKeyHeader carries a key unique to each publish, by which a returned
// message is matched to its publish. (Message ids are the producer's and
// need not be unique: a dead letter keeps the id of the message it copies.)
const publishKeyHeader = "x-publish-key"

type pendingPub struct {
	key      string
	done     chan error // buffered 1
	returned *amqp.Return
}

func newPublisher(conn *Conn, logger *slog.Logger) *publisher {
	p := &publisher{logger: logger, prefix: randomHex(6)}
	p.sessions = newSlot[pubSession](conn.publish, openPubSession)
	return p
}

// openPubSession puts ch in confirm mode and listens to its confirms and
// returns.
func openPubSession(ch *amqp.Channel) (*pubSession, error) {
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("put channel in confirm mode: %w", err)
	}
	s := &pubSession{
		chanState: chanState{ch: ch, dead: make(chan struct{})},
		pending:   map[uint64]*pendingPub{},
		byKey:     map[string]uint64{},
	}
	// The library's reader hands over a message's return before its
	// confirm; listen drains the returns before handling each confirm, so a
	// returned message is always known as returned when its confirm comes.
	// Buffered, so the reader never waits for us.
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 1024))
	returns := ch.NotifyReturn(make(chan amqp.Return, 64))
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	go s.listen(confirms, returns, closes)
	return s, nil
}

func (s *pubSession) listen(confirms chan amqp.Confirmation, returns chan amqp.Return, closes chan *amqp.Error) {
	defer close(s.dead)
	for confirms != nil || returns != nil || closes != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			s.markReturned(&r)
		case c, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
		drain:
			for returns != nil {
				select {
				case r, ok := <-returns:
					if !ok {
						returns = nil
						break drain
					}
					s.markReturned(&r)
				default:
					break drain
				}
			}
			s.pendMu.Lock()
			pp := s.pending[c.DeliveryTag]
			delete(s.pending, c.DeliveryTag)
			if pp != nil {
				delete(s.byKey, pp.key)
			}
			s.pendMu.Unlock()
			if pp == nil {
				continue
			}
			switch {
			case !c.Ack:
				pp.done <- ErrNacked
			case pp.returned != nil:
				pp.done <- fmt.Errorf("%w (broker: %d %s)", ErrNoRoute, pp.returned.ReplyCode, pp.returned.ReplyText)
			default:
				pp.done <- nil
			}
		case _, ok := <-closes:
			if !ok {
				closes = nil
			}
		}
	}
}

func (s *pubSession) markReturned(r *amqp.Return) {
	key, ok := r.Headers[publishKeyHeader].(string)
	if !ok {
		key = r.MessageId // the publisher made the id: it is the key
	}
	s.pendMu.Lock()
	if seq, found := s.byKey[key]; found {
		s.pending[seq].returned = r
	}
	s.pendMu.Unlock()
}

// ErrNacked is the error of a Publish (or a Call's request) the broker
// refused with a nack: it did not take the message. A quorum queue nacks
// while it has no leader (for a few seconds after its leader's node is
// lost) and a queue with x-overflow reject-publish nacks when full; the
// message may be published again (a nacked message is rarely stored all
// the same, so the copy may be a duplicate, with the same message id).
var ErrNacked = errors.New("the broker refused the message (nack)")

// publish publishes msg to queue through the default exchange and returns
// once the broker confirmed it. A msg without MessageId gets a unique one,
// which is also the key a return is matched by. A msg with a MessageId of
// its own (a dead letter keeps its producer's) carries its key in the header
// publishKeyHeader instead (msg.Headers itself is not modified): a headers
// table on every message would cost the broker about a quarter of its
// publish throughput.
func (p *publisher) publish(ctx context.Context, queue string, msg amqp.Publishing) error {
	return p.publishTo(ctx, "", queue, true, msg)
}

// publishTo is publish to any exchange with routing key queue; a message
// that is not mandatory and routes nowhere is confirmed (and dropped by
// the broker).
func (p *publisher) publishTo(ctx context.Context, exchange, queue string, mandatory bool, msg amqp.Publishing) error {
	key := p.prefix + "." + itoa(p.ids.Add(1))
	if msg.MessageId == "" {
		msg.MessageId = key
	} else {
		headers := make(amqp.Table, len(msg.Headers)+1)
		for k, v := range msg.Headers {
			headers[k] = v
		}
		headers[publishKeyHeader] = key
		msg.Headers = headers
	}
	for {
		s, err := p.sessions.get(ctx)
		if err != nil {
			return fmt.Errorf("publish to queue %q: %w", queue, err)
		}
		pp := &pendingPub{key: key, done: make(chan error, 1)}
		s.pubMu.Lock()
		seq := s.ch.GetNextPublishSeqNo()
		s.pendMu.Lock()
		s.pending[seq] = pp
		s.byKey[key] = seq
		s.pendMu.Unlock()
		err = s.ch.PublishWithContext(ctx, exchange, queue, mandatory, false, msg)
		s.pubMu.Unlock()
		if err != nil {
			s.forget(seq)
			// A failed write means the channel or its connection is going
			// away, though the library may not have noticed yet: wait for
			// the session to die, then publish on the reconnected one.
			if ctx.Err() == nil {
				select {
				case <-s.dead:
					continue
				case <-ctx.Done():
				}
			}
			return fmt.Errorf("publish to queue %q: %w", queue, err)
		}
		select {
		case err := <-pp.done:
			return wrapPublish(queue, err)
		case <-s.dead:
			select {
			case err := <-pp.done: // confirmed just before the channel died
				return wrapPublish(queue, err)
			default:
			}
			p.logger.Debug("channel lost before confirm; publishing again", "queue", queue)
			continue
		case <-ctx.Done():
			s.forget(seq)
			return fmt.Errorf("publish to queue %q: not confirmed in time: %w", queue, ctx.Err())
		}
	}
}

func wrapPublish(queue string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrNoRoute) {
		return fmt.Errorf("publish to queue %q: no such queue: %w", queue, err)
	}
	return fmt.Errorf("publish to queue %q: %w", queue, err)
}

func (s *pubSession) forget(seq uint64) {
	s.pendMu.Lock()
	if pp := s.pending[seq]; pp != nil {
		delete(s.byKey, pp.key)
	}
	delete(s.pending, seq)
	s.pendMu.Unlock()
}

func (p *publisher) close() { p.sessions.close() }

// itoa is strconv.FormatUint for correlation ids.
func itoa(n uint64) string { return strconv.FormatUint(n, 36) }
