package e2e

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
	"example.com/service/test/stack"
)

// caller sends one request and returns the reply in the seed's envelope
// form, so both clients are checked against the same expectations.
type caller func(t *testing.T, route string, data any) stack.Envelope

// callers returns the two ways a request reaches the service: the project's
// client (JSON, direct reply-to) and a plain amqp091-go client speaking the
// seed's format (gzip, exclusive reply queue).
func callers(t *testing.T, env stack.Env) map[string]caller {
	client := env.Client(t)
	seed := stack.NewSeedClient(t, env)
	return map[string]caller{
		"client": func(t *testing.T, route string, data any) stack.Envelope {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out json.RawMessage
			err := client.Call(ctx, route, data, &out)
			var remote *worker.RemoteError
			switch {
			case err == nil:
				return stack.Envelope{Success: true, Data: out}
			case errors.As(err, &remote):
				e := stack.Envelope{}
				e.Error = &struct {
					Type    string `json:"type"`
					Message string `json:"message"`
				}{remote.Type, remote.Message}
				return e
			default:
				t.Fatalf("call %s(%v): %v", route, data, err)
				return stack.Envelope{}
			}
		},
		"seed": func(t *testing.T, route string, data any) stack.Envelope {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			r, err := seed.Call(ctx, route, data)
			if err != nil {
				t.Fatalf("seed call %s(%v): %v", route, data, err)
			}
			if !r.Gzipped {
				t.Errorf("%s answered a gzip request with an uncompressed reply", route)
			}
			return r.Envelope
		},
	}
}

// TestService starts one service process and checks every route through
// both clients.
func TestService(t *testing.T) {
	env := stack.NewEnv(t, bins)
	p := stack.Start(t, bins, env)

	admin := env.DB(t)
	for name, call := range callers(t, env) {
		t.Run(name, func(t *testing.T) { testRoutes(t, call, admin) })
	}
	t.Run("queue routes", func(t *testing.T) { testQueueRoutes(t, env, p) })
	t.Run("20 concurrent one-second calls", func(t *testing.T) { testConcurrency(t, env) })
	t.Run("malformed messages", func(t *testing.T) { testMalformed(t, env) })
}

func testRoutes(t *testing.T, call caller, admin *sql.DB) {
	t.Run("hello_world", func(t *testing.T) {
		for _, data := range []any{nil, "anything", map[string]any{"x": 1}} {
			wantData(t, call(t, "hello_world", data), `"Hello world!"`)
		}
	})
	t.Run("test", func(t *testing.T) {
		wantData(t, call(t, "test", "foo"), `"foo that took forever"`)
	})
	t.Run("will-error", func(t *testing.T) {
		e := wantError(t, call(t, "will-error", "some data"), "Exception")
		if !strings.Contains(e.Message, "Just an exception") || !strings.Contains(e.Message, "some data") {
			t.Errorf("will-error message = %q, want it to contain %q and the data", e.Message, "Just an exception")
		}
	})
	t.Run("dictionary", func(t *testing.T) {
		wantData(t, call(t, "dictionary", map[string]any{"foo": 1, "nested": []int{1}}), `{"foo":1,"nested":[1],"bar":"baz"}`)
		wantError(t, call(t, "dictionary", "not an object"), "TypeError") // the seed's route raised a TypeError
	})
	t.Run("db", func(t *testing.T) {
		// The tables the .sql files made, as PostgreSQL lists them.
		tables := testenv.Strings(t, admin, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`)
		want, _ := json.Marshal(tables)
		wantData(t, call(t, "db", nil), string(want))
	})
	t.Run("example items", func(t *testing.T) {
		s := testenv.Name("e2e item ")
		wantData(t, call(t, "example-items", s), `[]`)
		e := wantError(t, call(t, "example-items", nil), "Exception") // as the seed's route
		if !strings.Contains(e.Message, "example-items needs a string") {
			t.Errorf("example-items without data: message %q does not say what is missing", e.Message)
		}

		var created struct {
			ID      string          `json:"_id"`
			String  string          `json:"string"`
			Integer int             `json:"integer"`
			JSON    json.RawMessage `json:"json"`
		}
		decode(t, wantSuccess(t, call(t, "example-item.create", map[string]any{
			"string": s, "integer": 7, "json": map[string]any{"tags": []string{"a", "b"}},
		})), &created)
		if created.ID == "" || created.String != s || created.Integer != 7 || !jsonEqual(created.JSON, `{"tags":["a","b"]}`) {
			t.Fatalf("example-item.create returned %+v", created)
		}
		item := fmt.Sprintf(`{"_id":%q,"string":%q,"integer":7,"json":{"tags":["a","b"]}}`, created.ID, s)

		wantData(t, call(t, "example-item.read", created.ID), item)
		wantData(t, call(t, "example-items", s), "["+item+"]")
		wantError(t, call(t, "example-item.read", "0b5ab9a3-6f6a-4a39-9f0d-1f2a7f5e8a11"), "NotFound")
		wantError(t, call(t, "example-item.read", "not-a-uuid"), "BadRequest")
		wantError(t, call(t, "example-item.create", map[string]any{"integer": 1}), "BadRequest")

		updated := fmt.Sprintf(`{"_id":%q,"string":%q,"integer":8,"json":{"tags":["a","b"]}}`, created.ID, s)
		wantData(t, call(t, "example-item.update", map[string]any{"_id": created.ID, "changes": map[string]any{"integer": 8}}), updated)
		e = wantError(t, call(t, "example-item.update", map[string]any{"_id": created.ID, "changes": map[string]any{"no_such_column": 1}}), "BadRequest")
		if !strings.Contains(e.Message, "no_such_column") {
			t.Errorf("update of an unknown column: message %q does not name it", e.Message)
		}
		for _, bad := range []map[string]any{{"integer": 8.5}, {"integer": 40000}, {"string": 5}, {"string": nil}} {
			e = wantError(t, call(t, "example-item.update", map[string]any{"_id": created.ID, "changes": bad}), "BadRequest")
			for column := range bad {
				if !strings.Contains(e.Message, column) {
					t.Errorf("update with %v: message %q does not name the column", bad, e.Message)
				}
			}
		}
		wantData(t, call(t, "example-item.read", created.ID), updated) // refused updates changed nothing

		wantData(t, call(t, "example-item.delete", created.ID), updated)
		wantError(t, call(t, "example-item.read", created.ID), "NotFound")
		wantError(t, call(t, "example-item.delete", created.ID), "NotFound")
	})
}

func testQueueRoutes(t *testing.T, env stack.Env, p *stack.Process) {
	client := env.Client(t)
	seed := stack.NewSeedClient(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("example-item.store stores what the project client publishes", func(t *testing.T) {
		s := testenv.Name("stored by client ")
		if err := client.Publish(ctx, "example-item.store", map[string]any{"string": s, "integer": 3}); err != nil {
			t.Fatal(err)
		}
		waitForItems(t, client, s, 1)
	})
	t.Run("example-item.store stores what a seed-style publisher sends", func(t *testing.T) {
		s := testenv.Name("stored by seed ")
		body, _ := json.Marshal(map[string]any{"data": map[string]any{"string": s, "integer": 4}})
		if err := seed.Publish(ctx, "example-item.store", amqp.Publishing{ContentType: "application/octet-stream", Body: stack.Gzip(body)}); err != nil {
			t.Fatal(err)
		}
		waitForItems(t, client, s, 1)
	})
	t.Run("queue-test logs what it receives", func(t *testing.T) {
		marker := testenv.Name("hello queue ")
		if err := client.Publish(ctx, "queue-test", marker); err != nil {
			t.Fatal(err)
		}
		waitForEmpty(t, env, "queue-test")
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(p.Logs(), marker); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the service log does not show the queue-test message %q", marker)
			}
		}
	})
	t.Run("a message that breaks the item rules is dead-lettered", func(t *testing.T) {
		s := testenv.Name("too long ")
		bad := strings.Repeat("x", 300) + s
		if err := client.Publish(ctx, "example-item.store", map[string]any{"string": bad}); err != nil {
			t.Fatal(err)
		}
		d := waitForDeadLetter(t, env, "example-item.store", s)
		if got := fmt.Sprint(d.Headers[worker.HeaderErrorType]); got != "BadRequest" {
			t.Errorf("dead letter %s header = %q, want BadRequest", worker.HeaderErrorType, got)
		}
		if msg := fmt.Sprint(d.Headers[worker.HeaderError]); !strings.Contains(msg, "at most 255") {
			t.Errorf("dead letter %s header = %q, want the reason", worker.HeaderError, msg)
		}
	})
}

func testConcurrency(t *testing.T, env stack.Env) {
	client := env.Client(t)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var got string
			if err := client.Call(ctx, "test", fmt.Sprint(i), &got); err != nil {
				errs <- err
				return
			}
			if want := fmt.Sprint(i) + " that took forever"; got != want {
				errs <- fmt.Errorf("call %d: got %q, want %q", i, got, want)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("20 concurrent one-second calls took %s; handled one at a time?", took)
	}
}

// --- helpers ---

func wantSuccess(t *testing.T, e stack.Envelope) json.RawMessage {
	t.Helper()
	if !e.Success {
		t.Fatalf("reply is a failure: %+v", e.Error)
	}
	return e.Data
}

func wantData(t *testing.T, e stack.Envelope, want string) {
	t.Helper()
	if got := wantSuccess(t, e); !jsonEqual(got, want) {
		t.Errorf("reply data = %s, want %s", got, want)
	}
}

// wantError checks that e is a failure of type typ ("" accepts any type).
func wantError(t *testing.T, e stack.Envelope, typ string) (out struct{ Type, Message string }) {
	t.Helper()
	if e.Success || e.Error == nil {
		t.Fatalf("reply = success %s, want a failure of type %q", e.Data, typ)
	}
	if typ != "" && e.Error.Type != typ {
		t.Errorf("error type = %q (message %q), want %q", e.Error.Type, e.Error.Message, typ)
	}
	if e.Error.Message == "" {
		t.Errorf("error of type %q has no message", e.Error.Type)
	}
	return struct{ Type, Message string }{e.Error.Type, e.Error.Message}
}

func decode(t *testing.T, data json.RawMessage, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decode %s: %v", data, err)
	}
}

func jsonEqual(a json.RawMessage, b string) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	xs, _ := json.Marshal(x)
	ys, _ := json.Marshal(y)
	return string(xs) == string(ys)
}

// waitForItems polls example-items until n items with string s exist.
func waitForItems(t *testing.T, client *worker.Client, s string, n int) {
	t.Helper()
	var items []map[string]any
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := client.Call(ctx, "example-items", s, &items)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == n {
			return
		}
	}
	t.Fatalf("want %d items with string %q, have %d", n, s, len(items))
}

// waitForEmpty waits until queue has no ready and no unacked messages.
func waitForEmpty(t *testing.T, env stack.Env, queue string) {
	t.Helper()
	ch := env.Channel(t)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if q.Messages == 0 {
			return
		}
	}
	t.Fatalf("queue %s still holds messages", queue)
}

// waitForDeadLetter reads <route>.dlq until a message whose message id is
// marker or whose body contains it arrives, and returns it. Every message
// read is acked: the test's vhost is its own.
func waitForDeadLetter(t *testing.T, env stack.Env, route, marker string) amqp.Delivery {
	t.Helper()
	ch := env.Channel(t)
	var seen []string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		d, ok, err := ch.Get(route+".dlq", false)
		if err != nil {
			t.Fatalf("read %s.dlq: %v", route, err)
		}
		if !ok {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		body := d.Body
		if plain, err := stack.Gunzip(body); err == nil { // the project's client gzips by default
			body = plain
		}
		if d.MessageId == marker || strings.Contains(string(body), marker) {
			_ = d.Ack(false)
			return d
		}
		seen = append(seen, string(body))
		_ = d.Ack(false)
	}
	t.Fatalf("no dead letter containing %q in %s.dlq (saw %d others: %q)", marker, route, len(seen), seen[:min(len(seen), 3)])
	return amqp.Delivery{}
}
