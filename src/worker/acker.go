package worker

import (
	"slices"

	amqp "github.com/rabbitmq/amqp091-go"
)

// acker settles the deliveries of one channel from a single goroutine;
// close ops when no handler of the channel is left, then wait for done. Ops
// that arrive together and cover a contiguous run of delivery tags from the
// lowest unsettled one are sent as one multiple ack; anything else is sent
// one by one, so a slow handler never holds back the acks of others.
type acker struct {
	ch   *amqp.Channel
	ops  chan ackOp
	done chan struct{}

	watermark uint64          // every tag <= watermark is settled
	settled   map[uint64]bool // settled tags above the watermark
}

type ackOp struct {
	tag  uint64
	nack bool // nack with requeue instead of ack
}

func newAcker(ch *amqp.Channel, size int) *acker {
	a := &acker{ch: ch, ops: make(chan ackOp, size), done: make(chan struct{}), settled: map[uint64]bool{}}
	go a.run()
	return a
}

func (a *acker) ack(tag uint64)     { a.ops <- ackOp{tag: tag} }
func (a *acker) requeue(tag uint64) { a.ops <- ackOp{tag: tag, nack: true} }

func (a *acker) run() {
	defer close(a.done)
	batch := make([]ackOp, 0, 256)
	for op := range a.ops {
		batch = append(batch[:0], op)
	drain:
		for len(batch) < cap(batch) {
			select {
			case op, ok := <-a.ops:
				if !ok {
					break drain
				}
				batch = append(batch, op)
			default:
				break drain
			}
		}
		a.flush(batch)
	}
}

func (a *acker) flush(batch []ackOp) {
	slices.SortFunc(batch, func(x, y ackOp) int {
		switch {
		case x.tag < y.tag:
			return -1
		case x.tag > y.tag:
			return 1
		}
		return 0
	})
	first, last := batch[0].tag, batch[len(batch)-1].tag
	contiguous := len(batch) > 1 && first == a.watermark+1 && last-first == uint64(len(batch)-1)
	for _, op := range batch {
		if op.nack {
			contiguous = false
		}
	}
	if contiguous {
		// Errors mean the channel is gone; its deliveries are redelivered.
		_ = a.ch.Ack(last, true)
		a.watermark = last
	} else {
		for _, op := range batch {
			if op.nack {
				_ = a.ch.Nack(op.tag, false, true)
			} else {
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
