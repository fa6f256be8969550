package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// eventExchange returns a unique event exchange name, deleted at cleanup
// with the subscription queues of services (and their dead-letter queues).
func eventExchange(tb testing.TB, patterns []string, services ...string) string {
	tb.Helper()
	name := testenv.Name("wt-events-")
	tb.Cleanup(func() {
		var queues []string
		for _, s := range services {
			for _, p := range patterns {
				q := worker.SubscriptionQueue(s, p)
				queues = append(queues, q, q+worker.DeadLetterSuffix)
			}
		}
		deleteQueues(tb, queues...)
		conn, err := amqp.Dial(testenv.BrokerURL())
		if err != nil {
			tb.Errorf("delete exchange %s: %v", name, err)
			return
		}
		defer conn.Close()
		if ch, err := conn.Channel(); err == nil {
			_ = ch.ExchangeDelete(name, false, false)
		}
	})
	return name
}

type itemEvent struct {
	ID int `json:"id"`
}

// Two services subscribe to item.* with two replicas each: every item event
// is handled once per service (never twice, never missed), the replicas of
// a service share the work, and an event the pattern does not match
// reaches no one.
func TestEventsOncePerService(t *testing.T) {
	requireBroker(t)
	billing, search := testenv.Name("billing-"), testenv.Name("search-")
	exchange := eventExchange(t, []string{"item.*"}, billing, search)

	type key struct {
		service string
		event   string
		id      int
	}
	var mu sync.Mutex
	seen := map[key]int{}          // handler runs per (service, event, id)
	perReplica := map[string]int{} // handler runs per replica
	total := 0
	for _, service := range []string{billing, search} {
		for replica := range 2 {
			name := fmt.Sprintf("%s/%d", service, replica)
			conn := dial(t, "")
			ev := worker.NewEvents(conn, service, worker.WithEventExchange(exchange), worker.WithPrefetch(10))
			ev.HandleFunc("item.*", func(ctx context.Context, req *worker.Request) ([]byte, error) {
				var e itemEvent
				if err := json.Unmarshal(req.Data, &e); err != nil {
					return nil, err
				}
				time.Sleep(time.Millisecond) // a little work, so both replicas get some
				mu.Lock()
				seen[key{service, req.Event, e.ID}]++
				perReplica[name]++
				total++
				mu.Unlock()
				return nil, nil
			})
			start(t, ev)
		}
	}
	c := worker.NewClient(dial(t, ""), worker.WithEventExchange(exchange))
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 300
	var wg sync.WaitGroup
	errs := make(chan error, 2*n+1)
	for i := range n {
		for _, name := range []string{"item.created", "item.deleted"} {
			wg.Go(func() { errs <- c.PublishEvent(ctx, name, itemEvent{ID: i}) })
		}
	}
	wg.Go(func() { errs <- c.PublishEvent(ctx, "order.created", itemEvent{ID: -1}) })
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	const want = 2 * 2 * n // two services, two events each
	settled(t, "handler runs", want, func() int { mu.Lock(); defer mu.Unlock(); return total })
	mu.Lock()
	defer mu.Unlock()
	for _, service := range []string{billing, search} {
		for _, event := range []string{"item.created", "item.deleted"} {
			for i := range n {
				if got := seen[key{service, event, i}]; got != 1 {
					t.Fatalf("service %s handled %s %d %d times, want once", service, event, i, got)
				}
			}
		}
		if got := seen[key{service, "order.created", -1}]; got != 0 {
			t.Errorf("service %s handled order.created, which item.* does not match", service)
		}
		for replica := range 2 {
			name := fmt.Sprintf("%s/%d", service, replica)
			if perReplica[name] == 0 {
				t.Errorf("replica %s handled no event: replicas do not share the subscription (%v)", name, perReplica)
			}
		}
	}
	t.Logf("per replica: %v", perReplica)
}

// An event name is checked before anything is sent; a subscription pattern
// when it is registered.
func TestEventNames(t *testing.T) {
	requireBroker(t)
	c := client(t, dial(t, ""))
	for _, bad := range []string{"", "item..created", "item.*", "item.#", ".item"} {
		err := c.PublishEvent(context.Background(), bad, nil)
		if err == nil || !strings.Contains(err.Error(), "publish event") {
			t.Errorf("PublishEvent(%q) = %v, want an error naming it", bad, err)
		}
	}
	ev := worker.NewEvents(dial(t, ""), "svc")
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "empty word") {
				t.Errorf("Handle(\"item..x\") panicked with %v, want an empty word", r)
			}
		}()
		ev.HandleFunc("item..x", func(context.Context, *worker.Request) ([]byte, error) { return nil, nil })
	}()
}

// A subscription retries through the broker like a queue route, and the
// retried run still knows its event: the copy carries the name the
// routing key gave the first run.
func TestEventsDelayedRetryKeepsTheEvent(t *testing.T) {
	requireBroker(t)
	service := testenv.Name("audit-")
	exchange := eventExchange(t, []string{"item.#"}, service)
	policy := worker.Retry{InBroker: true, Attempts: 3, Backoff: 50 * time.Millisecond}
	t.Cleanup(func() {
		var queues []string
		for _, d := range worker.RetryDelays(policy) {
			queues = append(queues, worker.RetryQueue(worker.SubscriptionQueue(service, "item.#"), d))
		}
		deleteQueues(t, queues...)
	})
	var mu sync.Mutex
	var runs []string // Request.Event and Attempt of each run
	ev := worker.NewEvents(dial(t, ""), service, worker.WithEventExchange(exchange), worker.WithRetry(policy))
	ev.HandleFunc("item.#", func(_ context.Context, req *worker.Request) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		runs = append(runs, fmt.Sprintf("%s/%d", req.Event, req.Attempt))
		if req.Attempt < 2 {
			return nil, fmt.Errorf("index %s: search is down", req.Event)
		}
		return nil, nil
	})
	start(t, ev)
	c := worker.NewClient(dial(t, ""), worker.WithEventExchange(exchange))
	t.Cleanup(func() { _ = c.Close() })
	if err := c.PublishEvent(context.Background(), "item.price.changed", itemEvent{ID: 1}); err != nil {
		t.Fatal(err)
	}
	settled(t, "runs", 2, func() int { mu.Lock(); defer mu.Unlock(); return len(runs) })
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"item.price.changed/1", "item.price.changed/2"}; strings.Join(runs, " ") != strings.Join(want, " ") {
		t.Fatalf("runs %v, want %v", runs, want)
	}
}
