package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
	"example.com/service/test/stack"
)

// Events between services: the running service announces each item it
// creates (example-item.create records item.created through the outbox, in
// the insert's transaction); two other services subscribe to item.* with
// two replicas each. Every item created reaches each subscribing service
// exactly once, shared between its replicas.
func TestEventsAcrossServices(t *testing.T) {
	env := stack.NewEnv(t, bins)
	stack.Start(t, bins, env)

	const n = 200
	type seen struct {
		mu     sync.Mutex
		count  map[string]int // item id → deliveries
		byCopy map[string]int // replica → deliveries
		other  int            // events that are not item.created
	}
	subscribers := map[string]*seen{}
	for _, service := range []string{"billing", "search"} {
		got := &seen{count: map[string]int{}, byCopy: map[string]int{}}
		subscribers[service] = got
		for replica := range 2 {
			name := fmt.Sprintf("%s-%d", service, replica+1)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			conn, err := worker.Dial(ctx, env.Broker(), worker.WithName("e2e subscriber "+name))
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			ev := worker.NewEvents(conn, service)
			ev.Handle("item.*", worker.HandlerFunc(func(_ context.Context, req *worker.Request) ([]byte, error) {
				var item struct {
					ID string `json:"_id"`
				}
				if err := json.Unmarshal(req.Data, &item); err != nil || item.ID == "" {
					return nil, fmt.Errorf("%s: event %s without an item id: %s: %w", name, req.Event, req.Data, worker.ErrBadRequest)
				}
				got.mu.Lock()
				defer got.mu.Unlock()
				if req.Event != "item.created" {
					got.other++
				}
				got.count[item.ID]++
				got.byCopy[name]++
				return nil, nil
			}))
			if err := ev.Start(context.Background()); err != nil {
				t.Fatalf("subscriber %s: %v", name, err)
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = ev.Shutdown(ctx)
				_ = conn.Close()
			})
		}
	}

	client := env.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ids := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			var item struct {
				ID string `json:"_id"`
			}
			if err := client.Call(ctx, "example-item.create", map[string]any{"string": testenv.Name(fmt.Sprint("event ", i, " ")), "integer": i}, &item); err != nil {
				errs <- err
				return
			}
			mu.Lock()
			ids[item.ID] = true
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("example-item.create: %v", err)
	}
	for service, got := range subscribers {
		deadline := time.Now().Add(30 * time.Second)
		for {
			got.mu.Lock()
			have := len(got.count)
			got.mu.Unlock()
			if have >= n || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond) // a late duplicate would land by now
		got.mu.Lock()
		var twice, unknown int
		for id, c := range got.count {
			if c > 1 {
				twice++
			}
			if !ids[id] {
				unknown++
			}
		}
		t.Logf("%s: %d of %d items announced, split %v between its replicas", service, len(got.count), n, got.byCopy)
		if len(got.count) != n || twice != 0 || unknown != 0 || got.other != 0 {
			t.Errorf("%s received %d of %d created items (%d more than once, %d not created, %d other events), want each exactly once",
				service, len(got.count), n, twice, unknown, got.other)
		}
		if len(got.byCopy) != 2 {
			t.Errorf("%s: only %v of its 2 replicas received events, want both to share them", service, got.byCopy)
		}
		got.mu.Unlock()
	}
}
