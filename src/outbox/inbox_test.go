package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"example.com/service/src/db"
	"example.com/service/src/outbox"
	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// inboxDB is a scratch database with the models' tables and effect(n).
func inboxDB(t *testing.T) *db.Client {
	t.Helper()
	testenv.RequirePostgres(t)
	url, drop := scratchDB(`CREATE TABLE effect (n int NOT NULL)`)
	t.Cleanup(drop)
	c, err := openDB(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestIdempotentMiddleware, on the middleware alone: a second delivery of
// a message id does not run the handler; a failing handler leaves no inbox
// row (so the retry runs it) and none of its writes; a message without an
// id runs every time, without a transaction; a very long id is recorded by
// its hash.
func TestIdempotentMiddleware(t *testing.T) {
	c := inboxDB(t)
	ctx := context.Background()
	inbox := outbox.NewInbox(c, outbox.InboxConfig{})
	fail := true
	runs := 0
	h := inbox.Idempotent()(worker.HandlerFunc(func(ctx context.Context, req *worker.Request) ([]byte, error) {
		runs++
		tx, ok := db.TxFrom(ctx)
		if !ok {
			if req.MessageID != "" {
				return nil, errors.New("no transaction on ctx")
			}
			_, err := c.Exec(ctx, `INSERT INTO effect (n) VALUES (0)`)
			return nil, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO effect (n) VALUES (1)`); err != nil {
			return nil, err
		}
		if fail && req.MessageID == "m-1" {
			return nil, errors.New("handler failed")
		}
		return nil, nil
	}))
	serve := func(id string) error {
		_, err := h.Serve(ctx, &worker.Request{Route: "r", MessageID: id, Data: json.RawMessage(`null`)})
		return err
	}
	count := func(q string) int {
		var n int
		if err := c.Get(ctx, &n, q); err != nil {
			t.Fatal(err)
		}
		return n
	}

	if err := serve("m-1"); err == nil || !strings.Contains(err.Error(), "handler failed") {
		t.Fatalf("failing handler: %v", err)
	}
	if n := count(`SELECT count(*) FROM inbox`) + count(`SELECT count(*) FROM effect`); n != 0 {
		t.Errorf("a failed handler left %d rows (inbox + effect), want 0: its transaction rolled back", n)
	}
	fail = false
	for range 3 {
		if err := serve("m-1"); err != nil {
			t.Fatal(err)
		}
	}
	if runs != 2 || count(`SELECT count(*) FROM effect WHERE n = 1`) != 1 || inbox.Skipped() != 2 {
		t.Errorf("m-1 three times after a failure: handler ran %d times (want 2), %d effects (want 1), %d skipped (want 2)",
			runs, count(`SELECT count(*) FROM effect WHERE n = 1`), inbox.Skipped())
	}
	for range 2 {
		if err := serve(""); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(`SELECT count(*) FROM effect WHERE n = 0`); n != 2 {
		t.Errorf("a message without an id twice: %d effects, want 2 (handled as on a plain route)", n)
	}
	long := strings.Repeat("x", 1000)
	if err := serve(long); err != nil {
		t.Fatal(err)
	}
	if err := serve(long); err != nil {
		t.Fatal(err)
	}
	if n := count(`SELECT count(*) FROM inbox WHERE message_id LIKE 'sha256:%'`); n != 1 || inbox.Skipped() != 3 {
		t.Errorf("a 1000-byte id twice: %d hashed inbox rows (want 1), %d skipped in all (want 3)", n, inbox.Skipped())
	}
	var none *outbox.Inbox
	if _, err := none.Idempotent()(h).Serve(ctx, &worker.Request{Route: "r", MessageID: "x"}); err == nil || !strings.Contains(err.Error(), `"r" has no inbox`) {
		t.Errorf("nil inbox: %v", err)
	}
}

// TestInboxPrunes: while the Inbox runs, rows older than the retention are
// deleted on its schedule and younger ones kept.
func TestInboxPrunes(t *testing.T) {
	c := inboxDB(t)
	ctx := context.Background()
	if _, err := c.Exec(ctx, `INSERT INTO inbox (route, message_id, handled_at)
		SELECT 'r', 'old-' || i, now() - interval '2 hours' FROM generate_series(1, 25000) i
		UNION ALL SELECT 'r', 'new-' || i, now() - interval '30 minutes' FROM generate_series(1, 10) i`); err != nil {
		t.Fatal(err)
	}
	inbox := outbox.NewInbox(c, outbox.InboxConfig{Retention: time.Hour, PruneEvery: 50 * time.Millisecond})
	if err := inbox.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = inbox.Shutdown(context.Background()) })
	var old, young int
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err := c.Get(ctx, &old, `SELECT count(*) FROM inbox WHERE message_id LIKE 'old-%'`); err != nil {
			t.Fatal(err)
		}
		if old == 0 {
			break
		}
	}
	// A row older than the retention arriving later goes at a later tick.
	if _, err := c.Exec(ctx, `INSERT INTO inbox (route, message_id, handled_at) VALUES ('r', 'late', now() - interval '3 hours')`); err != nil {
		t.Fatal(err)
	}
	var late int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err := c.Get(ctx, &late, `SELECT count(*) FROM inbox WHERE message_id = 'late'`); err != nil {
			t.Fatal(err)
		}
		if late == 0 {
			break
		}
	}
	if err := c.Get(ctx, &young, `SELECT count(*) FROM inbox WHERE message_id LIKE 'new-%'`); err != nil {
		t.Fatal(err)
	}
	if old != 0 || late != 0 || young != 10 {
		t.Errorf("after pruning with a retention of 1h: %d of 25000 old rows left, late row left %d, %d of 10 young rows kept", old, late, young)
	}
	if err := inbox.Shutdown(ctx); err != nil {
		t.Error(err)
	}
}

// TestAfterCommit: the hook runs once per message whose handler ran and
// committed; not for a failure, not for a skipped repeat.
func TestAfterCommit(t *testing.T) {
	c := inboxDB(t)
	ctx := context.Background()
	var calls []string
	inbox := outbox.NewInbox(c, outbox.InboxConfig{AfterCommit: func(route, id string) { calls = append(calls, route+" "+id) }})
	fail := true
	h := inbox.Idempotent()(worker.HandlerFunc(func(context.Context, *worker.Request) ([]byte, error) {
		if fail {
			return nil, errors.New("failed")
		}
		return nil, nil
	}))
	for _, f := range []bool{true, false, false} {
		fail = f
		_, _ = h.Serve(ctx, &worker.Request{Route: "r", MessageID: "m", Data: json.RawMessage(`null`)})
	}
	if len(calls) != 1 || calls[0] != "r m" {
		t.Errorf("AfterCommit calls %q, want one for r m", calls)
	}
}
