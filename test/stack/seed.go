package stack

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Envelope is a reply body as the Python seed defined it.
type Envelope struct {
	Success bool            `json:"success"`
	Data    json.RawMessage `json:"data"`
	Error   *struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
}

// Reply is one reply as it came off the wire.
type Reply struct {
	Envelope
	Body        []byte // the raw body, after gunzip if it was compressed
	Gzipped     bool   // the body came gzip-compressed
	ContentType string
}

// SeedClient speaks to the service the way the Python seed's clients did,
// with plain amqp091-go and none of the project's worker code: requests go to
// the default exchange with the route as routing key, the body is the JSON
// {"data": ...} gzip-compressed with content type application/octet-stream,
// and replies come back on an exclusive, server-named reply queue.
type SeedClient struct {
	ch      *amqp.Channel
	replyTo string

	mu      sync.Mutex
	pending map[string]chan amqp.Delivery
	seq     atomic.Uint64
}

// NewSeedClient connects to env's vhost; it is closed when the test ends.
func NewSeedClient(t testing.TB, env Env) *SeedClient {
	t.Helper()
	ch := env.Channel(t)
	q, err := ch.QueueDeclare("", false, true, true, false, nil) // exclusive, auto-delete, server-named
	if err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &SeedClient{ch: ch, replyTo: q.Name, pending: map[string]chan amqp.Delivery{}}
	go func() {
		for d := range deliveries {
			c.mu.Lock()
			waiter := c.pending[d.CorrelationId]
			delete(c.pending, d.CorrelationId)
			c.mu.Unlock()
			if waiter != nil {
				waiter <- d
			}
		}
	}()
	return c
}

// Call sends {"data": data} gzip-compressed to route and waits for the reply.
func (c *SeedClient) Call(ctx context.Context, route string, data any) (Reply, error) {
	body, err := json.Marshal(map[string]any{"data": data})
	if err != nil {
		return Reply{}, err
	}
	return c.Send(ctx, route, amqp.Publishing{ContentType: "application/octet-stream", Body: Gzip(body)})
}

// Send publishes msg as it is, adding only a correlation id and reply_to,
// and waits for the reply.
func (c *SeedClient) Send(ctx context.Context, route string, msg amqp.Publishing) (Reply, error) {
	id := "seed-" + strconv.FormatUint(c.seq.Add(1), 10)
	wait := make(chan amqp.Delivery, 1)
	c.mu.Lock()
	c.pending[id] = wait
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	msg.CorrelationId = id
	msg.ReplyTo = c.replyTo
	if err := c.ch.PublishWithContext(ctx, "", route, false, false, msg); err != nil {
		return Reply{}, fmt.Errorf("publish to %s: %w", route, err)
	}
	select {
	case d := <-wait:
		return decodeReply(d)
	case <-ctx.Done():
		return Reply{}, fmt.Errorf("no reply from %s: %w", route, ctx.Err())
	}
}

func decodeReply(d amqp.Delivery) (Reply, error) {
	r := Reply{Body: d.Body, ContentType: d.ContentType}
	if bytes.HasPrefix(d.Body, []byte{0x1f, 0x8b}) {
		var err error
		if r.Body, err = Gunzip(d.Body); err != nil {
			return r, fmt.Errorf("reply starts like gzip but does not decompress: %w", err)
		}
		r.Gzipped = true
	}
	if err := json.Unmarshal(r.Body, &r.Envelope); err != nil {
		return r, fmt.Errorf("reply is not a JSON envelope: %w: %q", err, r.Body)
	}
	return r, nil
}

// Publish sends msg to a queue route as a persistent message without
// reply_to, the way the seed's queue publisher did.
func (c *SeedClient) Publish(ctx context.Context, route string, msg amqp.Publishing) error {
	msg.DeliveryMode = amqp.Persistent
	msg.Timestamp = time.Now()
	return c.ch.PublishWithContext(ctx, "", route, false, false, msg)
}

// Gzip compresses b.
func Gzip(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

// Gunzip decompresses b.
func Gunzip(b []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}
