package stack

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/worker"
)

// The load and the counting of the fault tests (test/faults, test/cluster):
// example-item.store messages tagged so that what was stored, lost or
// stored twice can be counted afterwards.

// PublishTagged publishes n example-item.store messages with the strings
// tag-0 ... tag-(n-1) from workers goroutines, each waiting for the broker's
// confirm, and runs fault once (in the background) after the after-th
// confirm. A message the broker nacks (not taken: a quorum queue without
// a leader) is published again, as a producer would, and the count of
// those is logged. It returns how many were confirmed, once fault has
// returned too.
func PublishTagged(t testing.TB, client *worker.Client, tag string, n, workers, after int, fault func()) (confirmed int) {
	t.Helper()
	return PublishTaggedTo(t, client, "example-item.store", tag, n, workers, after, fault)
}

// PublishTaggedTo is PublishTagged to another route taking the same
// messages (example-item.store-once, the idempotent one).
func PublishTaggedTo(t testing.TB, client *worker.Client, route, tag string, n, workers, after int, fault func()) (confirmed int) {
	t.Helper()
	var next, ok, nacked atomic.Int64
	var once sync.Once
	var wg, faultWG sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				var err error
				for {
					err = client.Publish(ctx, route, map[string]any{"string": fmt.Sprintf("%s-%d", tag, i), "integer": 1})
					if !errors.Is(err, worker.ErrNacked) || ctx.Err() != nil {
						break
					}
					// Not taken (a quorum queue electing a leader): a
					// producer publishes it again.
					nacked.Add(1)
					time.Sleep(100 * time.Millisecond)
				}
				cancel()
				if err != nil {
					t.Errorf("publish %s-%d: %v", tag, i, err)
					continue
				}
				if ok.Add(1) == int64(after) && fault != nil {
					once.Do(func() { faultWG.Go(fault) })
				}
			}
		})
	}
	wg.Wait()
	faultWG.Wait()
	if nacked.Load() > 0 {
		t.Logf("the broker nacked %d publishes to %s (not taken), and they were published again", nacked.Load(), route)
	}
	return int(ok.Load())
}

// StoredCounts returns how many example items have a string starting with
// tag, and how many distinct strings among them; it retries for 10 s while
// PostgreSQL is unreachable (it may be restarting).
func StoredCounts(t testing.TB, db *sql.DB, tag string) (rows, distinct int) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		err := db.QueryRowContext(context.Background(),
			`SELECT count(*), count(DISTINCT "string") FROM example_item WHERE starts_with("string", $1)`, tag).
			Scan(&rows, &distinct)
		if err == nil {
			return rows, distinct
		}
		if attempt == 50 {
			t.Fatalf("count stored items: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// WaitStored waits until want distinct items with tag are stored, or until
// nothing new arrived for quiet; it returns the last counts.
func WaitStored(t testing.TB, db *sql.DB, tag string, want int, quiet time.Duration) (rows, distinct int) {
	t.Helper()
	last, lastChange := -1, time.Now()
	for {
		rows, distinct = StoredCounts(t, db, tag)
		if distinct >= want {
			return rows, distinct
		}
		if rows != last {
			last, lastChange = rows, time.Now()
		}
		if time.Since(lastChange) > quiet {
			return rows, distinct
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// DeadLetters takes every message off queue's dead-letter queue and returns
// the distinct bodies among them, each with its x-error header.
func DeadLetters(t testing.TB, ch *amqp.Channel, queue string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for {
		d, ok, err := ch.Get(queue+worker.DeadLetterSuffix, true)
		if err != nil {
			t.Fatalf("read %s%s: %v", queue, worker.DeadLetterSuffix, err)
		}
		if !ok {
			return out
		}
		out[string(d.Body)] = fmt.Sprint(d.Headers[worker.HeaderError])
	}
}
