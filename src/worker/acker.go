package worker

import (
	"context"
	"log/slog"
	"slices"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// acker settles the deliveries of one channel. Handlers hand it their acks;
// the first to find nobody flushing becomes the flusher and sends, on its
// own goroutine, everything queued meanwhile: alone, an ack goes out at
// once; under load, acks that cover a contiguous run of delivery tags from
// the lowest unsettled one go out as one multiple ack. Anything else is
// sent one by one, so a slow handler never holds back the acks of others.
// An ack added while another handler is flushing is sent by that handler,
// so add may return before its ack is on the wire; every ack is sent by the
// time the consumer's handlers have all returned (the last flusher drains
// the queue before it returns).
type acker struct {
	ch  *amqp.Channel
	log *slog.Logger

	mu       sync.Mutex
	queue    []ackOp
	spare    []ackOp
	flushing bool

	// Owned by the flusher.
	watermark uint64          // every tag <= watermark is settled
	settled   map[uint64]bool // settled tags above the watermark
}

type ackOp struct {
	tag     uint64
	nack    bool             // nack with requeue instead of ack
	skip    bool             // reply failed: leave unsettled
	replyTo string           // when set, publish reply there before acking
	reply   *amqp.Publishing // the reply
}

func newAcker(ch *amqp.Channel, log *slog.Logger) *acker {
	return &acker{ch: ch, log: log, settled: map[uint64]bool{}}
}

func (a *acker) ack(tag uint64) { a.add(ackOp{tag: tag}) }

// replyAndAck publishes reply to replyTo, then acks tag; when the reply
// cannot be published the delivery is left unacked (the channel is gone and
// the broker redelivers it).
func (a *acker) replyAndAck(tag uint64, replyTo string, reply *amqp.Publishing) {
	a.add(ackOp{tag: tag, replyTo: replyTo, reply: reply})
}
func (a *acker) requeue(tag uint64) { a.add(ackOp{tag: tag, nack: true}) }

func (a *acker) add(op ackOp) {
	a.mu.Lock()
	a.queue = append(a.queue, op)
	if a.flushing {
		a.mu.Unlock()
		return
	}
	a.flushing = true
	for len(a.queue) > 0 {
		batch := a.queue
		a.queue = a.spare[:0]
		a.mu.Unlock()
		a.flush(batch)
		a.mu.Lock()
		a.spare = batch
	}
	a.flushing = false
	a.mu.Unlock()
}

func (a *acker) flush(batch []ackOp) {
	// Replies first: a request is acked only after its reply went out.
	for i := range batch {
		op := &batch[i]
		if op.reply == nil {
			continue
		}
		if err := a.ch.PublishWithContext(context.Background(), "", op.replyTo, false, false, *op.reply); err != nil {
			a.log.Warn("cannot send reply; the request will be redelivered", "reply_to", op.replyTo, "err", err)
			op.skip = true
		}
		op.reply = nil
	}
	if len(batch) > 1 {
		slices.SortFunc(batch, func(x, y ackOp) int {
			switch {
			case x.tag < y.tag:
				return -1
			case x.tag > y.tag:
				return 1
			}
			return 0
		})
	}
	first, last := batch[0].tag, batch[len(batch)-1].tag
	contiguous := len(batch) > 1 && first == a.watermark+1 && last-first == uint64(len(batch)-1)
	for _, op := range batch {
		if op.nack || op.skip {
			contiguous = false
		}
	}
	if contiguous {
		// Errors mean the channel is gone; its deliveries are redelivered.
		_ = a.ch.Ack(last, true)
		a.watermark = last
	} else {
		for _, op := range batch {
			switch {
			case op.skip:
				continue
			case op.nack:
				_ = a.ch.Nack(op.tag, false, true)
			default:
				_ = a.ch.Ack(op.tag, false)
			}
			a.settled[op.tag] = true
		}
	}
	for a.settled[a.watermark+1] {
		delete(a.settled, a.watermark+1)
		a.watermark++
	}
}
