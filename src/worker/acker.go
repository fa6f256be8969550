package worker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ackPeriod is how often waiting acks are sent. An ack waits up to about
// two periods after its handler finished (one when nothing older is
// unfinished).
const ackPeriod = time.Millisecond

// settler is the part of *amqp.Channel the acker uses.
type settler interface {
	PublishWithContext(ctx context.Context, exchange, key string, mandatory, immediate bool, msg amqp.Publishing) error
	Ack(tag uint64, multiple bool) error
	Nack(tag uint64, multiple, requeue bool) error
}

// acker sends the replies and settles the deliveries of one channel, on a
// goroutine of its own: handlers hand it their replies and acks and go on
// at once, and it publishes and acks in batches, so handlers never queue on
// the connection's write lock and the one goroutine that writes keeps its
// stack grown.
//
// A reply goes out as soon as the acker gets to it. Acks are coalesced,
// because a frame per message costs the broker and the client a syscall
// each: a finished delivery's ack waits for the next tick (every
// [ackPeriod]), which sends one multiple ack up to the highest tag below
// which every delivery has finished. A finished delivery above an
// unfinished one (a slow handler) is acked on its own at the tick after
// that, so a slow handler holds back no one's ack for longer than two
// periods. When a quarter of the prefetch is waiting (with a prefetch of
// 1 to 7 that is every ack) the acks go out at once, so at most that many
// finished deliveries hold prefetch slots, for about two ticks at most. A
// requeue (nack) goes out at once.
//
// An ack is sent only after its reply was published; a delivery whose reply
// could not be published is never acked (its channel is gone, and the
// broker redelivers it). drain sends everything handed in and stops the
// acker.
type acker struct {
	ch      settler
	log     *slog.Logger
	settled func(tag uint64) // told of every delivery settled on the wire
	batch   int              // this many waiting acks are sent at once
	period  time.Duration    // between ticks

	mu      sync.Mutex
	queue   []ackOp
	kick    chan struct{} // 1 slot: the queue has ops
	stop    chan struct{} // closed by drain
	stopped chan struct{} // closed when run returns

	// Owned by run. A tag is settled on the wire when it is at most high
	// and neither missing nor ready. Both sets stay small: missing holds
	// the deliveries still being handled (at most the prefetch) and those
	// whose reply failed; ready is sent at least every two ticks.
	tick    uint64
	high    uint64              // highest tag handed in
	missing map[uint64]struct{} // tags up to high not handed in, or never to be acked
	ready   map[uint64]uint64   // finished, ack not sent yet: tag -> tick it finished in
}

type ackOp struct {
	tag     uint64
	nack    bool            // nack with requeue instead of ack
	reject  bool            // nack without requeue: the broker dead-letters it
	replyTo string          // when set, publish reply there before acking
	reply   amqp.Publishing // the reply (by value: one allocation less per reply)
}

// newAcker starts an acker for the deliveries of ch, consumed with
// prefetch, that ticks every period ([ackPeriod]). settled, when not nil,
// is called with each delivery tag once its ack or nack is sent.
func newAcker(ch settler, log *slog.Logger, prefetch int, period time.Duration, settled func(tag uint64)) *acker {
	if settled == nil {
		settled = func(uint64) {}
	}
	a := &acker{
		ch: ch, log: log, settled: settled, batch: max(1, prefetch/4), period: period,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{}),
		missing: map[uint64]struct{}{}, ready: map[uint64]uint64{},
	}
	go a.run()
	return a
}

func (a *acker) ack(tag uint64) { a.add(ackOp{tag: tag}) }

// replyAndAck publishes reply to replyTo, then acks tag.
func (a *acker) replyAndAck(tag uint64, replyTo string, reply amqp.Publishing) {
	a.add(ackOp{tag: tag, replyTo: replyTo, reply: reply})
}

func (a *acker) requeue(tag uint64) { a.add(ackOp{tag: tag, nack: true}) }

// reject nacks tag without requeueing it: the broker dead-letters it (or,
// for a queue without a dead-letter exchange, drops it).
func (a *acker) reject(tag uint64) { a.add(ackOp{tag: tag, nack: true, reject: true}) }

// add hands op to the acker and returns.
func (a *acker) add(op ackOp) {
	a.mu.Lock()
	a.queue = append(a.queue, op)
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default: // already kicked
	}
}

// drain sends everything handed in so far, including every waiting ack,
// and stops the acker. Call it once, when no handler will hand in more.
func (a *acker) drain() {
	close(a.stop)
	<-a.stopped
}

func (a *acker) run() {
	defer close(a.stopped)
	timer := time.NewTimer(a.period)
	timer.Stop()
	ticking := false
	var spare []ackOp
	for {
		all := false
		select {
		case <-a.kick:
		case <-timer.C:
			ticking = false
			a.tick++
			a.sendDue(a.tick - 1)
		case <-a.stop:
			all = true
		}
		a.mu.Lock()
		batch := a.queue
		a.queue = spare[:0]
		a.mu.Unlock()
		a.flush(batch, all)
		spare = batch
		if all {
			timer.Stop()
			return
		}
		if len(a.ready) > 0 && !ticking {
			ticking = true
			timer.Reset(a.period)
		}
	}
}

// flush publishes the batch's replies, records its acks and sends those
// that are due (all of them when all is set).
func (a *acker) flush(batch []ackOp, all bool) {
	for i := range batch {
		op := &batch[i]
		a.handIn(op.tag)
		switch {
		case op.nack:
			// Errors mean the channel is gone; its deliveries are redelivered.
			_ = a.ch.Nack(op.tag, false, !op.reject)
			a.settled(op.tag)
		case op.replyTo != "":
			err := a.ch.PublishWithContext(context.Background(), "", op.replyTo, false, false, op.reply)
			op.reply = amqp.Publishing{} // the queue's array is reused: let the body go
			if err != nil {
				a.log.Warn("cannot send reply; the request will be redelivered", "reply_to", op.replyTo, "err", err)
				a.missing[op.tag] = struct{}{} // never acked, not even by a multiple ack
				continue
			}
			a.ready[op.tag] = a.tick
		default:
			a.ready[op.tag] = a.tick
		}
	}
	if all || len(a.ready) >= a.batch {
		a.sendDue(a.tick + 1)
	}
}

// handIn records that tag's handler finished.
func (a *acker) handIn(tag uint64) {
	if tag <= a.high {
		delete(a.missing, tag)
		return
	}
	for t := a.high + 1; t < tag; t++ { // delivered, still being handled
		a.missing[t] = struct{}{}
	}
	a.high = tag
}

// sendDue sends one multiple ack for the waiting deliveries below the
// lowest missing tag, then acks one by one each waiting delivery that
// finished before tick "before". The multiple ack names a waiting tag, one
// the broker has not seen settled (naming a settled tag is a channel
// error), and everything below it is finished.
func (a *acker) sendDue(before uint64) {
	floor := a.high + 1
	for t := range a.missing {
		floor = min(floor, t)
	}
	var target uint64
	for tag := range a.ready {
		if tag < floor {
			target = max(target, tag)
		}
	}
	if target != 0 {
		_ = a.ch.Ack(target, true)
		for tag := range a.ready {
			if tag <= target {
				delete(a.ready, tag)
				a.settled(tag)
			}
		}
	}
	for tag, t := range a.ready {
		if t < before {
			_ = a.ch.Ack(tag, false)
			delete(a.ready, tag)
			a.settled(tag)
		}
	}
}
