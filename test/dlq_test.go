package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

// The dead-letter commands against the running service: an item the
// database refuses (a constraint added for the test: the fault) is
// dead-lettered; `service dlq list` counts it and `dlq show` prints its
// error; once the constraint is dropped (the fault fixed) `dlq replay`
// moves it back, the service stores it exactly once, and the dead-letter
// queue is empty.
func TestDeadLetterReplay(t *testing.T) {
	env := stack.NewEnv(t, bins)
	stack.Start(t, bins, env)
	db := env.DB(t)
	if _, err := db.Exec(`ALTER TABLE example_item ADD CONSTRAINT dlq_fault CHECK ("string" NOT LIKE 'dlq-fault%')`); err != nil {
		t.Fatal(err)
	}
	client := env.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := testenv.Name("dlq-fault ")
	if err := client.Publish(ctx, "example-item.store", map[string]any{"string": s, "integer": 7}); err != nil {
		t.Fatal(err)
	}
	var out, errOut string
	var code int
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, errOut, code = cli(t, env, "", "dlq", "list")
		if code == 0 && dlqCount(out, "example-item.store") == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dlq list never showed the dead letter: exit %d\n%s%s", code, out, errOut)
		}
	}
	out, errOut, code = cli(t, env, "", "dlq", "show", "example-item.store")
	if code != 0 || !strings.Contains(out, "1 dead letters") || !strings.Contains(out, "dlq_fault") || !strings.Contains(out, s) {
		t.Fatalf("dlq show: exit %d, want the count, the constraint's name and the body:\n%s%s", code, out, errOut)
	}
	t.Logf("dlq show:\n%s", out)

	if _, err := db.Exec(`ALTER TABLE example_item DROP CONSTRAINT dlq_fault`); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = cli(t, env, "", "dlq", "replay", "example-item.store", "--limit", "5")
	if code != 0 || !strings.Contains(out, "replayed 1 dead letters") {
		t.Fatalf("dlq replay: exit %d\n%s%s", code, out, errOut)
	}
	waitForItems(t, client, s, 1)
	time.Sleep(500 * time.Millisecond) // room for a second copy to show
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM example_item WHERE "string" = $1`, s).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("the replayed item is stored %d times, want once", n)
	}
	out, _, _ = cli(t, env, "", "dlq", "list", "example-item.store")
	if got := dlqCount(out, "example-item.store"); got != "0" {
		t.Fatalf("after the replay dlq list shows %q dead letters, want 0:\n%s", got, out)
	}
}

// dlqCount is the DEAD LETTERS column of route's row in `dlq list`.
func dlqCount(out, route string) string {
	for line := range strings.SplitSeq(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == route {
			return f[1]
		}
	}
	return ""
}
