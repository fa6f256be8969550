package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

// TestServiceKilledBetweenCommitAndPublish: the service binary, started
// with its test hook TEST_HOOK_KILL_AFTER_COMMIT=example-item.forward,
// takes one message on
// the idempotent route example-item.forward, commits its inbox row and the
// outbox message it forwards to example-item.store-once, and dies by
// SIGKILL right after the commit: before the ack and before its relay
// publishes. Run after run, then once without the hook: every item is
// stored exactly once, nothing stays in the outbox. 30 runs in the
// everyday suite, the 200 under test:effects (or OUTBOX_E2E_RUNS:
// about 0.5 s each on the
// 2-core development machine, each starting the race-built service and
// waiting until it answers).
func TestServiceKilledBetweenCommitAndPublish(t *testing.T) {
	runs := testenv.Count(t, "OUTBOX_E2E_RUNS", 30, 200)
	env := stack.NewEnv(t, bins)
	first := stack.Start(t, bins, env) // declares the queues
	if err := first.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Wait(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	client := env.Client(t)
	db := env.DB(t)
	tag := testenv.Name("forward-")
	count := func(q string) int {
		t.Helper()
		var n int
		if err := db.QueryRowContext(context.Background(), q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	start := time.Now()
	unpublished := 0
	for i := range runs {
		// Started and answering first: the copies the last kill left unacked
		// have been redelivered and acked as done by then. (Killed with
		// them unacked run after run, they would reach the queue's delivery
		// limit and be dead-lettered, as a crash-looping consumer's are.)
		p := stack.Start(t, bins, env, "TEST_HOOK_KILL_AFTER_COMMIT=example-item.forward")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := client.Publish(ctx, "example-item.forward", map[string]any{"string": fmt.Sprintf("%s-%d", tag, i), "integer": 1})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		code, err := p.Wait(60 * time.Second)
		if err != nil || code != -1 {
			t.Fatalf("run %d: exit code %d, %v; want death by SIGKILL after a commit. The end of its log:\n%s", i, code, err, p.Tail(10))
		}
		if count(`SELECT count(*) FROM outbox`) > 0 {
			unpublished++
		}
	}
	elapsed := time.Since(start)

	p := stack.Start(t, bins, env) // the next replica, without the hook
	rows, distinct := stack.WaitStored(t, db, tag, runs, 30*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for count(`SELECT count(*) FROM outbox`) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	left := count(`SELECT count(*) FROM outbox`)
	forwarded := count(`SELECT count(*) FROM inbox WHERE route = 'example-item.forward'`)
	ch := env.Channel(t)
	dead := len(stack.DeadLetters(t, ch, "example-item.forward")) + len(stack.DeadLetters(t, ch, "example-item.store-once"))
	t.Logf("%d runs killed after their commit in %s (%.1f s each); %d died with the forwarded message committed and not yet published; "+
		"then %d items stored (%d distinct), %d forwards in the inbox, %d left in the outbox, %d dead letters; %d copies acked by the restarted service's inbox",
		runs, elapsed.Round(time.Millisecond), elapsed.Seconds()/float64(runs), unpublished, rows, distinct, forwarded, left, dead,
		strings.Count(p.Logs(), "message handled before"))
	if distinct != runs {
		t.Errorf("lost: %d of %d forwarded items stored", distinct, runs)
	}
	if rows != distinct {
		t.Errorf("%d duplicate effects", rows-distinct)
	}
	if left != 0 || dead != 0 {
		t.Errorf("%d messages left in the outbox, %d dead letters; want none", left, dead)
	}
	if forwarded != runs {
		t.Errorf("%d forwards recorded in the inbox, want %d", forwarded, runs)
	}
	if unpublished < runs/2 {
		t.Errorf("only %d of %d runs died with the forwarded message unpublished: the kills did not fall between commit and publish", unpublished, runs)
	}
}
