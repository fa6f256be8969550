//go:build interop

package interop

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/worker"
	"example.com/service/test/stack"
)

// callIDs numbers the raw calls.
var callIDs atomic.Uint64

// rawReply is a reply as it came off the wire.
type rawReply struct {
	amqp.Delivery
	body []byte // gunzipped
}

// aioPikaCall sends body to route exactly as the fleet's callers do, the
// library's JSONGzipRPC on aio-pika 6.8 (gzip JSON without a content type,
// AMQP type "call", an integer correlation id, reply_to and a "From" header
// naming the caller's reply queue, delivery mode 1, priority 5, a
// timestamp), and returns the reply, or an error when none comes within
// timeout. (aio-pika 8, which client.py runs, adds a content type and a
// message id and uses uuid4 correlation ids.)
func aioPikaCall(ch *amqp.Channel, route string, body []byte, gzipped bool, timeout time.Duration) (amqp.Publishing, rawReply, error) {
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return amqp.Publishing{}, rawReply{}, fmt.Errorf("declare a reply queue: %w", err)
	}
	defer func() { _, _ = ch.QueueDelete(q.Name, false, false, false) }()
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		return amqp.Publishing{}, rawReply{}, err
	}
	if gzipped {
		body = stack.Gzip(body)
	}
	msg := amqp.Publishing{
		CorrelationId: strconv.FormatUint(callIDs.Add(1)+140000000000000, 10), // id(future) on 6.8
		ReplyTo:       q.Name,
		Headers:       amqp.Table{"From": q.Name},
		DeliveryMode:  amqp.Transient,
		Priority:      5,
		Type:          "call",
		Timestamp:     time.Now(),
		Body:          body,
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := ch.PublishWithContext(ctx, "", route, false, false, msg); err != nil {
		return msg, rawReply{}, err
	}
	select {
	case d := <-deliveries:
		return msg, rawReply{Delivery: d, body: gunzipIf(d.Body)}, nil
	case <-ctx.Done():
		return msg, rawReply{}, fmt.Errorf("no reply from %q within %s", route, timeout)
	}
}

// waitDeadLetter waits until the dead-letter queue holds a message whose
// body contains marker, with the reply type BadRequest in its headers.
func waitDeadLetter(ch *amqp.Channel, queue, marker string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			return fmt.Errorf("read %s: %w", queue, err)
		}
		if !ok {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if strings.Contains(string(gunzipIf(d.Body)), marker) {
			if typ := fmt.Sprint(d.Headers[worker.HeaderErrorType]); typ != "BadRequest" {
				return fmt.Errorf("dead letter in %s has %s %q, want BadRequest", queue, worker.HeaderErrorType, typ)
			}
			return nil
		}
	}
	return fmt.Errorf("no dead letter with %q in %s within %s", marker, queue, timeout)
}

// purge empties queues, ending any redelivery loop on them.
func purge(ch *amqp.Channel, queues ...string) {
	for _, q := range queues {
		_, _ = ch.QueuePurge(q, false)
	}
}

func decodeExact(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	return dec.Decode(v)
}
