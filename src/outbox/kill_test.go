package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"example.com/service/src/db"
	"example.com/service/src/outbox"
	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// The child process of TestKillBetweenCommitAndPublish reads these.
const (
	childVar   = "OUTBOX_TEST_CHILD"    // set: run killedProducer instead of the tests
	childDB    = "OUTBOX_TEST_DB_URL"   // the database
	childRoute = "OUTBOX_TEST_ROUTE"    // the queue route its messages go to
	childFirst = "OUTBOX_TEST_FIRST"    // the first message number it commits
	childCount = "OUTBOX_TEST_COUNT"    // how many it commits
	childDelay = "OUTBOX_TEST_DELAY_US" // microseconds between its last commit and its SIGKILL
)

// commitsPerRun is how many transactions each short run commits.
const commitsPerRun = 5

// TestKillBetweenCommitAndPublish runs a producer process (this test
// binary, in the mode killedProducer) many times; each run starts a relay,
// commits commitsPerRun transactions that each store a row in committed
// and record one outbox message, and then kills itself with SIGKILL right
// after its last commit (or up to 3 ms later, to also hit a relay between
// its publish and its delete). The next run's relay, and finally one in
// the test, publish what a killed run left. Every committed message must
// reach the idempotent consumer and have its effect (a row in effect)
// exactly once. 20 runs in the everyday suite, the 200 under
// test:effects (or OUTBOX_KILL_RUNS; about 1.1 s a run on the loaded
// 2-core development machine).
func TestKillBetweenCommitAndPublish(t *testing.T) {
	testenv.RequirePostgres(t)
	runs := testenv.Count(t, "OUTBOX_KILL_RUNS", 20, 200)
	url, c, conn := setUp(t, "outbox-kill-consumer-", `CREATE TABLE committed (n int PRIMARY KEY)`, `CREATE TABLE effect (n int NOT NULL)`)
	route := testenv.Name("outbox-kill-")
	t.Cleanup(func() { _ = testenv.DeleteQueues(route, route+worker.DeadLetterSuffix) })

	// The consumer: an idempotent route whose effect is a row.
	inbox := outbox.NewInbox(c, outbox.InboxConfig{})
	var deliveries atomic.Int64
	q := worker.NewQueue(conn, worker.WithPrefetch(50))
	q.Handle(route, worker.Job(func(ctx context.Context, msg struct {
		N int `json:"n"`
	},
	) error {
		deliveries.Add(1)
		tx, ok := db.TxFrom(ctx)
		if !ok {
			return errors.New("no transaction on ctx")
		}
		_, err := tx.Exec(ctx, `INSERT INTO effect (n) VALUES ($1)`, msg.N)
		return err
	}), inbox.Idempotent())
	ctx := context.Background()
	if err := q.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Shutdown(context.Background()) })

	// Two producers run at a time, as two replicas would (their relays
	// share the outbox through SKIP LOCKED), each killed on its own.
	const together = 2
	start := time.Now()
	killedWithPending, waves := 0, 0
	for first := 0; first < runs; first += together {
		var wg sync.WaitGroup
		errs := make([]error, together)
		for k := range min(together, runs-first) {
			run := first + k
			wg.Go(func() { errs[k] = produceAndDie(url, route, run) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		waves++
		var pending int
		if err := c.Get(ctx, &pending, `SELECT count(*) FROM outbox`); err != nil {
			t.Fatal(err)
		}
		if pending > 0 {
			killedWithPending++
		}
	}
	elapsed := time.Since(start)

	// The next replica's relay publishes what the last run left.
	client := worker.NewClient(conn)
	t.Cleanup(func() { _ = client.Close() })
	relay := outbox.NewRelay(c, client, outbox.RelayConfig{Poll: 200 * time.Millisecond})
	if err := relay.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = relay.Shutdown(context.Background()) })

	var committed, rows, distinct, pending int
	counts := func() {
		t.Helper()
		if err := c.Get(ctx, &committed, `SELECT count(*) FROM committed`); err != nil {
			t.Fatal(err)
		}
		if err := c.DB().QueryRowContext(ctx, `SELECT count(*), count(DISTINCT n) FROM effect`).Scan(&rows, &distinct); err != nil {
			t.Fatal(err)
		}
		if err := c.Get(ctx, &pending, `SELECT count(*) FROM outbox`); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for counts(); (distinct < committed || pending > 0) && time.Now().Before(deadline); counts() {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // late duplicates, if any, would land now
	counts()
	if pending > 0 {
		var locks []string
		_ = c.Select(ctx, &locks, `SELECT a.pid || ' ' || a.state || ' ' || left(a.query, 80) FROM pg_stat_activity a
			WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()`)
		t.Logf("sessions while %d messages stay in the outbox: %q", pending, locks)
	}
	var missing int
	if err := c.Get(ctx, &missing, `SELECT count(*) FROM committed WHERE n NOT IN (SELECT n FROM effect)`); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d runs, %d at a time, in %s (%.0f ms per run); after %d of %d waves of kills messages were committed and not yet published; "+
		"%d committed, %d effects (%d distinct), %d deliveries, %d redeliveries acked by the inbox without running the handler, %d left in the outbox",
		runs, together, elapsed.Round(time.Millisecond), float64(elapsed.Milliseconds())/float64(runs), killedWithPending, waves,
		committed, rows, distinct, deliveries.Load(), inbox.Skipped(), pending)
	if committed != runs*commitsPerRun {
		t.Errorf("%d transactions committed, want %d", committed, runs*commitsPerRun)
	}
	if missing != 0 {
		t.Errorf("lost: %d committed messages had no effect", missing)
	}
	if rows != distinct {
		t.Errorf("%d duplicate effects", rows-distinct)
	}
	if pending != 0 {
		t.Errorf("%d messages still in the outbox", pending)
	}
	if killedWithPending < waves/2 {
		t.Errorf("only after %d of %d waves of kills were committed messages unpublished: the kills did not fall between commit and publish", killedWithPending, waves)
	}
}

// produceAndDie runs one producer process for run and checks that it
// died by SIGKILL after its commits.
func produceAndDie(url, route string, run int) error {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	delay := 0
	if run%2 == 1 {
		delay = rand.IntN(3000)
	}
	cmd.Env = append(os.Environ(), childVar+"=1", childDB+"="+url, childRoute+"="+route,
		childFirst+"="+strconv.Itoa(run*commitsPerRun), childCount+"="+strconv.Itoa(commitsPerRun),
		childDelay+"="+strconv.Itoa(delay))
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !exit.Sys().(syscall.WaitStatus).Signaled() || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		return fmt.Errorf("run %d did not end by SIGKILL after its commits: %w\n%s", run, err, out)
	}
	return nil
}

// killedProducer is the child process: it starts a relay, commits its
// transactions, each with a row in committed and an outbox message, and
// kills itself with SIGKILL right after the last commit (plus the delay).
// It returns an exit code only when something failed before that.
func killedProducer() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "producer:", err); return 3 }
	c, err := openDB(os.Getenv(childDB))
	if err != nil {
		return fail(err)
	}
	conn, err := dialBroker("outbox-kill-producer")
	if err != nil {
		return fail(err)
	}
	client := worker.NewClient(conn)
	relay := outbox.NewRelay(c, client, outbox.RelayConfig{Poll: 100 * time.Millisecond})
	ctx := context.Background()
	if err := relay.Start(ctx); err != nil {
		return fail(err)
	}
	first, _ := strconv.Atoi(os.Getenv(childFirst))
	count, _ := strconv.Atoi(os.Getenv(childCount))
	delay, _ := strconv.Atoi(os.Getenv(childDelay))
	route := os.Getenv(childRoute)
	for n := first; n < first+count; n++ {
		err := c.InTx(ctx, func(tx *db.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO committed (n) VALUES ($1)`, n); err != nil {
				return err
			}
			_, err := outbox.Publish(ctx, tx, route, map[string]int{"n": n})
			return err
		})
		if err != nil {
			return fail(err)
		}
	}
	time.Sleep(time.Duration(delay) * time.Microsecond)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL cannot be caught
}
