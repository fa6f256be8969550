package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"example.com/service/src/worker"
)

// brokerRoute is route for a route with broker-held retries: its retry
// queues are deleted at cleanup too.
func brokerRoute(tb testing.TB, prefix string, r worker.Retry) string {
	tb.Helper()
	name := route(tb, prefix)
	tb.Cleanup(func() {
		var queues []string
		for _, d := range worker.RetryDelays(r) {
			queues = append(queues, worker.RetryQueue(name, d))
		}
		deleteQueues(tb, queues...)
	})
	return name
}

// With Retry.InBroker a failing message waits 0.2, 0.4, 0.8, 1.6 and 3.2 s
// in the broker between its six runs, then is dead-lettered with its last
// error; meanwhile, with a prefetch of one (the worker holds one message at
// a time), the route's other messages flow: all of them are handled long
// before the failing one is dead-lettered. With the worker holding the
// waits, the same prefetch would block them for 6 s.
func TestDelayedRetry(t *testing.T) {
	requireBroker(t)
	policy := worker.Retry{Attempts: 6, Backoff: 200 * time.Millisecond, MaxBackoff: 5 * time.Second, InBroker: true}
	delays := worker.RetryDelays(policy)
	if want := []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond}; !slices.Equal(delays, want) {
		t.Fatalf("RetryDelays = %v, want %v", delays, want)
	}
	conn := dial(t, "")
	r := brokerRoute(t, "delayed", policy)
	var mu sync.Mutex
	var failing []time.Time // runs of the failing message
	var attempts []int      // their Request.Attempt
	goodDone := map[int]time.Time{}
	q := worker.NewQueue(conn, worker.WithRetry(policy), worker.WithPrefetch(1))
	q.HandleFunc(r, func(ctx context.Context, req *worker.Request) ([]byte, error) {
		var j job
		if err := json.Unmarshal(req.Data, &j); err != nil {
			return nil, err
		}
		mu.Lock()
		defer mu.Unlock()
		if j.ID == "bad" {
			failing = append(failing, time.Now())
			attempts = append(attempts, req.Attempt)
			return nil, fmt.Errorf("item %s: the payment service is down", j.ID)
		}
		goodDone[j.Count] = time.Now()
		return nil, nil
	})
	start(t, q)
	c := client(t, conn)
	ctx := within(t, 30*time.Second)
	if err := c.Publish(ctx, r, job{ID: "bad"}); err != nil {
		t.Fatal(err)
	}
	// The others go out while the failing one waits its first delays.
	const n = 100
	for i := range n {
		go func() {
			if err := c.Publish(ctx, r, job{ID: "good", Count: i}); err != nil {
				t.Error(err)
			}
		}()
	}
	dl := getOneOnceDeclared(t, r+worker.DeadLetterSuffix)
	dead := time.Now()
	mu.Lock()
	defer mu.Unlock()
	if len(failing) != 6 {
		t.Fatalf("the failing message ran %d times, want 6", len(failing))
	}
	if !slices.Equal(attempts, []int{1, 2, 3, 4, 5, 6}) {
		t.Errorf("Request.Attempt of its runs = %v, want 1..6", attempts)
	}
	for i, d := range delays {
		gap := failing[i+1].Sub(failing[i])
		t.Logf("wait %d: %v (delay %v)", i+1, gap.Round(time.Millisecond), d)
		if gap < d {
			t.Errorf("run %d came %v after run %d, before its delay of %v", i+2, gap, i+1, d)
		}
	}
	if len(goodDone) != n {
		t.Fatalf("%d of %d other messages handled by the time the failing one was dead-lettered", len(goodDone), n)
	}
	var last time.Time
	for _, at := range goodDone {
		if at.After(last) {
			last = at
		}
	}
	t.Logf("the %d others were all handled %v after the failing message's first run, %v before its dead letter",
		n, last.Sub(failing[0]).Round(time.Millisecond), dead.Sub(last).Round(time.Millisecond))
	if !last.Before(failing[5]) {
		t.Errorf("the last other message was handled at %v, after the failing one's last run", last.Sub(failing[0]))
	}
	if dl.Headers[worker.HeaderAttempts] != int32(6) || dl.Headers[worker.HeaderRoute] != r {
		t.Errorf("dead letter headers %v, want %s 6 and %s %s", dl.Headers, worker.HeaderAttempts, worker.HeaderRoute, r)
	}
	if dl.Headers[worker.HeaderError] == nil {
		t.Errorf("dead letter has no %s: %v", worker.HeaderError, dl.Headers)
	}
	ch := raw(t)
	for _, d := range delays {
		if got := queueLen(t, ch, worker.RetryQueue(r, d)); got != 0 {
			t.Errorf("retry queue %s holds %d messages after the dead letter", worker.RetryQueue(r, d), got)
		}
	}
	if got := queueLen(t, ch, r); got != 0 {
		t.Errorf("route queue holds %d messages", got)
	}
}

// A BadRequest is not retried through the broker either: it is
// dead-lettered at its first run.
func TestDelayedRetryBadRequest(t *testing.T) {
	requireBroker(t)
	policy := worker.Retry{InBroker: true, Backoff: 50 * time.Millisecond}
	conn := dial(t, "")
	r := brokerRoute(t, "delayed-bad", policy)
	var mu sync.Mutex
	runs := 0
	q := worker.NewQueue(conn, worker.WithRetry(policy))
	q.Handle(r, worker.Job(func(ctx context.Context, j job) error {
		mu.Lock()
		runs++
		mu.Unlock()
		return worker.Errorf(worker.TypeBadRequest, "item %s: no such customer", j.ID)
	}))
	start(t, q)
	if err := client(t, conn).Publish(context.Background(), r, job{ID: "x"}); err != nil {
		t.Fatal(err)
	}
	dl := getOneOnceDeclared(t, r+worker.DeadLetterSuffix)
	mu.Lock()
	defer mu.Unlock()
	if runs != 1 || dl.Headers[worker.HeaderAttempts] != int32(1) {
		t.Fatalf("%d runs, dead letter x-attempts %v: want 1 and 1", runs, dl.Headers[worker.HeaderAttempts])
	}
}

// On classic queues (WithQueueType) the retry queues are classic too, and
// a message that fails twice then succeeds runs three times, waiting at
// least 50 and 100 ms in the broker, and is not dead-lettered.
func TestDelayedRetryClassic(t *testing.T) {
	requireBroker(t)
	policy := worker.Retry{InBroker: true, Attempts: 4, Backoff: 50 * time.Millisecond}
	conn := dial(t, "")
	r := brokerRoute(t, "delayed-classic", policy)
	var mu sync.Mutex
	var runs []time.Time
	q := worker.NewQueue(conn, worker.WithRetry(policy), worker.WithQueueType(worker.Classic))
	q.Handle(r, worker.Job(func(context.Context, job) error {
		mu.Lock()
		defer mu.Unlock()
		runs = append(runs, time.Now())
		if len(runs) < 3 {
			return fmt.Errorf("run %d: the mail server refused the connection", len(runs))
		}
		return nil
	}))
	start(t, q)
	if err := client(t, conn).Publish(context.Background(), r, job{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	settled(t, "runs", 3, func() int { mu.Lock(); defer mu.Unlock(); return len(runs) })
	mu.Lock()
	defer mu.Unlock()
	for i, d := range []time.Duration{50 * time.Millisecond, 100 * time.Millisecond} {
		if gap := runs[i+1].Sub(runs[i]); gap < d {
			t.Errorf("run %d came %v after run %d, before its delay of %v", i+2, gap, i+1, d)
		}
	}
	ch := raw(t)
	if got := queueLen(t, ch, r+worker.DeadLetterSuffix); got != 0 {
		t.Errorf("%d dead letters, want 0", got)
	}
	if got := queueLen(t, ch, worker.RetryQueue(r, 50*time.Millisecond)); got != 0 {
		t.Errorf("retry queue holds %d, want 0", got)
	}
}
