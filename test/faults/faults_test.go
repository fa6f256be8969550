//go:build faults

package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
	"example.com/service/test/stack"
)

// 1. RabbitMQ restarts while 20,000 confirmed messages are being consumed:
// every confirmed message is stored.
func TestBrokerRestartLosesNothing(t *testing.T) {
	requireTool(t, "rabbitmqctl")
	env := stack.NewEnv(t, bins)
	stack.Start(t, bins, env)
	client := env.Client(t)
	db := env.DB(t)
	tag := testenv.Name("broker-restart-")

	const n = 20000
	confirmed := stack.PublishTagged(t, client, tag, n, 16, n/3, func() { restartBroker(t, 2*time.Second) })
	rows, distinct := stack.WaitStored(t, db, tag, confirmed, 60*time.Second)
	dead := stack.DeadLetters(t, env.Channel(t), "example-item.store")
	lost := confirmed - distinct - len(dead)
	record(t, row{
		fault: "RabbitMQ restart while consuming", sent: confirmed, stored: distinct, lost: lost,
		duplicated: rows - distinct, deadLetter: len(dead), note: fmt.Sprintf("%d published, %d confirmed", n, confirmed),
	})
	if confirmed != n {
		t.Errorf("%d of %d publishes were not confirmed", n-confirmed, n)
	}
	if lost != 0 {
		t.Errorf("lost %d confirmed messages", lost)
	}
}

// 2. PostgreSQL restarts under RPC and queue load: calls during the outage
// get an error reply (no hang, no crash); queue messages are stored once it
// is back, or dead-lettered.
func TestPostgresRestartUnderLoad(t *testing.T) {
	pgCluster(t)
	env := stack.NewEnv(t, bins)
	p := stack.Start(t, bins, env)
	client := env.Client(t)
	tag := testenv.Name("pg-restart-")

	ctx, stop := context.WithCancel(context.Background())
	var (
		wg                       sync.WaitGroup
		okCalls, failed, timeout atomic.Int64
		published                atomic.Int64
		failMessages             sync.Map
	)
	for range 4 {
		wg.Go(func() { // RPC load
			for ctx.Err() == nil {
				callCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var item map[string]any
				err := client.Call(callCtx, "example-item.create", map[string]any{"string": tag + "-rpc", "integer": 2}, &item)
				cancel()
				var remote *worker.RemoteError
				switch {
				case err == nil:
					okCalls.Add(1)
				case errors.As(err, &remote):
					failed.Add(1)
					failMessages.Store(remote.Type+": "+firstLine(remote.Message), true)
				default:
					timeout.Add(1)
					t.Errorf("call during the PostgreSQL restart got no reply: %v", err)
				}
			}
		})
		wg.Go(func() { // queue load
			for ctx.Err() == nil {
				i := published.Add(1)
				pubCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
				err := client.Publish(pubCtx, "example-item.store", map[string]any{"string": fmt.Sprintf("%s-q-%d", tag, i), "integer": 3})
				cancel()
				if err != nil {
					t.Errorf("publish: %v", err)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	time.Sleep(time.Second)
	start := stopPostgres(t)
	time.Sleep(4 * time.Second)
	start()
	time.Sleep(2 * time.Second)
	stop()
	wg.Wait()

	sent := int(published.Load())
	rows, distinct := stack.WaitStored(t, env.DB(t), tag+"-q-", sent, 30*time.Second)
	dead := stack.DeadLetters(t, env.Channel(t), "example-item.store")
	lost := sent - distinct - len(dead)
	record(t, row{
		fault: "PostgreSQL restart under load", sent: sent, stored: distinct, lost: lost,
		duplicated: rows - distinct, deadLetter: len(dead),
		note: fmt.Sprintf("RPC: %d ok, %d error replies, %d without reply", okCalls.Load(), failed.Load(), timeout.Load()),
	})
	failMessages.Range(func(k, _ any) bool { t.Logf("error reply during the outage: %s", k); return true })
	if lost != 0 {
		t.Errorf("lost %d queue messages", lost)
	}
	if failed.Load() == 0 {
		t.Errorf("no call failed while PostgreSQL was down: was it down?")
	}
	if p.Exited() {
		t.Fatalf("service exited during the PostgreSQL restart; the end of its log:\n%s", p.Tail(15))
	}
	var hello string
	callCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.Call(callCtx, "example-item.create", map[string]any{"string": tag + "-after"}, &map[string]any{}); err != nil {
		t.Errorf("example-item.create after PostgreSQL came back: %v", err)
	}
	if err := client.Call(callCtx, "hello_world", nil, &hello); err != nil {
		t.Errorf("hello_world after the restart: %v", err)
	}
}

// 3. SIGTERM with 50 calls in flight: each gets its reply, the process exits
// 0 within the drain timeout, and messages it had not started stay in their
// queue for the next replica.
func TestSIGTERMWithCallsInFlight(t *testing.T) {
	env := stack.NewEnv(t, bins)
	first := stack.Start(t, bins, env, "DRAIN_TIMEOUT=15s")
	client := env.Client(t)
	tag := testenv.Name("sigterm-")

	const calls = 50
	var wg sync.WaitGroup
	var replied atomic.Int64
	for i := range calls {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var got string
			err := client.Call(ctx, "test", fmt.Sprint(i), &got)
			if err != nil || got != fmt.Sprint(i)+" that took forever" {
				t.Errorf("call %d: %q, %v", i, got, err)
				return
			}
			replied.Add(1)
		})
	}
	time.Sleep(300 * time.Millisecond)
	stoppedAt := time.Now()
	if err := first.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Work published while the first process drains must wait for the next one.
	const queued = 200
	confirmed := stack.PublishTagged(t, client, tag, queued, 4, 0, nil)
	wg.Wait()
	code, err := first.Wait(20 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("exit code %d (%v) after SIGTERM, want 0", code, err)
	}
	t.Logf("exited 0 %s after SIGTERM", time.Since(stoppedAt).Round(time.Millisecond))
	db := env.DB(t)
	_, storedByFirst := stack.StoredCounts(t, db, tag)
	waiting := queueDepth(t, env.Channel(t), "example-item.store")

	stack.Start(t, bins, env) // the next replica
	rows, distinct := stack.WaitStored(t, db, tag, confirmed, 30*time.Second)
	record(t, row{
		fault: "SIGTERM with 50 calls in flight", sent: confirmed, stored: distinct, lost: confirmed - distinct,
		duplicated: rows - distinct,
		note:       fmt.Sprintf("%d/%d calls answered; %d messages waited in the queue for the next replica", replied.Load(), calls, waiting),
	})
	if replied.Load() != calls {
		t.Errorf("%d of %d in-flight calls got their reply", replied.Load(), calls)
	}
	if storedByFirst+waiting < confirmed {
		t.Errorf("after the first process stopped: %d stored + %d in the queue < %d sent", storedByFirst, waiting, confirmed)
	}
	if distinct != confirmed {
		t.Errorf("lost %d messages across the stop", confirmed-distinct)
	}
}

// 4. Two replicas share the work; each request is handled once.
func TestTwoReplicasSplitTheLoad(t *testing.T) {
	env := stack.NewEnv(t, bins)
	a := stack.Start(t, bins, env)
	b := stack.Start(t, bins, env)
	client := env.Client(t)
	tag := testenv.Name("replicas-")

	const calls = 400
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range calls {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := client.Call(ctx, "will-error", fmt.Sprintf("%s-%d", tag, i), nil)
			var remote *worker.RemoteError
			if !errors.As(err, &remote) {
				t.Errorf("will-error call %d: %v, want a remote error", i, err)
			}
		})
	}
	wg.Wait()
	confirmed := stack.PublishTagged(t, client, tag+"-q", 1000, 8, 0, nil)
	rows, distinct := stack.WaitStored(t, env.DB(t), tag+"-q", confirmed, 30*time.Second)

	// In development mode each failed request is logged once, at debug
	// level, by the replica that handled it.
	handledBy := func(p *stack.Process) int { return strings.Count(p.Logs(), "Just an exception: "+tag+"-") }
	time.Sleep(200 * time.Millisecond)
	na, nb := handledBy(a), handledBy(b)
	record(t, row{
		fault: "two replicas", sent: confirmed, stored: distinct, lost: confirmed - distinct,
		duplicated: rows - distinct, note: fmt.Sprintf("%d calls: %d by replica A, %d by replica B", calls, na, nb),
	})
	if na+nb != calls {
		t.Errorf("replicas handled %d + %d calls, want %d in all (each once)", na, nb, calls)
	}
	if na == 0 || nb == 0 {
		t.Errorf("one replica did all the work: %d and %d", na, nb)
	}
	if distinct != confirmed || rows != distinct {
		t.Errorf("queue messages: %d rows, %d distinct, want %d each", rows, distinct, confirmed)
	}
}

// 5. Hostile input on every route: each is answered with an error envelope
// or dead-lettered, the process stays up with bounded memory, and it keeps
// answering.
func TestBadInputOnEveryRoute(t *testing.T) {
	env := stack.NewEnv(t, bins)
	p := stack.Start(t, bins, env)
	seed := stack.NewSeedClient(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	big := `{"data": "` + strings.Repeat("x", 10<<20) + `"}`
	deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	bomb := stack.Gzip([]byte(`{"data": "` + strings.Repeat("0", 200<<20) + `"}`)) // 200 MiB inflated
	// valid inputs decode: a route that takes any data may accept them.
	inputs := []struct {
		name  string
		msg   amqp.Publishing
		valid bool
	}{
		{"not JSON", amqp.Publishing{ContentType: "application/json", Body: []byte("{not json")}, false},
		{"wrong types", amqp.Publishing{ContentType: "application/json", Body: []byte(`{"data": {"string": [1], "integer": "x", "id": false}}`)}, true},
		{"10 MB body", amqp.Publishing{ContentType: "application/json", Body: []byte(big)}, true},
		{"deeply nested JSON", amqp.Publishing{ContentType: "application/json", Body: []byte(`{"data": ` + deep + `}`)}, false},
		{"gzip bomb (200 MiB inflated)", amqp.Publishing{ContentType: "application/octet-stream", Body: bomb}, false},
		{"invalid UTF-8", amqp.Publishing{ContentType: "application/json", Body: []byte("{\"data\": \"\xc3\x28\"}")}, false},
		{"unknown content encoding", amqp.Publishing{ContentType: "application/json", ContentEncoding: "zstd", Body: []byte(`{"data": 1}`)}, false},
	}
	routes := bins.Routes(t) // every route of the service, as it lists them
	rpcRoutes, queueRoutes := stack.Names(routes, worker.KindRPC), stack.Names(routes, worker.KindQueue)
	ch := env.Channel(t)
	before := rss(t, p.PID())
	answered := 0
	for _, route := range rpcRoutes {
		for _, in := range inputs {
			r, err := seed.Send(ctx, route, in.msg)
			if err != nil {
				t.Fatalf("%s, %s: no reply: %v", route, in.name, err)
			}
			if r.Success && !in.valid {
				t.Errorf("%s, %s: answered success %s", route, in.name, truncate(r.Body))
			}
			if !r.Success && (r.Error == nil || r.Error.Message == "") {
				t.Errorf("%s, %s: failure without a message: %s", route, in.name, truncate(r.Body))
			}
			answered++
		}
	}
	// Without reply_to the request runs and is acked; nothing is left behind.
	for _, route := range rpcRoutes {
		if err := seed.Publish(ctx, route, amqp.Publishing{ContentType: "application/json", Body: []byte(`{"data": null}`)}); err != nil {
			t.Fatal(err)
		}
	}
	sentToQueues, dead := 0, 0
	takesAny := map[string]bool{}
	for _, r := range routes {
		takesAny[r.Name] = stack.WrongShape(r) == ""
	}
	for _, route := range queueRoutes {
		for _, in := range inputs {
			if in.valid && takesAny[route] {
				continue // a route that takes any data (queue-test logs it) does not refuse valid JSON
			}
			if err := seed.Publish(ctx, route, in.msg); err != nil {
				t.Fatalf("%s, %s: %v", route, in.name, err)
			}
			sentToQueues++
		}
	}
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && dead < sentToQueues; time.Sleep(200 * time.Millisecond) {
		dead = 0
		for _, route := range queueRoutes {
			dead += queueDepth(t, ch, route+".dlq")
		}
	}
	after := rss(t, p.PID())
	record(t, row{
		fault: "hostile input on every route", sent: answered + sentToQueues, stored: 0, lost: sentToQueues - dead,
		deadLetter: dead, note: fmt.Sprintf("%d RPC requests answered with an error; RSS %d -> %d MiB", answered, before, after),
	})
	if dead != sentToQueues {
		t.Errorf("dead-lettered %d of %d hostile queue messages", dead, sentToQueues)
	}
	if p.Exited() {
		t.Fatalf("the service died; the end of its log:\n%s", p.Tail(15))
	}
	if after > before+300 {
		t.Errorf("resident memory grew from %d to %d MiB", before, after)
	}
	for _, route := range rpcRoutes {
		if queueDepth(t, ch, route) != 0 {
			t.Errorf("%s still holds messages after requests without reply_to", route)
		}
	}
	r, err := seed.Call(ctx, "dictionary", map[string]any{"still": "alive"})
	if err != nil || !r.Success {
		t.Fatalf("dictionary after hostile input: %v %s", err, r.Body)
	}
	var got map[string]any
	_ = json.Unmarshal(r.Data, &got)
	if got["bar"] != "baz" {
		t.Errorf("dictionary after hostile input = %s", r.Data)
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
