package worker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// maxCopiedHeaders bounds the encoded size of the original headers a dead
// letter keeps. RabbitMQ's frame_max (128 KiB) bounds a message's whole
// header frame: a message that arrived with headers close to it cannot
// get its own added on top, or publishing the dead letter fails with
// FRAME_ERROR and takes the connection down.
const maxCopiedHeaders = 16 << 10

// HeaderHeadersDropped is the header, on a dead letter, that counts the original headers it
// does not carry (they did not fit maxCopiedHeaders, or were refused).
const HeaderHeadersDropped = "x-headers-dropped"

// HeaderErrorID is the header, on a dead letter, holding the id under which the service logged
// the whole error.
const HeaderErrorID = "x-error-id"

// deadLetterHeaders returns the headers of a dead letter: the original
// ones, in key order while they fit in maxCopiedHeaders (our own x-error*
// headers of an earlier failure are replaced, never kept), then ours.
func deadLetterHeaders(orig amqp.Table, o *outcome, route string, attempts int) amqp.Table {
	out := amqp.Table{}
	ours := []string{HeaderError, HeaderErrorType, HeaderErrorID, HeaderAttempts, HeaderRoute, HeaderHeadersDropped}
	size, dropped := 0, 0
	for _, k := range slices.Sorted(maps.Keys(orig)) {
		if slices.Contains(ours, k) || k == publishKeyHeader {
			continue
		}
		n := fieldSize(orig[k])
		if n < 0 || size+1+len(k)+n > maxCopiedHeaders {
			dropped++
			continue
		}
		size += 1 + len(k) + n
		out[k] = orig[k]
	}
	out[HeaderError] = truncate(o.Public, maxHeaderText)
	out[HeaderErrorType] = o.Type
	out[HeaderErrorID] = o.ID
	out[HeaderAttempts] = int32(attempts)
	out[HeaderRoute] = route
	if dropped > 0 {
		out[HeaderHeadersDropped] = int32(dropped)
	}
	return out
}

// fieldSize is the encoded size of a header value as amqp091-go writes it
// (type octet included), or -1 for a value it cannot write.
func fieldSize(v any) int {
	switch v := v.(type) {
	case nil:
		return 1
	case bool, byte, int8:
		return 2
	case int16, uint16:
		return 3
	case int, int32, uint32, float32:
		return 5
	case int64, float64, time.Time:
		return 9
	case amqp.Decimal:
		return 6
	case string:
		return 5 + len(v)
	case []byte:
		return 5 + len(v)
	case []any:
		n := 5
		for _, e := range v {
			m := fieldSize(e)
			if m < 0 {
				return -1
			}
			n += m
		}
		return n
	case amqp.Table:
		n := 5
		for k, e := range v {
			m := fieldSize(e)
			if m < 0 || len(k) > 255 {
				return -1
			}
			n += 1 + len(k) + m
		}
		return n
	}
	return -1
}

// publishDeadLetter publishes the message to the route's dead-letter queue
// with the failure o in its headers and, once confirmed, acks it. When the
// dead-letter queue is gone it is declared again. When the dead letter
// still cannot be confirmed (the queue is full: it refuses new messages
// past its bound) the message is requeued after a wait that grows with each
// consecutive failure (1 s up to 30 s), never dropped and never redelivered
// in a tight loop.
func (c *consumer) publishDeadLetter(ack *acker, d *amqp.Delivery, o *outcome, attempts int) {
	c.publishCopy(ack, d, o, attempts, c.route+DeadLetterSuffix)
}

// publishCopy is publishDeadLetter to queue dlq: the dead-letter queue or
// a retry queue (delay.go).
func (c *consumer) publishCopy(ack *acker, d *amqp.Delivery, o *outcome, attempts int, dlq string) {
	s := c.s
	msg := amqp.Publishing{
		Headers:         deadLetterHeaders(d.Headers, o, c.route, attempts),
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		CorrelationId:   d.CorrelationId,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		AppId:           d.AppId,
		Body:            d.Body,
	}
	if _, refused := d.Headers[HeaderHeadersRefused]; refused {
		msg.Headers[HeaderHeadersDropped] = int32(1)
	}
	if ev := c.eventOf(d); ev != "" {
		msg.Headers[HeaderEvent] = ev // the copy goes through the default exchange
	}
	retry := dlq != c.route+DeadLetterSuffix
	ctx, cancel := context.WithTimeout(s.base, 30*time.Second)
	defer cancel()
	err := s.dlq.publish(ctx, dlq, msg)
	if errors.Is(err, ErrNoRoute) {
		s.opts.logger.Warn("dead-letter or retry queue missing; declaring it again", "route", c.route, "queue", dlq)
		declare := c.declareDLQ
		if retry {
			declare = c.redeclareRetries
		}
		if derr := declare(ctx); derr != nil {
			err = fmt.Errorf("%w; declare it again: %w", err, derr)
		} else {
			err = s.dlq.publish(ctx, dlq, msg)
		}
	}
	if err != nil {
		n := c.dlqFails.Add(1)
		wait := min(time.Second<<min(n-1, 5), 30*time.Second)
		s.opts.logger.Error("cannot dead-letter message or move it to its retry queue; requeueing it after a wait (is the queue full?)",
			"route", c.route, "queue", dlq, "err", err, "error_id", o.ID, "in", wait)
		select {
		case <-time.After(wait):
		case <-s.stop: // shutting down: give it back now
		}
		ack.requeue(d.DeliveryTag)
		return
	}
	c.dlqFails.Store(0)
	ack.ack(d.DeliveryTag)
}

// declareDLQ declares the route's dead-letter queue on a channel of its own.
func (c *consumer) declareDLQ(ctx context.Context) error {
	ch, err := c.s.conn.publish.channel(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()
	_, err = ch.QueueDeclare(c.route+DeadLetterSuffix, true, false, false, false, c.queues.deadLetterArgs())
	return err
}
