package worker_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/worker"
)

type greeting struct {
	Name string `json:"name"`
}

type answer struct {
	Text string `json:"text"`
	N    int    `json:"n"`
}

func hello(_ context.Context, g greeting) (answer, error) {
	if g.Name == "nobody" {
		return answer{}, worker.Errorf("NotFound", "no person named %q", g.Name)
	}
	return answer{Text: "hello " + g.Name, N: len(g.Name)}, nil
}

// Typed round trip through a real broker: request decoded into the handler's
// type, result decoded into the caller's.
func TestCallRoundTrip(t *testing.T) {
	r, _ := serveRPC(t, "hello", worker.Func(hello))
	c := client(t, dial(t, ""))

	ctx := within(t, 10*time.Second)
	var got answer
	if err := c.Call(ctx, r, greeting{Name: "ada"}, &got); err != nil {
		t.Fatal(err)
	}
	if got != (answer{Text: "hello ada", N: 3}) {
		t.Fatalf("reply = %+v", got)
	}

	// A typed handler error comes back as a *RemoteError with its type.
	err := c.Call(ctx, r, greeting{Name: "nobody"}, &got)
	var re *worker.RemoteError
	if !errors.As(err, &re) || re.Type != "NotFound" || re.Message != `no person named "nobody"` || re.Trace != "" {
		t.Fatalf("err = %#v, want RemoteError NotFound without trace", err)
	}
	// A wrongly shaped request is a BadRequest naming the field.
	err = c.Call(ctx, r, map[string]int{"name": 5}, &got)
	if !errors.Is(err, worker.ErrBadRequest) || !strings.Contains(err.Error(), "data.name") {
		t.Fatalf("err = %v, want BadRequest naming data.name", err)
	}
}

// The seed's clients send gzip JSON as application/octet-stream to their own
// exclusive reply queue; the worker answers there, gzip-compressed.
func TestSeedClientGzipExclusiveReplyQueue(t *testing.T) {
	r, _ := serveRPC(t, "seed", worker.Func(hello))
	ch := raw(t)
	replyTo, replies := replyQueue(t, ch)
	var body bytes.Buffer
	zw := gzip.NewWriter(&body)
	_, _ = zw.Write([]byte(`{"data": {"name": "grace"}}`))
	_ = zw.Close()
	err := ch.PublishWithContext(context.Background(), "", r, false, false, amqp.Publishing{
		ContentType: "application/octet-stream", ReplyTo: replyTo, CorrelationId: "seed-1", Body: body.Bytes(),
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-replies:
		if d.CorrelationId != "seed-1" || d.ContentType != worker.ContentGzip {
			t.Fatalf("reply correlation %q content type %q", d.CorrelationId, d.ContentType)
		}
		zr, err := gzip.NewReader(bytes.NewReader(d.Body))
		if err != nil {
			t.Fatalf("reply is not gzip: %v", err)
		}
		plain, _ := io.ReadAll(zr)
		if string(plain) != `{"success":true,"data":{"text":"hello grace","n":5}}` {
			t.Fatalf("reply = %s", plain)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reply in 10s")
	}
}

// Two workers (two processes' worth: two connections) share a route: every
// request runs exactly once, and both take part.
func TestCompetingConsumers(t *testing.T) {
	requireBroker(t)
	r := route(t, "compete")
	var runs counter
	var mu sync.Mutex
	perWorker := map[string]int{}
	for _, name := range []string{"a", "b"} {
		rpc := worker.NewRPC(dial(t, ""), worker.WithPrefetch(2))
		rpc.Handle(r, worker.Func(func(_ context.Context, id string) (string, error) {
			runs.add(id)
			mu.Lock()
			perWorker[name]++
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			return name, nil
		}))
		start(t, rpc)
	}
	c := client(t, dial(t, ""))
	ctx := within(t, 30*time.Second)
	const n = 60
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			var who string
			if err := c.Call(ctx, r, fmt.Sprint("req-", i), &who); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range n {
		if got := runs.get(fmt.Sprint("req-", i)); got != 1 {
			t.Errorf("request %d ran %d times, want once", i, got)
		}
	}
	if perWorker["a"] == 0 || perWorker["b"] == 0 {
		t.Errorf("work split %v: one worker took nothing", perWorker)
	}
}

// Handlers run concurrently: 20 one-second calls take about one second.
func TestConcurrentCalls(t *testing.T) {
	r, _ := serveRPC(t, "slow", worker.Func(func(ctx context.Context, s string) (string, error) {
		time.Sleep(time.Second)
		return s + " that took forever", nil
	}))
	c := client(t, dial(t, ""))
	ctx := within(t, 30*time.Second)
	began := time.Now()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			var got string
			if err := c.Call(ctx, r, fmt.Sprint(i), &got); err != nil || got != fmt.Sprint(i, " that took forever") {
				t.Errorf("call %d: %q, %v", i, got, err)
			}
		})
	}
	wg.Wait()
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("20 concurrent 1s calls took %v, want < 3s", took)
	}
}

// A call to a route without a queue fails at once, not after its timeout;
// so does a publish to a missing queue.
func TestNoRoute(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	c := client(t, conn)
	ctx := within(t, 20*time.Second)
	began := time.Now()
	err := c.Call(ctx, "wt-no-such-route-x1", "hi", nil)
	if !errors.Is(err, worker.ErrNoRoute) {
		t.Fatalf("Call err = %v, want ErrNoRoute", err)
	}
	err = c.Publish(ctx, "wt-no-such-queue-x1", "hi")
	if !errors.Is(err, worker.ErrNoRoute) {
		t.Fatalf("Publish err = %v, want ErrNoRoute", err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Fatalf("no-route failures took %v; they should not wait for the timeout", took)
	}
	// The client still works afterwards.
	r := route(t, "after")
	rpc := worker.NewRPC(conn)
	rpc.Handle(r, worker.Func(hello))
	start(t, rpc)
	var got answer
	if err := c.Call(ctx, r, greeting{Name: "x"}, &got); err != nil || got.Text != "hello x" {
		t.Fatalf("call after no-route: %+v, %v", got, err)
	}
}

// A panic is recovered and answered like an error; the trace is only sent in
// development mode; the worker keeps serving.
func TestPanicRecovered(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	c := client(t, conn)
	ctx := within(t, 10*time.Second)
	for _, dev := range []bool{false, true} {
		r := route(t, "panic")
		rpc := worker.NewRPC(conn, worker.WithDevelopment(dev))
		rpc.Handle(r, worker.Func(func(_ context.Context, s string) (string, error) {
			if s == "boom" {
				panic("kaboom")
			}
			return s, nil
		}))
		start(t, rpc)
		err := c.Call(ctx, r, "boom", nil)
		var re *worker.RemoteError
		if !errors.As(err, &re) || re.Type != worker.TypeError || re.ID == "" {
			t.Fatalf("dev=%v: err = %#v", dev, err)
		}
		// In production the panic's value stays in the log; the reply
		// names the error id it is logged under.
		if dev != strings.Contains(re.Message, "kaboom") || !dev && !strings.Contains(re.Message, "error id "+re.ID) {
			t.Fatalf("dev=%v: message = %q", dev, re.Message)
		}
		if dev != (re.Trace != "") || dev != strings.Contains(re.Trace, "rpc_test.go") {
			t.Fatalf("dev=%v: trace = %q", dev, re.Trace)
		}
		var got string
		if err := c.Call(ctx, r, "ok", &got); err != nil || got != "ok" {
			t.Fatalf("dev=%v: call after panic: %q, %v", dev, got, err)
		}
	}
}

// The raw handler sees the JSON as sent and returns JSON as is.
func TestRawHandler(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r := route(t, "raw")
	rpc := worker.NewRPC(conn)
	rpc.HandleFunc(r, func(_ context.Context, req *worker.Request) ([]byte, error) {
		if req.Route != r || req.Attempt != 1 {
			return nil, fmt.Errorf("request route %q attempt %d", req.Route, req.Attempt)
		}
		return append([]byte(`{"echo":`), append(req.Data, '}')...), nil
	})
	start(t, rpc)
	c := client(t, conn)
	ctx := within(t, 10*time.Second)
	var got json.RawMessage
	if err := c.Call(ctx, r, json.RawMessage(`[1, "two"]`), &got); err != nil {
		t.Fatal(err)
	}
	if string(got) != `{"echo":[1,"two"]}` {
		t.Fatalf("reply data = %s", got)
	}
}

// A Call waiting for its reply when its Client is closed fails with
// ErrClosed, not ErrConnectionLost: nothing was lost, the caller closed it.
func TestCallCutByClose(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r := route(t, "cut")
	started, release := make(chan struct{}), make(chan struct{})
	rpc := worker.NewRPC(conn)
	rpc.Handle(r, worker.Func(func(_ context.Context, _ string) (string, error) {
		close(started)
		<-release
		return "late", nil
	}))
	start(t, rpc)
	defer close(release)
	c := worker.NewClient(conn)
	done := make(chan error, 1)
	go func() { done <- c.Call(context.Background(), r, "x", nil) }()
	<-started
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, worker.ErrClosed) {
		t.Fatalf("Call cut by Close = %v, want ErrClosed", err)
	}
}
