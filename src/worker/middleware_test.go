package worker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"example.com/service/src/worker"
)

// Middleware run in the order a reader expects: the worker's (Use) outside
// its retries, once per delivery; a route's (Handle) inside them, once per
// attempt; both see the failure of the handler.
func TestMiddlewareOrder(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	var mu sync.Mutex
	var trail []string
	note := func(name string) worker.Middleware {
		return func(next worker.Handler) worker.Handler {
			return worker.HandlerFunc(func(ctx context.Context, req *worker.Request) ([]byte, error) {
				mu.Lock()
				trail = append(trail, name+">")
				mu.Unlock()
				out, err := next.Serve(ctx, req)
				mu.Lock()
				trail = append(trail, "<"+name)
				mu.Unlock()
				return out, err
			})
		}
	}
	r := route(t, "mw")
	done := make(chan struct{})
	q := worker.NewQueue(conn, worker.WithRetry(worker.Retry{Attempts: 2, Backoff: time.Millisecond}))
	q.Use(note("use1"), note("use2"))
	attempts := 0
	q.Handle(r, worker.Job(func(context.Context, any) error {
		attempts++
		if attempts == 1 {
			return errors.New("first attempt fails")
		}
		close(done)
		return nil
	}), note("route"))
	start(t, q)
	if err := client(t, conn).Publish(context.Background(), r, "x"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the message was not handled")
	}
	eventually(t, "the middleware to return", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(trail) == 8
	})
	want := "use1> use2> route> <route route> <route <use2 <use1"
	if got := strings.Join(trail, " "); got != want {
		t.Errorf("middleware ran as\n  %s\nwant\n  %s", got, want)
	}
}
