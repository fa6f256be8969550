package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// The caller's deadline travels with the request: the handler's ctx has it,
// the caller times out instead of hanging, and a request whose caller gave
// up is not run.
func TestDeadline(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r := route(t, "deadline")
	var runs atomic.Int32
	rpc := worker.NewRPC(conn)
	rpc.Handle(r, worker.Func(func(ctx context.Context, wait string) (string, error) {
		runs.Add(1)
		dl, ok := ctx.Deadline()
		if wait == "sleep" {
			select {
			case <-time.After(5 * time.Second):
			case <-ctx.Done():
				// The worker's copy of the deadline is in milliseconds and
				// may end just before the caller's: answer well after it,
				// so the call can only end by its own deadline.
				time.Sleep(500 * time.Millisecond)
			}
		}
		if !ok {
			return "none", nil
		}
		return fmt.Sprint(time.Until(dl) > 0), nil
	}))
	c := client(t, conn)

	// Queue exists (declared as the RPC worker declares it), no consumer
	// yet: this request expires unseen.
	ch := raw(t)
	if _, err := ch.QueueDeclare(r, false, false, false, false, amqp.Table{"x-dead-letter-exchange": "rpc.dlx"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err := c.Call(ctx, r, "early", nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call with no worker: %v, want DeadlineExceeded", err)
	}
	// A request with a past deadline and no expiration (as from a slow
	// network) is also dropped by the worker itself.
	err = ch.PublishWithContext(context.Background(), "", r, false, false, amqp.Publishing{
		Headers: amqp.Table{worker.HeaderDeadline: time.Now().Add(-time.Second).UnixMilli()},
		Body:    []byte(`{"data":"stale"}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, rpc)

	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got string
	if err := c.Call(ctx, r, "check", &got); err != nil || got != "true" {
		t.Fatalf("handler ctx deadline: %q, %v", got, err)
	}
	if err := c.Call(context.Background(), r, "check", &got); err != nil || got != "none" {
		t.Fatalf("no deadline: %q, %v", got, err)
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2: an expired request ran", n)
	}

	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	began := time.Now()
	err = c.Call(short, r, "sleep", nil)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(began) > 3*time.Second {
		t.Fatalf("slow call: %v after %v, want DeadlineExceeded soon after 300ms", err, time.Since(began))
	}
}

// Ack comes after the handler: a worker that dies mid-handler leaves the
// request to another worker, and the caller gets that worker's reply.
func TestAckAfterHandler(t *testing.T) {
	requireBroker(t)
	r := route(t, "ack")
	connA := dial(t, "")
	started, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	var once sync.Once
	a := worker.NewRPC(connA)
	a.Handle(r, worker.Func(func(ctx context.Context, s string) (string, error) {
		once.Do(func() { close(started) })
		<-release // hangs as a dying process would
		return "a", nil
	}))
	start(t, a)

	c := client(t, dial(t, ""))
	res := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var who string
		if err := c.Call(ctx, r, "job", &who); err != nil {
			who = err.Error()
		}
		res <- who
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("worker a never got the request")
	}
	// Worker a dies: its connection goes, and its unacked request returns
	// to the queue.
	_ = connA.Close()

	b := worker.NewRPC(dial(t, ""))
	b.Handle(r, worker.Func(func(ctx context.Context, s string) (string, error) { return "b", nil }))
	start(t, b)
	select {
	case who := <-res:
		if who != "b" {
			t.Fatalf("reply from %q, want b", who)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("request lost: no reply after worker a died")
	}
}

// Shutdown stops taking requests, lets running handlers finish and sends
// their replies before it returns.
func TestShutdownDrains(t *testing.T) {
	var running sync.WaitGroup
	running.Add(5)
	r, rpc := serveRPC(t, "drain", worker.Func(func(ctx context.Context, i int) (int, error) {
		running.Done()
		time.Sleep(time.Second)
		return i * 10, nil
	}))
	c := client(t, dial(t, ""))
	var wg sync.WaitGroup
	results := make([]int, 5)
	errs := make([]error, 5)
	for i := range 5 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			errs[i] = c.Call(ctx, r, i+1, &results[i])
		})
	}
	running.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rpc.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wg.Wait()
	for i := range 5 {
		if errs[i] != nil || results[i] != (i+1)*10 {
			t.Errorf("call %d: %d, %v; want its reply despite shutdown", i, results[i], errs[i])
		}
	}
	// After Shutdown nothing consumes: a new call times out.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if err := c.Call(ctx2, r, 1, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call after Shutdown: %v, want DeadlineExceeded", err)
	}
}

// StopIntake stops taking requests at once while the one in flight goes on:
// a request sent after it waits in the queue, and Shutdown then drains the
// one in flight, whose reply still arrives.
func TestStopIntakeThenShutdown(t *testing.T) {
	inFlight := make(chan struct{})
	var calls atomic.Int64
	r, rpc := serveRPC(t, "intake", worker.Func(func(ctx context.Context, i int) (int, error) {
		if calls.Add(1) == 1 {
			close(inFlight)
		}
		time.Sleep(500 * time.Millisecond)
		return i * 10, nil
	}))
	c := client(t, dial(t, ""))
	first := make(chan error, 1)
	var got int
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		first <- c.Call(ctx, r, 1, &got)
	}()
	<-inFlight
	if err := rpc.StopIntake(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	if err := c.Call(ctx, r, 2, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("call after StopIntake: %v, want it left in the queue (DeadlineExceeded)", err)
	}
	shutdownCtx, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if err := rpc.Shutdown(shutdownCtx); err != nil {
		t.Fatalf("Shutdown after StopIntake: %v", err)
	}
	if err := <-first; err != nil || got != 10 {
		t.Fatalf("the call in flight at StopIntake: %d, %v; want its reply", got, err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1: the request sent after StopIntake was taken", n)
	}
}

// Shutdown gives up when its ctx ends, cancels handler contexts and reports
// how many handlers were still running; their messages go back to the queue.
func TestShutdownTimeout(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r := route(t, "stuck")
	started := make(chan struct{})
	q := worker.NewQueue(conn)
	q.Handle(r, worker.Job(func(ctx context.Context, s string) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}))
	start(t, q)
	if err := client(t, conn).Publish(context.Background(), r, "x"); err != nil {
		t.Fatal(err)
	}
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := q.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "1 handlers still running") {
		t.Fatalf("Shutdown = %v", err)
	}
	ch := raw(t)
	eventually(t, "message back in its queue, not dead-lettered", func() bool { return queueLen(t, ch, r) == 1 })
	if n := queueLen(t, ch, r+worker.DeadLetterSuffix); n != 0 {
		t.Fatalf("%d messages dead-lettered by shutdown", n)
	}
}

// Start fails with an error naming the route when its queue cannot be
// declared (here: it exists as durable, RPC queues are not).
func TestStartErrorNamesRoute(t *testing.T) {
	requireBroker(t)
	r := route(t, "clash")
	if _, err := raw(t).QueueDeclare(r, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	rpc := worker.NewRPC(dial(t, ""))
	rpc.Handle(r, worker.Func(hello))
	err := rpc.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), r) || !strings.Contains(err.Error(), "other settings") {
		t.Fatalf("Start = %v, want an error naming %s", err, r)
	}
}

// Dial fails with one line naming address and user, never the password.
func TestDialErrors(t *testing.T) {
	requireBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := worker.Dial(ctx, worker.Config{Host: "127.0.0.1", Port: 1, User: "guest", Password: "sekrit"})
	if err == nil || err.Error() != "cannot reach RabbitMQ at 127.0.0.1:1 as guest: connection refused" {
		t.Fatalf("Dial to closed port = %v", err)
	}

	cfg := brokerConfig()
	cfg.Password = "wrong-sekrit"
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	began := time.Now()
	_, err = worker.Dial(ctx, cfg)
	if !errors.Is(err, amqp.ErrCredentials) || strings.Contains(err.Error(), "sekrit") || time.Since(began) > 10*time.Second {
		t.Fatalf("Dial with wrong password = %v after %v, want ErrCredentials at once, no password", err, time.Since(began))
	}
}

func TestConfigFromEnv(t *testing.T) {
	for _, k := range []string{"BROKER_HOST", "BROKER_HOSTS", "BROKER_PORT", "BROKER_USER", "BROKER_PASS", "BROKER_VHOST", "BROKER_URL", "BROKER_URLS"} {
		t.Setenv(k, "")
	}
	cfg, err := worker.ConfigFromEnv()
	if err != nil || !reflect.DeepEqual(cfg, worker.Config{Host: "localhost", Port: 5672, User: "guest", Password: "guest", VHost: "/"}) {
		t.Fatalf("defaults: %+v, %v", cfg, err)
	}
	t.Setenv("BROKER_PORT", "abc")
	if _, err := worker.ConfigFromEnv(); err == nil || err.Error() != `BROKER_PORT="abc": not a port number (1-65535)` {
		t.Fatalf("bad port: %v", err)
	}
	t.Setenv("BROKER_PORT", "")
	for _, u := range []string{"http://u:topsecret@h/", "amqp://u:topsecret%zz@h/", "amqp://u:topsecret@h:99999/", "amqp://u:topsecret@[::1/"} {
		t.Setenv("BROKER_URL", u)
		if _, err := worker.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "BROKER_URL") || strings.Contains(err.Error(), "topsecret") {
			t.Errorf("bad URL %s: %v", strings.ReplaceAll(u, "topsecret", "..."), err)
		}
	}
	t.Setenv("BROKER_URL", "")

	t.Setenv("BROKER_HOSTS", " node1, node2:5673 ,[::1]:5674,")
	cfg, err = worker.ConfigFromEnv()
	if want := []string{"node1", "node2:5673", "[::1]:5674"}; err != nil || !reflect.DeepEqual(cfg.Hosts, want) {
		t.Errorf("BROKER_HOSTS: %q, %v; want %q", cfg.Hosts, err, want)
	}
	for _, bad := range []string{"node1:99999", "::1:5672", "user@node1", ":5672"} {
		t.Setenv("BROKER_HOSTS", "node0,"+bad)
		if _, err := worker.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "BROKER_HOSTS") || !strings.Contains(err.Error(), bad) {
			t.Errorf("BROKER_HOSTS=node0,%s: %v, want an error naming it", bad, err)
		}
	}
	t.Setenv("BROKER_HOSTS", "")
	t.Setenv("BROKER_URLS", "amqp://u:p@n1:5672/v,amqp://u:topsecret@n2:99999/v")
	if _, err := worker.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "BROKER_URLS: URL 2") || strings.Contains(err.Error(), "topsecret") {
		t.Errorf("BROKER_URLS with a bad second URL: %v", err)
	}
}

// With several nodes, Dial connects to the one that answers whichever it
// tries first, says which in the log, and names every node when none does.
func TestDialTriesEveryNode(t *testing.T) {
	requireBroker(t)
	dead := func() string { // a port nobody listens on
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}
	live := testenv.BrokerAddr()
	d1, d2 := dead(), dead()
	for range 6 { // the first node tried is random: try enough times to start at each
		cfg := brokerConfig()
		cfg.URL, cfg.Hosts = "", []string{d1, live, d2}
		var logs testenv.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := worker.Dial(ctx, cfg, worker.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
		cancel()
		if err != nil {
			t.Fatalf("Dial with nodes %s, %s, %s (only the second up): %v", d1, live, d2, err)
		}
		_ = conn.Close()
		if !strings.Contains(logs.String(), "connected to RabbitMQ") || !strings.Contains(logs.String(), "addr="+live) {
			t.Fatalf("the log does not say which node the connection is on:\n%s", logs.String())
		}
	}
	cfg := brokerConfig()
	cfg.URL, cfg.Hosts = "", []string{d1, d2}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := worker.Dial(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), d1+", "+d2) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Dial with every node down: %v, want an error naming both nodes and the cause", err)
	}
}

func TestTLSFromEnv(t *testing.T) {
	for _, k := range []string{"BROKER_HOST", "BROKER_PORT", "BROKER_URL", "BROKER_TLS", "BROKER_TLS_CA", "BROKER_TLS_CERT", "BROKER_TLS_KEY", "BROKER_TLS_SERVER_NAME"} {
		t.Setenv(k, "")
	}
	t.Setenv("BROKER_TLS", "true")
	t.Setenv("BROKER_TLS_SERVER_NAME", "rabbit.internal")
	cfg, err := worker.ConfigFromEnv()
	if err != nil || cfg.TLS == nil || cfg.TLS.ServerName != "rabbit.internal" || cfg.Port != 5671 {
		t.Fatalf("BROKER_TLS=true: %+v, %v; want TLS on port 5671", cfg, err)
	}
	t.Setenv("BROKER_TLS", "")
	t.Setenv("BROKER_TLS_CA", "/does/not/exist.pem")
	if _, err := worker.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), `BROKER_TLS_CA="/does/not/exist.pem"`) {
		t.Errorf("missing CA file: %v", err)
	}
	t.Setenv("BROKER_TLS_CA", "")
	t.Setenv("BROKER_TLS_CERT", "/c.pem")
	if _, err := worker.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "go together") {
		t.Errorf("a certificate without its key: %v", err)
	}
	t.Setenv("BROKER_TLS_CERT", "")
	t.Setenv("BROKER_TLS", "maybe")
	if _, err := worker.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), `BROKER_TLS="maybe"`) {
		t.Errorf("BROKER_TLS=maybe: %v", err)
	}
}

// A Start that fails on its second route leaves the first one not
// consuming, and Start can be called again once the cause is fixed.
func TestStartFailureLeavesNothing(t *testing.T) {
	requireBroker(t)
	ok, clash := route(t, "start-ok"), route(t, "start-clash")
	ch := raw(t)
	if _, err := ch.QueueDeclare(clash, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	consumers := func(q string) int {
		t.Helper()
		info, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
		if err != nil {
			t.Fatalf("inspect queue %s: %v", q, err)
		}
		return info.Consumers
	}
	rpc := worker.NewRPC(dial(t, ""))
	rpc.Handle(ok, worker.Func(hello))
	rpc.Handle(clash, worker.Func(hello))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rpc.Start(ctx); err == nil || !strings.Contains(err.Error(), clash) {
		t.Fatalf("Start = %v, want an error naming %s", err, clash)
	}
	if n := consumers(ok); n != 0 {
		t.Fatalf("after a failed Start, route %s has %d consumers, want 0", ok, n)
	}
	if _, err := ch.QueueDelete(clash, false, false, false); err != nil {
		t.Fatal(err)
	}
	start(t, rpc) // Start again, now without the clash
	if n, m := consumers(ok), consumers(clash); n != 1 || m != 1 {
		t.Fatalf("after the second Start: %d and %d consumers, want 1 each (a consumer of the failed Start survived)", n, m)
	}
	callEventually(t, client(t, dial(t, "")), ok)
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := rpc.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if n := consumers(ok); n != 0 {
		t.Fatalf("after Shutdown, route %s has %d consumers, want 0", ok, n)
	}
}

// Dial to a port that accepts TCP and never speaks AMQP gives up when its
// ctx ends, with an error that says so.
func TestDialSilentListener(t *testing.T) {
	port := silentListener(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		conn, err := worker.Dial(ctx, worker.Config{Host: "127.0.0.1", Port: port, User: "guest", Password: "guest", VHost: "/"})
		if err == nil {
			_ = conn.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		want := fmt.Sprintf("cannot reach RabbitMQ at 127.0.0.1:%d as guest: connected, but no AMQP handshake (timed out)", port)
		if err == nil || !strings.HasPrefix(err.Error(), want) || !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Dial = %v, want %q...", err, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Dial with a 1 s ctx still blocked after 10 s on a silent listener")
	}
}

// Close returns while the Conn is stuck reconnecting to a broker that
// accepts TCP and never answers.
func TestCloseDuringHungReconnect(t *testing.T) {
	requireBroker(t)
	conn, p := dialProxied(t)
	p.silence()
	eventually(t, "the Conn tries to reconnect", func() bool { return p.silentAccepts() > 0 })
	done := make(chan error, 1)
	go func() { done <- conn.Close() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.shut() // unblock it, so the test ends
		t.Fatal("Conn.Close blocked for 10 s behind a hung reconnect")
	}
}

// Shutdown returns when its ctx ends even if the broker never answers the
// cancel of its consumers.
func TestShutdownBoundedWhenBrokerHangs(t *testing.T) {
	requireBroker(t)
	conn, p := dialProxied(t)
	t.Cleanup(p.shut) // before the Conn's Close, which would wait for the frozen broker
	r := route(t, "hang")
	rpc := worker.NewRPC(conn)
	rpc.Handle(r, worker.Func(hello))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rpc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p.freeze()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		done <- rpc.Shutdown(ctx)
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
		}
	case <-time.After(10 * time.Second):
		p.shut() // unblock it, so the test ends
		t.Fatal("Shutdown with a 1 s ctx still blocked after 10 s on a broker that does not answer")
	}
}

// Acks are coalesced (one multiple ack for a run of finished deliveries,
// single acks for those finished above a slower one): however handlers
// finish, each delivery is acked once and the broker never closes the
// channel for an unknown delivery tag; and no more handlers run at once
// than the prefetch. After a burst of calls and jobs that
// finish out of order, shutting the workers down returns nothing to the
// queues, each job ran once, and no consumer had to resubscribe.
func TestAcksOutOfOrder(t *testing.T) {
	requireBroker(t)
	logs := &records{}
	log := slog.New(logs)
	conn := dial(t, "")
	rr, qr := route(t, "ooo-rpc"), route(t, "ooo-queue")
	sleep := func() { time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond) }
	const prefetch = 20 // below the 40 callers, so the bound is tested
	var running, most atomic.Int64
	rpc := worker.NewRPC(conn, worker.WithPrefetch(prefetch), worker.WithLogger(log))
	rpc.Handle(rr, worker.Func(func(_ context.Context, n int) (int, error) {
		now := running.Add(1)
		defer running.Add(-1)
		for m := most.Load(); now > m && !most.CompareAndSwap(m, now); m = most.Load() {
		}
		sleep()
		return n, nil
	}))
	var jobs atomic.Int64
	q := worker.NewQueue(conn, worker.WithPrefetch(prefetch), worker.WithLogger(log))
	q.Handle(qr, worker.Job(func(_ context.Context, n int) error {
		sleep()
		jobs.Add(1)
		return nil
	}))
	start(t, rpc)
	start(t, q)
	c := client(t, dial(t, ""))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	const n, callers = 1000, 40
	var wg sync.WaitGroup
	for g := range callers {
		wg.Go(func() {
			for i := g; i < n; i += callers {
				var got int
				if err := c.Call(ctx, rr, i, &got); err != nil || got != i {
					t.Errorf("call %d: got %d, %v", i, got, err)
					return
				}
				if err := c.Publish(ctx, qr, i); err != nil {
					t.Errorf("publish %d: %v", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	eventually(t, "every job handled", func() bool { return jobs.Load() >= n })
	for _, w := range []shutdowner{rpc, q} {
		if err := w.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := jobs.Load(); got != n {
		t.Errorf("%d job runs for %d jobs", got, n)
	}
	ch := raw(t)
	for _, name := range []string{rr, qr, qr + worker.DeadLetterSuffix} {
		info, err := ch.QueueDeclarePassive(name, false, false, false, false, nil)
		if err != nil {
			t.Fatalf("inspect queue %s: %v", name, err)
		}
		if info.Messages != 0 {
			t.Errorf("queue %s holds %d messages after shutdown: deliveries went unacked", name, info.Messages)
		}
	}
	if m := most.Load(); m > prefetch || m < 2 {
		t.Errorf("at most %d RPC handlers ran at once; want 2 to %d (the prefetch)", m, prefetch)
	}
	if k := logs.count(slog.LevelWarn, "resubscribing"); k > 0 {
		t.Errorf("a consumer resubscribed %d times: the broker closed its channel", k)
	}
}

// Shutdown sends the acks of the handlers that finished just before it
// ends (acks wait for a tick, and the channel closes right after the
// handlers return): nothing that ran goes back to the queue to run again.
func TestShutdownAcksWhatFinished(t *testing.T) {
	requireBroker(t)
	r := route(t, "drain-acks")
	const n = 5
	var started, finished atomic.Int64
	q := worker.NewQueue(dial(t, ""))
	q.Handle(r, worker.Job(func(_ context.Context, i int) error {
		started.Add(1)
		time.Sleep(300 * time.Millisecond)
		finished.Add(1)
		return nil
	}))
	start(t, q)
	c := client(t, dial(t, ""))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range n {
		if err := c.Publish(ctx, r, i); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "every job started", func() bool { return started.Load() == n })
	if err := q.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := finished.Load(); got != n {
		t.Fatalf("%d of %d jobs finished before Shutdown returned", got, n)
	}
	if depth := queueLen(t, raw(t), r); depth != 0 {
		t.Fatalf("%d finished jobs went back to the queue: their acks were not sent before the channel closed", depth)
	}
}
