package worker_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// A message that failed is dead-lettered; List counts it and Show reads its
// error from the headers without taking it; once the fault is fixed Replay
// moves it back to its route, where it is handled (stored) exactly once,
// and the dead-letter queue is empty.
func TestDeadLettersReplay(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r := route(t, "replay")
	var broken atomic.Bool
	broken.Store(true)
	var stored counter
	q := worker.NewQueue(conn, worker.WithRetry(worker.Retry{Attempts: 2, Backoff: 10 * time.Millisecond}))
	q.Handle(r, worker.Job(storeWhenUp(&broken, errors.New("insert item: relation \"item\" does not exist"), &stored,
		func(j job) string { return j.ID })))
	start(t, q)
	c := client(t, conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, id := range []string{"a", "b", "c"} {
		if err := c.Publish(ctx, r, job{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	dl := worker.NewDeadLetters(dial(t, ""))
	missing := testenv.Name("wt-never-started-")
	eventually(t, "3 dead letters", func() bool {
		counts, err := dl.List(ctx, r, missing)
		if err != nil {
			t.Fatal(err)
		}
		if !counts[1].Missing {
			t.Fatalf("List of a route that never started: %+v, want Missing", counts[1])
		}
		return counts[0].Messages == 3
	})
	letters, total, err := dl.Show(ctx, r, 2)
	if err != nil {
		t.Fatal(err)
	}
	if total != 3 || len(letters) != 2 {
		t.Fatalf("Show: %d letters of %d, want 2 of 3", len(letters), total)
	}
	for _, l := range letters {
		if l.Route != r || l.Attempts != 2 || l.ErrorType != worker.TypeError || l.ErrorID == "" || l.MessageID == "" {
			t.Errorf("Show read %+v, want route %s, 2 attempts, type Error, an error id and message id", l, r)
		}
	}
	// Show gave them back.
	if counts, _ := dl.List(ctx, r); counts[0].Messages != 3 {
		t.Fatalf("after Show the dead-letter queue holds %d, want 3", counts[0].Messages)
	}

	broken.Store(false) // the fault is fixed
	n, err := dl.Replay(ctx, r, 2)
	if err != nil || n != 2 {
		t.Fatalf("Replay(limit 2) = %d, %v; want 2", n, err)
	}
	n, err = dl.Replay(ctx, r, 0)
	if err != nil || n != 1 {
		t.Fatalf("Replay(all) = %d, %v; want the 1 left", n, err)
	}
	settled(t, "replayed messages stored", 3, stored.len)
	for _, id := range []string{"a", "b", "c"} {
		if got := stored.get(id); got != 1 {
			t.Errorf("message %s stored %d times, want once", id, got)
		}
	}
	if counts, _ := dl.List(ctx, r); counts[0].Messages != 0 {
		t.Errorf("after Replay the dead-letter queue holds %d, want 0", counts[0].Messages)
	}
}

// Replay(all) of letters that fail again moves each once: it stops at the
// first letter it already moved, which is a dead letter again, as are the
// others.
func TestDeadLettersReplayFailingAgain(t *testing.T) {
	var mu sync.Mutex
	tries := map[int]int{}
	dl, r, _ := deadLettering(t, "replay-again", func(_ context.Context, j job) error {
		mu.Lock()
		tries[j.Count]++
		mu.Unlock()
		return errors.New("still down")
	})
	c := client(t, dial(t, ""))
	ctx := context.Background()
	const n = 20
	for i := range n {
		if err := c.Publish(ctx, r, job{ID: "m", Count: i}); err != nil {
			t.Fatal(err)
		}
	}
	waitDeadLetters(t, dl, r, n)
	moved, err := dl.Replay(ctx, r, 0)
	if err != nil || moved != n {
		t.Fatalf("Replay(all) of letters that fail again = %d, %v; want each of the %d moved once", moved, err, n)
	}
	waitDeadLetters(t, dl, r, n) // back again
	mu.Lock()
	defer mu.Unlock()
	for i := range n {
		if tries[i] != 2 {
			t.Errorf("message %d handled %d times, want 2 (once, then once replayed)", i, tries[i])
		}
	}
}

// Replaying to a route whose queue is gone stops with ErrNoRoute and keeps
// the dead letter.
func TestDeadLettersReplayNoQueue(t *testing.T) {
	dl, r, q := deadLettering(t, "replay-gone", func(context.Context, job) error { return errors.New("down") })
	ctx := context.Background()
	if err := client(t, dial(t, "")).Publish(ctx, r, job{ID: "x"}); err != nil {
		t.Fatal(err)
	}
	waitDeadLetters(t, dl, r, 1)
	shutCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := q.Shutdown(shutCtx); err != nil {
		t.Fatal(err)
	}
	deleteQueues(t, r)
	n, err := dl.Replay(ctx, r, 0)
	if n != 0 || !errors.Is(err, worker.ErrNoRoute) || !strings.Contains(err.Error(), "stays a dead letter") {
		t.Fatalf("Replay to a deleted queue = %d, %v; want 0 and ErrNoRoute", n, err)
	}
	if counts, _ := dl.List(ctx, r); counts[0].Messages != 1 {
		t.Fatalf("after the refused replay the dead-letter queue holds %d, want 1", counts[0].Messages)
	}
}

// Replay cut off by its connection closing mid-way (as when the process is
// killed) loses nothing: every message is afterwards either handled or
// still a dead letter, and a second Replay finishes the job. At most the
// one message in flight at the cut (republished, its dead letter not yet
// acked) is handled twice.
func TestDeadLettersReplayInterrupted(t *testing.T) {
	var broken atomic.Bool
	broken.Store(true)
	var stored counter
	dl, r, _ := deadLettering(t, "replay-cut", storeWhenUp(&broken, errors.New("down"), &stored,
		func(j job) string { return strconv.Itoa(j.Count) }))
	c := client(t, dial(t, ""))
	ctx := context.Background()
	const n = 300
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := c.Publish(ctx, r, job{ID: "m", Count: i}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	waitDeadLetters(t, dl, r, n)
	broken.Store(false)

	cut := dial(t, "")
	go func() {
		for {
			if stored.len() >= 30 {
				_ = cut.Close() // the replaying process dies
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	moved, err := worker.NewDeadLetters(cut).Replay(ctx, r, 0)
	if err == nil || moved == n {
		t.Fatalf("the cut Replay moved %d and returned %v; want it cut short", moved, err)
	}
	t.Logf("cut after %d moved: %v", moved, err)
	// Nothing lost: each message handled or still a dead letter.
	eventually(t, "every message handled or a dead letter", func() bool {
		counts, err := dl.List(ctx, r)
		return err == nil && stored.len()+counts[0].Messages >= n
	})
	rest, err := dl.Replay(ctx, r, 0)
	if err != nil {
		t.Fatal(err)
	}
	settled(t, "messages handled", n, stored.len)
	twice := 0
	for i := range n {
		switch stored.get(strconv.Itoa(i)) {
		case 0:
			t.Errorf("message %d lost", i)
		case 1:
		default:
			twice++
		}
	}
	t.Logf("first replay moved %d before the cut, the second %d; %d handled twice", moved, rest, twice)
	if twice > 1 {
		t.Errorf("%d messages handled twice; at most the one in flight at the cut may be", twice)
	}
	if counts, _ := dl.List(ctx, r); counts[0].Messages != 0 {
		t.Errorf("dead-letter queue holds %d after the second replay", counts[0].Messages)
	}
}

// deadLettering starts a queue worker on a new route (named after prefix)
// that runs handle once per message, without retries, so a failure
// dead-letters the message at once. It returns the dead letters' API on a
// connection of their own, the route and the worker.
func deadLettering(t *testing.T, prefix string, handle func(context.Context, job) error) (*worker.DeadLetters, string, *worker.Queue) {
	t.Helper()
	requireBroker(t)
	r := route(t, prefix)
	q := worker.NewQueue(dial(t, ""), worker.WithRetry(worker.Retry{Attempts: 1}))
	q.Handle(r, worker.Job(handle))
	start(t, q)
	return worker.NewDeadLetters(dial(t, "")), r, q
}

// waitDeadLetters waits until route r's dead-letter queue holds n messages.
func waitDeadLetters(t *testing.T, dl *worker.DeadLetters, r string, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d dead letters on %s", n, r), func() bool {
		counts, err := dl.List(context.Background(), r)
		return err == nil && counts[0].Messages == n
	})
}
