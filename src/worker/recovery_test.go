package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// callEventually retries a short call until it succeeds (30 s at most).
func callEventually(t *testing.T, c *worker.Client, route string) {
	t.Helper()
	eventually(t, "call "+route+" succeeds", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var got answer
		return c.Call(ctx, route, greeting{Name: "r"}, &got) == nil && got.Text == "hello r"
	})
}

// When the broker drops the workers' or the client's connection, they
// reconnect, redeclare and resume on their own.
func TestRecoveryAfterConnectionLoss(t *testing.T) {
	requireBroker(t)
	wName, cName := testenv.Name("worker-test-w-"), testenv.Name("worker-test-c-")
	wConn, cConn := dial(t, wName), dial(t, cName)
	rr, qr := route(t, "rec-rpc"), route(t, "rec-queue")
	rpc := worker.NewRPC(wConn)
	rpc.Handle(rr, worker.Func(hello))
	start(t, rpc)
	var seen counter
	q := worker.NewQueue(wConn)
	q.Handle(qr, worker.Job(func(_ context.Context, s string) error { seen.add(s); return nil }))
	start(t, q)
	c := client(t, cConn)
	callEventually(t, c, rr)

	for round, victims := range [][]string{{wName}, {cName}, {wName, cName}} {
		for _, v := range victims {
			closeConnection(t, v)
		}
		callEventually(t, c, rr)
		msg := fmt.Sprint("round-", round)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := c.Publish(ctx, qr, msg); err != nil {
			t.Fatalf("round %d: publish after reconnect: %v", round, err)
		}
		cancel()
		eventually(t, msg+" consumed after reconnect", func() bool { return seen.get(msg) >= 1 })
	}
}

// A full broker restart while publishing and consuming loses no confirmed
// message. It stops and starts the broker with rabbitmqctl, so it runs only
// where the broker runs on this machine (skipped under -short, and with
// WORKER_RESTART_BROKER=0 for a broker others are using).
func TestBrokerRestartLosesNothing(t *testing.T) {
	requireBroker(t)
	if os.Getenv("WORKER_RESTART_BROKER") == "0" {
		t.Skip("restarts RabbitMQ; WORKER_RESTART_BROKER=0 turned it off")
	}
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Skip("restarts RabbitMQ with rabbitmqctl, which is not installed here")
	}
	release, err := testenv.LockRestarts(t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	wConn, cConn := dial(t, ""), dial(t, "")
	qr, rr := route(t, "restart-q"), route(t, "restart-rpc")
	var seen counter
	q := worker.NewQueue(wConn)
	q.Handle(qr, worker.Job(func(_ context.Context, n int) error { seen.add(fmt.Sprint(n)); return nil }))
	start(t, q)
	rpc := worker.NewRPC(wConn)
	rpc.Handle(rr, worker.Func(hello))
	start(t, rpc)
	c := client(t, cConn)

	var confirmed sync.Map
	var nConfirmed, nFailed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := g*1_000_000 + i
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				err := c.Publish(ctx, qr, n)
				cancel()
				if err != nil {
					nFailed.Add(1)
					continue
				}
				confirmed.Store(fmt.Sprint(n), true)
				nConfirmed.Add(1)
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	time.Sleep(time.Second)
	ctl := func(args ...string) {
		if out, err := exec.Command("rabbitmqctl", args...).CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
		}
	}
	ctl("stop_app")
	t.Cleanup(func() { _ = exec.Command("rabbitmqctl", "start_app").Run() })
	time.Sleep(2 * time.Second)
	ctl("start_app")
	before := nConfirmed.Load()
	eventually(t, "publishing resumes after restart", func() bool { return nConfirmed.Load() > before+50 })
	close(stop)
	wg.Wait()
	callEventually(t, c, rr)

	var missing []string
	eventually(t, "every confirmed message consumed", func() bool {
		missing = missing[:0]
		confirmed.Range(func(k, _ any) bool {
			if seen.get(k.(string)) == 0 {
				missing = append(missing, k.(string))
			}
			return true
		})
		return len(missing) == 0
	})
	t.Logf("confirmed %d, failed %d, consumed %d distinct", nConfirmed.Load(), nFailed.Load(), seen.len())
}

// When its queue is deleted, a route redeclares it and resumes, and the
// worker's connection keeps one channel per route: the channel of the
// cancelled consumer is closed, not leaked.
func TestQueueDeletedResumesWithoutLeak(t *testing.T) {
	requireBroker(t)
	name := testenv.Name("worker-test-del-")
	conn := dial(t, name)
	r := route(t, "deleted")
	rpc := worker.NewRPC(conn)
	rpc.Handle(r, worker.Func(hello))
	start(t, rpc)
	c := client(t, dial(t, ""))
	callEventually(t, c, r)
	if n := channels(t, name); n != 1 {
		t.Fatalf("worker connection has %d channels at start, want 1", n)
	}
	ch := raw(t)
	for round := range 3 {
		if _, err := ch.QueueDelete(r, false, false, false); err != nil {
			t.Fatalf("round %d: delete queue: %v", round, err)
		}
		callEventually(t, c, r)
	}
	eventually(t, "worker connection back to 1 channel", func() bool { return channels(t, name) == 1 })
}

// While the connection is down, a Call or Publish with a short deadline
// fails when its own deadline passes, not after another caller's longer
// one: callers do not queue behind whoever is waiting for the reconnect.
func TestShortDeadlineNotBehindLongOne(t *testing.T) {
	requireBroker(t)
	conn, p := dialProxied(t)
	c := client(t, conn)
	p.silence()
	eventually(t, "the Conn tries to reconnect", func() bool { return p.silentAccepts() > 0 })
	for _, op := range []struct {
		name string
		do   func(context.Context) error
	}{
		{"Call", func(ctx context.Context) error { return c.Call(ctx, "wt-nowhere", "x", nil) }},
		{"Publish", func(ctx context.Context) error { return c.Publish(ctx, "wt-nowhere", "x") }},
	} {
		var wg sync.WaitGroup
		long, cancelLong := context.WithTimeout(context.Background(), 20*time.Second)
		longDone := make(chan error, 1)
		wg.Go(func() { longDone <- op.do(long) })
		time.Sleep(200 * time.Millisecond) // let it start waiting for the reconnect
		short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		shortDone := make(chan error, 1)
		wg.Go(func() { shortDone <- op.do(short) })
		select {
		case err := <-shortDone:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s with a short deadline = %v, want DeadlineExceeded", op.name, err)
			}
		case err := <-longDone:
			t.Errorf("%s with the long deadline returned (%v) before the short one", op.name, err)
		case <-time.After(10 * time.Second):
			t.Errorf("%s with a 300 ms deadline still waiting after 10 s, behind the one with a long deadline", op.name)
		}
		cancelLong()
		cancel()
		wg.Wait()
	}
}

// records is a slog.Handler that keeps every record's level and message.
type records struct {
	mu   sync.Mutex
	list []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.list = append(r.list, rec)
	r.mu.Unlock()
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

// count counts the records at level whose message contains text.
func (r *records) count(level slog.Level, text string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.list {
		if rec.Level == level && strings.Contains(rec.Message, text) {
			n++
		}
	}
	return n
}

// A reconnect the broker refuses (the user was deleted) is logged at error
// level, once, not once per retry.
func TestReconnectRefusedLoggedAsError(t *testing.T) {
	requireBroker(t)
	ctl := func(args ...string) error {
		out, err := exec.Command("rabbitmqctl", append([]string{"-q"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("rabbitmqctl %v: %w\n%s", args, err, out)
		}
		return nil
	}
	user, pass := testenv.Name("worker-test-user-"), "pw-"+testenv.Name("")
	if err := ctl("add_user", user, pass); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ctl("delete_user", user) })
	cfg := brokerConfig()
	if err := ctl("set_permissions", "-p", cfg.VHost, user, ".*", ".*", ".*"); err != nil {
		t.Fatal(err)
	}
	cfg.User, cfg.Password = user, pass
	var logs records
	name := testenv.Name("worker-test-refused-")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := worker.Dial(ctx, cfg, worker.WithName(name), worker.WithLogger(slog.New(&logs)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })

	if err := ctl("delete_user", user); err != nil { // the broker closes its connections
		t.Fatal(err)
	}
	eventually(t, "several refused reconnects", func() bool { return logs.count(slog.LevelDebug, "retrying") >= 2 })
	// One per connection: the consuming and the publishing one.
	if n := logs.count(slog.LevelError, "refuses the login"); n != 2 {
		t.Fatalf("%d error records about the refused login after several retries, want 2 (one per connection)", n)
	}
}
