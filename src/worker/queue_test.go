package worker_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

type job struct {
	ID    string `json:"id"`
	Count int    `json:"count"`
}

// getOne waits for one message on queue (polling basic.get).
func getOne(t *testing.T, ch *amqp.Channel, queue string) amqp.Delivery {
	t.Helper()
	var d amqp.Delivery
	eventually(t, "a message in "+queue, func() bool {
		var ok bool
		var err error
		d, ok, err = ch.Get(queue, true)
		if err != nil {
			t.Fatalf("get from %s: %v", queue, err)
		}
		return ok
	})
	return d
}

// getOneOnceDeclared is getOne for a queue that may not exist yet.
func getOneOnceDeclared(t *testing.T, queue string) amqp.Delivery {
	t.Helper()
	var conn *amqp.Connection
	var ch *amqp.Channel
	defer func() {
		if conn != nil {
			_ = conn.Close()
		}
	}()
	var d amqp.Delivery
	eventually(t, "a message in "+queue, func() bool {
		var err error
		if conn == nil || conn.IsClosed() {
			if conn, err = amqp.Dial(testenv.BrokerURL()); err != nil {
				t.Fatalf("dial: %v", err)
			}
			ch = nil
		}
		if ch == nil {
			if ch, err = conn.Channel(); err != nil {
				// A get from a missing queue closes its channel, and the
				// broker may close the whole connection if the next frame
				// crosses that close: dial again on the next try.
				_ = conn.Close()
				conn = nil
				return false
			}
		}
		var ok bool
		d, ok, err = ch.Get(queue, true)
		if err != nil {
			ch = nil // a get from a missing queue closes the channel
		}
		return err == nil && ok
	})
	return d
}

func queueLen(t *testing.T, ch *amqp.Channel, queue string) int {
	t.Helper()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("inspect queue %s: %v", queue, err)
	}
	return q.Messages
}

// A published message reaches the handler decoded, persistent and durable.
func TestPublishConsume(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r := route(t, "jobs")
	got := make(chan job, 1)
	q := worker.NewQueue(conn)
	q.Handle(r, worker.Job(func(_ context.Context, j job) error {
		got <- j
		return nil
	}))
	start(t, q)
	c := client(t, conn)
	ctx := within(t, 10*time.Second)
	if err := c.Publish(ctx, r, job{ID: "a1", Count: 3}); err != nil {
		t.Fatal(err)
	}
	select {
	case j := <-got:
		if j != (job{ID: "a1", Count: 3}) {
			t.Fatalf("handler got %+v", j)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler not called in 10s")
	}
	ch := raw(t)
	qi, err := ch.QueueDeclarePassive(r, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("queue %s is not durable: %v", r, err)
	}
	_ = qi
}

// A failing handler is retried with backoff; one that keeps failing is
// dead-lettered with the last error, attempt count and route in headers and
// the original body; nothing stays in the queue.
func TestRetryThenDeadLetter(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	flaky, broken := route(t, "flaky"), route(t, "broken")
	var flakyRuns, brokenRuns atomic.Int32
	var gaps []time.Duration
	last := time.Time{}
	q := worker.NewQueue(conn, worker.WithRetry(worker.Retry{Attempts: 3, Backoff: 50 * time.Millisecond}))
	q.Handle(flaky, worker.Job(func(_ context.Context, j job) error {
		if flakyRuns.Add(1) < 3 {
			return errors.New("database is restarting")
		}
		return nil
	}))
	q.Handle(broken, worker.Job(func(_ context.Context, j job) error {
		now := time.Now()
		if !last.IsZero() {
			gaps = append(gaps, now.Sub(last))
		}
		last = now
		brokenRuns.Add(1)
		return worker.Errorf("Conflict", "item %s: attempt failed", j.ID)
	}))
	start(t, q)
	c := client(t, conn)
	ctx := within(t, 10*time.Second)
	if err := c.Publish(ctx, flaky, job{ID: "f"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, broken, job{ID: "b"}); err != nil {
		t.Fatal(err)
	}
	ch := raw(t)
	d := getOne(t, ch, broken+worker.DeadLetterSuffix)
	// The body as it came: the client's default encoding gzips it.
	if body := gunzipped(t, d.Body); string(body) != `{"data":{"id":"b","count":0}}` || d.ContentType != worker.ContentGzip {
		t.Errorf("dead letter body = %s (%s)", body, d.ContentType)
	}
	h := d.Headers
	if h[worker.HeaderError] != "item b: attempt failed" || h[worker.HeaderErrorType] != "Conflict" ||
		h[worker.HeaderAttempts] != int32(3) || h[worker.HeaderRoute] != broken {
		t.Errorf("dead letter headers = %v", h)
	}
	if d.DeliveryMode != amqp.Persistent {
		t.Errorf("dead letter delivery mode %d, want persistent", d.DeliveryMode)
	}
	if n := brokenRuns.Load(); n != 3 {
		t.Errorf("broken handler ran %d times, want 3", n)
	}
	if len(gaps) != 2 || gaps[0] < 40*time.Millisecond || gaps[1] < 80*time.Millisecond {
		t.Errorf("retry gaps %v, want about 50ms then 100ms", gaps)
	}
	eventually(t, "flaky job succeeds on its third run", func() bool { return flakyRuns.Load() == 3 })
	eventually(t, "queues empty (acked)", func() bool {
		return queueLen(t, ch, flaky) == 0 && queueLen(t, ch, broken) == 0
	})
	if n := queueLen(t, ch, flaky+worker.DeadLetterSuffix); n != 0 {
		t.Errorf("flaky job dead-lettered (%d), though it succeeded", n)
	}
}

// Bad queue input is dead-lettered at once (no retries), with type
// BadRequest; the worker keeps consuming.
func TestQueueBadInputDeadLettered(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r := route(t, "qbad")
	var runs atomic.Int32
	q := worker.NewQueue(conn)
	q.Handle(r, worker.Job(func(_ context.Context, j job) error {
		runs.Add(1)
		return nil
	}))
	start(t, q)
	ch := raw(t)
	bodies := [][]byte{
		[]byte(`not json`),
		[]byte(`{"data": {"id": 7}}`), // wrong shape
		[]byte("{\"data\": \"\xff\xfe\"}"),
		[]byte(`{"nodata": 1}`),
	}
	for _, b := range bodies {
		if err := ch.PublishWithContext(context.Background(), "", r, false, false, amqp.Publishing{Body: b, DeliveryMode: amqp.Persistent}); err != nil {
			t.Fatal(err)
		}
	}
	for range bodies {
		d := getOne(t, ch, r+worker.DeadLetterSuffix)
		if d.Headers[worker.HeaderErrorType] != worker.TypeBadRequest {
			t.Errorf("dead letter of %q: headers %v", d.Body, d.Headers)
		}
		if a := d.Headers[worker.HeaderAttempts]; a != int32(0) && a != int32(1) {
			t.Errorf("dead letter of %q retried: attempts %v", d.Body, a)
		}
	}
	c := client(t, conn)
	if err := c.Publish(context.Background(), r, job{ID: "good"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "good message handled after bad ones", func() bool { return runs.Load() == 1 })
}

// Bad RPC input of every kind gets a BadRequest reply naming the problem,
// and the worker keeps answering.
func TestBadInputMatrix(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r := route(t, "bad")
	rpc := worker.NewRPC(conn, worker.WithMaxBodySize(1<<20))
	rpc.Handle(r, worker.Func(hello))
	start(t, rpc)

	gz := func(b []byte) []byte {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		_, _ = zw.Write(b)
		_ = zw.Close()
		return buf.Bytes()
	}
	bomb := gz(append(append([]byte(`{"data":"`), bytes.Repeat([]byte("a"), 8<<20)...), `"}`...))
	deep := strings.Repeat("[", 10000) + strings.Repeat("]", 10000)
	cases := []struct {
		name, encoding string
		body           []byte
		want           string
	}{
		{"not json", "", []byte("hello there"), "not JSON"},
		{"truncated json", "", []byte(`{"data": {"name": `), "not JSON"},
		{"wrong shape", "", []byte(`{"data": {"name": 42}}`), "data.name is a JSON number"},
		{"invalid utf-8", "", []byte("{\"data\": {\"name\": \"\xc3\x28\"}}"), "not valid UTF-8"},
		{"unknown encoding", "br", []byte(`{"data": {}}`), `unknown content encoding "br"`},
		{"missing data", "", []byte(`{"name": "x"}`), `no "data" member`},
		{"not an object", "", []byte(`[1,2]`), "not an object"},
		{"empty", "", nil, "empty"},
		{"gzip bomb", "", bomb, "over the limit"},
		{"corrupt gzip", "", []byte{0x1f, 0x8b, 1, 2, 3}, "gzip"},
		{"too deep", "", []byte(`{"data":` + deep + `}`), "nested more than"},
		{"too big", "", append(append([]byte(`{"data":"`), bytes.Repeat([]byte("b"), 2<<20)...), `"}`...), "over the limit"},
	}
	ch := raw(t)
	replyTo, replies := replyQueue(t, ch)
	c := client(t, conn)
	for i, tc := range cases {
		id := fmt.Sprint(i)
		err := ch.PublishWithContext(context.Background(), "", r, false, false, amqp.Publishing{
			ContentEncoding: tc.encoding, ReplyTo: replyTo, CorrelationId: id, Body: tc.body,
		})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case d := <-replies:
			body := d.Body
			if bytes.HasPrefix(body, []byte{0x1f, 0x8b}) {
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				var out bytes.Buffer
				_, _ = out.ReadFrom(zr)
				body = out.Bytes()
			}
			var rep struct {
				Success bool
				Error   struct{ Type, Message string }
			}
			_ = json.Unmarshal(body, &rep)
			if d.CorrelationId != id || rep.Success || rep.Error.Type != worker.TypeBadRequest || !strings.Contains(rep.Error.Message, tc.want) {
				t.Errorf("%s: reply %s (correlation %q), want BadRequest mentioning %q", tc.name, body, d.CorrelationId, tc.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no reply in 10s", tc.name)
		}
		// The worker still answers good requests.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var a answer
		if err := c.Call(ctx, r, greeting{Name: "ok"}, &a); err != nil || a.Text != "hello ok" {
			t.Fatalf("after %s: %+v, %v", tc.name, a, err)
		}
		cancel()
	}
}

// A 10 MB JSON body within the limit is handled, not crashed on.
func TestLargeBody(t *testing.T) {
	r, _ := serveRPC(t, "large", worker.Func(func(_ context.Context, s []string) (int, error) { return len(s), nil }))
	c := client(t, dial(t, ""))
	big := make([]string, 100_000)
	for i := range big {
		big[i] = strings.Repeat("x", 95)
	}
	ctx := within(t, 30*time.Second)
	var n int
	if err := c.Call(ctx, r, big, &n); err != nil || n != len(big) {
		t.Fatalf("10 MB call: %d, %v", n, err)
	}
}

// A dead letter that cannot be confirmed is neither dropped nor retried in
// a tight loop: a deleted dead-letter queue is declared again, and one that
// refuses messages makes the worker wait longer before each redelivery.
func TestDeadLetterQueueTrouble(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r := route(t, "dlq-trouble")
	dlq := r + worker.DeadLetterSuffix
	var runs atomic.Int32
	q := worker.NewQueue(conn, worker.WithRetry(worker.Retry{Attempts: 1}))
	q.Handle(r, worker.Job(func(_ context.Context, j job) error {
		runs.Add(1)
		return fmt.Errorf("job %s: %w", j.ID, worker.ErrBadRequest)
	}))
	start(t, q)
	ch := raw(t)
	publish := func(id string) {
		t.Helper()
		body := fmt.Appendf(nil, `{"data": {"id": %q}}`, id)
		if err := ch.PublishWithContext(context.Background(), "", r, false, false, amqp.Publishing{Body: body, DeliveryMode: amqp.Persistent}); err != nil {
			t.Fatal(err)
		}
	}

	// Deleted: the worker declares it again and the dead letter lands.
	if _, err := ch.QueueDelete(dlq, false, false, false); err != nil {
		t.Fatal(err)
	}
	publish("deleted")
	if d := getOneOnceDeclared(t, dlq); !strings.Contains(string(d.Body), "deleted") {
		t.Fatalf("dead letter %s, want the message with id deleted", d.Body)
	}

	// Refusing every message (nack): the message goes back to its queue a
	// few times in 3 s, not thousands, and lands once the queue accepts.
	if _, err := ch.QueueDelete(dlq, false, false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(dlq, true, false, false, false, amqp.Table{"x-max-length": int32(0), "x-overflow": "reject-publish"}); err != nil {
		t.Fatal(err)
	}
	runs.Store(0)
	publish("refused")
	time.Sleep(3 * time.Second)
	if n := runs.Load(); n < 1 || n > 10 {
		t.Fatalf("handler ran %d times in 3 s while the dead-letter queue refused messages, want a few (1 s, 2 s backoff)", n)
	}
	if _, err := ch.QueueDelete(dlq, false, false, false); err != nil {
		t.Fatal(err)
	}
	d := getOneOnceDeclared(t, dlq)
	if !strings.Contains(string(d.Body), "refused") || d.Headers[worker.HeaderRoute] != r {
		t.Fatalf("dead letter %s %v, want the message with id refused", d.Body, d.Headers)
	}
}
