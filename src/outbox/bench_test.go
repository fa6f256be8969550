package outbox_test

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"example.com/service/src/db"
	"example.com/service/src/outbox"
	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// BenchmarkQueueRoute: messages through a queue route whose handler
// stores one row, published by 16 goroutines and timed until the last is
// stored. plain writes the row on the pool; idempotent runs behind the
// inbox, which adds a transaction and an inbox row per message. Compare
// the two msg/s figures of one run:
//
//	go test -run '^$' -bench BenchmarkQueueRoute -benchtime 5000x ./src/outbox/
func BenchmarkQueueRoute(b *testing.B) {
	_, c, conn := setUp(b, "outbox-bench-", `CREATE TABLE effect (n int NOT NULL)`)
	client := worker.NewClient(conn)
	b.Cleanup(func() { _ = client.Close() })
	inbox := outbox.NewInbox(c, outbox.InboxConfig{})

	for _, idempotent := range []bool{false, true} {
		name := "plain"
		if idempotent {
			name = "idempotent"
		}
		b.Run(name, func(b *testing.B) {
			route := testenv.Name("outbox-bench-" + name + "-")
			b.Cleanup(func() { _ = testenv.DeleteQueues(route, route+worker.DeadLetterSuffix) })
			var stored atomic.Int64
			all := make(chan struct{})
			total := int64(b.N)
			store := func(ctx context.Context, n int) error {
				var err error
				if tx, ok := db.TxFrom(ctx); ok {
					_, err = tx.Exec(ctx, `INSERT INTO effect (n) VALUES ($1)`, n)
				} else {
					_, err = c.Exec(ctx, `INSERT INTO effect (n) VALUES ($1)`, n)
				}
				if err == nil && stored.Add(1) == total {
					close(all)
				}
				return err
			}
			q := worker.NewQueue(conn)
			var mws []worker.Middleware
			if idempotent {
				mws = append(mws, inbox.Idempotent())
			}
			q.Handle(route, worker.Job(store), mws...)
			ctx := context.Background()
			if err := q.Start(ctx); err != nil {
				b.Fatal(err)
			}
			defer func() { _ = q.Shutdown(context.Background()) }()

			b.ResetTimer()
			start := time.Now()
			var next atomic.Int64
			var wg sync.WaitGroup
			for range 16 {
				wg.Go(func() {
					for i := next.Add(1); i <= total; i = next.Add(1) {
						if err := client.Publish(ctx, route, json.RawMessage(itoa(i))); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			select {
			case <-all:
			case <-time.After(5 * time.Minute):
				b.Fatalf("%d of %d messages stored after 5 minutes", stored.Load(), total)
			}
			b.ReportMetric(float64(total)/time.Since(start).Seconds(), "msg/s")
		})
	}
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
