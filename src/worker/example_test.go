package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

	"example.com/service/src/worker"
)

// A typed function becomes a handler with Func: the request data is decoded
// into its argument and its result becomes the reply data.
func ExampleFunc() {
	type item struct {
		Name string `json:"name"`
	}
	h := worker.Func(func(ctx context.Context, it item) (map[string]string, error) {
		return map[string]string{"hello": it.Name}, nil
	})

	out, err := h.Serve(context.Background(), &worker.Request{Data: json.RawMessage(`{"name": "ada"}`)})
	fmt.Println(string(out), err)

	_, err = h.Serve(context.Background(), &worker.Request{Data: json.RawMessage(`{"name": 7}`)})
	fmt.Println(err, errors.Is(err, worker.ErrBadRequest))
	// Output:
	// {"hello":"ada"} <nil>
	// data.name is a JSON number, want string true
}

// A Middleware wraps a handler like net/http middleware: here one that
// refuses requests without a token header, used on a worker with
// rpc.Use(requireToken) (every route) or on one route with
// rpc.Handle("items.delete", h, requireToken).
func ExampleMiddleware() {
	requireToken := func(next worker.Handler) worker.Handler {
		return worker.HandlerFunc(func(ctx context.Context, req *worker.Request) ([]byte, error) {
			if req.Headers["x-token"] != "s3cret" {
				return nil, worker.Errorf("Unauthorized", "route %s needs an x-token header", req.Route)
			}
			return next.Serve(ctx, req)
		})
	}
	h := requireToken(worker.Func(func(context.Context, any) (string, error) { return "done", nil }))

	_, err := h.Serve(context.Background(), &worker.Request{Route: "items.delete", Data: json.RawMessage(`null`)})
	fmt.Println(err)
	out, _ := h.Serve(context.Background(), &worker.Request{
		Route: "items.delete", Data: json.RawMessage(`null`),
		Headers: map[string]any{"x-token": "s3cret"},
	})
	fmt.Println(string(out))
	// Output:
	// route items.delete needs an x-token header
	// "done"
}

// Errorf gives an error a reply type; callers see it in RemoteError.Type.
func ExampleErrorf() {
	err := worker.Errorf("NotFound", "no item with id %d", 42)
	var typed worker.Typed
	if errors.As(err, &typed) {
		fmt.Println(typed.ErrorType()+":", err)
	}
	// Output: NotFound: no item with id 42
}

// A failure reply is a *RemoteError carrying the remote type and message.
func ExampleRemoteError() {
	var err error = &worker.RemoteError{Route: "items", Type: "NotFound", Message: "no item with id 42"}
	var re *worker.RemoteError
	if errors.As(err, &re) && re.Type == "NotFound" {
		fmt.Println("not found:", re.Message)
	}
	fmt.Println(err)
	// Output:
	// not found: no item with id 42
	// route "items" failed: NotFound: no item with id 42
}

// A service: one connection, an RPC worker and a queue worker, and a client
// to call other services. Routes are registered like net/http handlers.
func Example() {
	cfg, err := worker.ConfigFromEnv()
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	dialCtx, cancel := context.WithTimeout(ctx, time.Minute)
	conn, err := worker.Dial(dialCtx, cfg, worker.WithName("example-service"))
	cancel()
	if err != nil {
		log.Print(err) // cannot reach RabbitMQ at localhost:5672 as guest: connection refused
		return
	}
	defer conn.Close()

	rpc := worker.NewRPC(conn)
	rpc.Handle("hello_world", worker.Func(func(ctx context.Context, _ any) (string, error) {
		return "Hello world!", nil
	}))
	queue := worker.NewQueue(conn)
	queue.Handle("queue-test", worker.Job(func(ctx context.Context, msg string) error {
		log.Print(msg)
		return nil
	}))
	for _, w := range []interface{ Start(context.Context) error }{rpc, queue} {
		if err := w.Start(ctx); err != nil {
			log.Print(err)
			return
		}
	}

	client := worker.NewClient(conn)
	var greeting string
	if err := client.Call(ctx, "hello_world", nil, &greeting); err != nil {
		log.Print(err)
	}
	if err := client.Publish(ctx, "queue-test", "logged by the queue worker"); err != nil {
		log.Print(err)
	}

	<-ctx.Done()
	shutdownCtx, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	_ = rpc.Shutdown(shutdownCtx)
	_ = queue.Shutdown(shutdownCtx)
}

// Each service's subscription to a pattern has a queue of its own, named
// after both; its replicas share it.
func ExampleSubscriptionQueue() {
	fmt.Println(worker.SubscriptionQueue("billing", "item.*"))
	fmt.Println(worker.SubscriptionQueue("billing", "item.*") + worker.DeadLetterSuffix)
	// Output:
	// billing:item.*
	// billing:item.*.dlq
}

// A service subscribes to events with an Events worker and publishes them
// with a Client; both use the fleet's event exchange (DefaultEventExchange
// unless WithEventExchange).
func ExampleEvents() {
	ctx := context.Background()
	conn, err := worker.Dial(ctx, worker.Config{Host: "localhost"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	type item struct {
		ID string `json:"id"`
	}
	events := worker.NewEvents(conn, "billing")
	events.Handle("item.*", worker.Job(func(ctx context.Context, it item) error {
		fmt.Println("billing saw item", it.ID)
		return nil
	}))
	if err := events.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer events.Shutdown(ctx)

	client := worker.NewClient(conn)
	defer client.Close()
	if err := client.PublishEvent(ctx, "item.created", item{ID: "42"}); err != nil {
		fmt.Println(err)
	}
}

// With Retry.InBroker the waits of the policy are retry queues of the
// route, one per distinct wait.
func ExampleRetryDelays() {
	policy := worker.Retry{Attempts: 6, Backoff: 200 * time.Millisecond, MaxBackoff: 5 * time.Second, InBroker: true}
	for _, d := range worker.RetryDelays(policy) {
		fmt.Println(d, worker.RetryQueue("emails", d))
	}
	// Output:
	// 200ms emails.retry.200
	// 400ms emails.retry.400
	// 800ms emails.retry.800
	// 1.6s emails.retry.1600
	// 3.2s emails.retry.3200
}

// DeadLetters counts, shows and replays a route's dead letters, as
// `service dlq` does.
func ExampleDeadLetters() {
	ctx := context.Background()
	conn, err := worker.Dial(ctx, worker.Config{Host: "localhost"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	dl := worker.NewDeadLetters(conn)
	counts, err := dl.List(ctx, "emails")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(counts[0].Queue, counts[0].Messages)
	letters, _, err := dl.Show(ctx, "emails", 3)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, l := range letters {
		fmt.Println(l.MessageID, l.ErrorType, l.Error)
	}
	// Once the fault is fixed:
	moved, err := dl.Replay(ctx, "emails", 0)
	fmt.Println(moved, err)
}
