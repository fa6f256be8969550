//go:build interop

package interop

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
	"example.com/service/test/stack"
)

// pyClientKinds are the Python clients of client.py.
var pyClientKinds = []struct {
	name string
	gzip bool // sends gzip JSON (application/octet-stream), wants it back
	desc string
}{
	{"lib", true, "the library's JSONGzipRPC/JSONGzipMaster"},
	{"aiojson", false, "aio-pika's JsonRPC/JsonMaster"},
	{"pika", true, "the seed's pika helper (gzip)"},
	{"pika-json", false, "the seed's pika helper, plain JSON"},
}

// TestPythonClientsToGoService calls every route of the Go service with
// each Python client, on success and on error, and publishes to its queue
// routes, checking the effect.
func TestPythonClientsToGoService(t *testing.T) {
	env := stack.NewEnv(t, bins)
	proc := stack.Start(t, bins, env)
	py := startPyClient(t, env.VHost)
	database := openDB(t, env.Database)
	amqpCh := env.Channel(t)

	catalog := bins.Routes(t)
	called := map[string]bool{}
	testRPCSemantics(t, env, proc, py)
	for _, kind := range pyClientKinds {
		publish := func(route string, data any) (pyAnswer, error) {
			called[route] = true
			return py.publish(kind.name, route, data)
		}
		call := func(route string, data any) (envelope, error) {
			called[route] = true
			return callService(py, proc, kind.name, kind.gzip, kind.desc, route, data)
		}
		prefix := kind.name + ": "

		check(t, prefix+"hello_world ok", func() error {
			return wantData(call("hello_world", nil))(`"Hello world!"`)
		})
		check(t, prefix+"test ok", func() error {
			return wantData(call("test", "foo"))(`"foo that took forever"`)
		})
		check(t, prefix+"will-error error", func() error {
			e, err := call("will-error", "foo")
			if err != nil {
				return err
			}
			if err := wantFailure(e, "Exception"); err != nil {
				return err
			}
			if m := e.str("message"); !strings.Contains(m, "Just an exception") || !strings.Contains(m, "foo") {
				return fmt.Errorf("error.message %q lacks %q or the data", m, "Just an exception")
			}
			return nil
		})
		check(t, prefix+"dictionary ok", func() error {
			return wantData(call("dictionary", map[string]any{"dictionary": "foo"}))(`{"dictionary":"foo","bar":"baz"}`)
		})
		check(t, prefix+"dictionary error (not an object)", func() error {
			return failed(call("dictionary", "not an object"))("")
		})
		check(t, prefix+"db ok", func() error {
			data, err := succeeded(call("db", nil))
			if err != nil {
				return err
			}
			var tables []string
			if err := json.Unmarshal(data, &tables); err != nil || !slices.Contains(tables, "simple") || !slices.Contains(tables, "example_item") {
				return fmt.Errorf("db answered %s, want the table names with simple and example_item", data)
			}
			return nil
		})
		check(t, prefix+"example-items ok (the seed's item shape)", func() error {
			match := testenv.Name("match me ")
			for _, s := range []string{match, match, "not " + match} {
				if _, err := database.Exec(`INSERT INTO example_item ("string", "integer", "json") VALUES ($1, 1, '{}')`, s); err != nil {
					return fmt.Errorf("insert an example item: %w", err)
				}
			}
			data, err := succeeded(call("example-items", match))
			if err != nil {
				return err
			}
			var items []map[string]json.RawMessage
			if err := json.Unmarshal(data, &items); err != nil || len(items) != 2 {
				return fmt.Errorf("example-items answered %s, want the 2 matching items", tail(string(data), 200))
			}
			return seedItemShape(items[0])
		})
		check(t, prefix+"example-items error (no data)", func() error {
			return failed(call("example-items", nil))("Exception")
		})

		// Routes of the Go service that the seed does not have: the item
		// shape is checked by example-items above; here only that each
		// Python client gets success and failure replies it can read.
		var id, key string // the item's key and its name, _id or id
		check(t, prefix+"example-item.create ok", func() error {
			s := testenv.Name("created by " + kind.name + " ")
			data, err := succeeded(call("example-item.create", map[string]any{"string": s, "integer": 3, "json": map[string]any{"k": []int{1, 2}}}))
			if err != nil {
				return err
			}
			var item map[string]json.RawMessage
			_ = json.Unmarshal(data, &item)
			if id, key = itemID(item); id == "" || !sameJSON(item["string"], mustJSON(s)) || !sameJSON(item["json"], []byte(`{"k":[1,2]}`)) {
				return fmt.Errorf("example-item.create answered %s", data)
			}
			return nil
		})
		check(t, prefix+"example-item.create error (no string)", func() error {
			return failed(call("example-item.create", map[string]any{"integer": 1}))("BadRequest")
		})
		check(t, prefix+"example-item.read ok", func() error {
			if id == "" {
				return fmt.Errorf("no item: example-item.create failed")
			}
			data, err := succeeded(call("example-item.read", id))
			if err != nil {
				return err
			}
			var item map[string]json.RawMessage
			_ = json.Unmarshal(data, &item)
			if got, _ := itemID(item); got != id {
				return fmt.Errorf("example-item.read %s answered %s", id, data)
			}
			return nil
		})
		check(t, prefix+"example-item.read error (no such id)", func() error {
			return failed(call("example-item.read", uuid.NewString()))("NotFound")
		})
		check(t, prefix+"example-item.update ok", func() error {
			if id == "" {
				return fmt.Errorf("no item: example-item.create failed")
			}
			data, err := succeeded(call("example-item.update", map[string]any{key: id, "changes": map[string]any{"integer": 9}}))
			if err != nil {
				return err
			}
			var item map[string]json.RawMessage
			if json.Unmarshal(data, &item) != nil || !sameJSON(item["integer"], []byte("9")) {
				return fmt.Errorf("example-item.update answered %s, want integer 9", data)
			}
			return nil
		})
		check(t, prefix+"example-item.update error (unknown column)", func() error {
			if key == "" {
				return fmt.Errorf("no item: example-item.create failed")
			}
			return failed(call("example-item.update", map[string]any{key: uuid.NewString(), "changes": map[string]any{"no_such_column": 1}}))("BadRequest")
		})
		check(t, prefix+"example-item.delete ok", func() error {
			if id == "" {
				return fmt.Errorf("no item: example-item.create failed")
			}
			_, err := succeeded(call("example-item.delete", id))
			return err
		})
		check(t, prefix+"example-item.delete error (no such id)", func() error {
			return failed(call("example-item.delete", uuid.NewString()))("NotFound")
		})

		// Queue routes: the effect of each message is observed.

		// rowStored adds the cell name: a message published to route with
		// a unique string (by, then the client's name) and integer must
		// become exactly one example_item row within limit; otherwise the
		// cell fails with missing, formatted with that string.
		rowStored := func(name, route, by string, integer int, limit time.Duration, missing string) {
			check(t, prefix+name, func() error {
				s := testenv.Name(by + kind.name + " ")
				if err := published(publish(route, map[string]any{"string": s, "integer": integer})); err != nil {
					return err
				}
				return waitFor(limit, func() bool { return countRows(database, s) == 1 }, missing, s)
			})
		}
		check(t, prefix+"queue-test publish (handled: in the service log)", func() error {
			marker := testenv.Name("queue-test from " + kind.name + " ")
			if err := published(publish("queue-test", marker)); err != nil {
				return err
			}
			return waitFor(10*time.Second, func() bool { return strings.Contains(proc.Logs(), marker) },
				"the service log does not show the queue-test message %q", marker)
		})
		rowStored("example-item.store publish (a row stored)", "example-item.store", "stored by ", 2,
			10*time.Second, "no example_item row with string %q after 10 s")
		check(t, prefix+"example-item.store error (dead-lettered)", func() error {
			marker := testenv.Name("too long from " + kind.name + " ")
			if err := published(publish("example-item.store", map[string]any{"string": strings.Repeat("x", 300) + marker})); err != nil {
				return err
			}
			return waitDeadLetter(amqpCh, "example-item.store.dlq", marker, 15*time.Second)
		})
		// The idempotent routes, from clients that send no message id: the
		// inbox cannot deduplicate those, and still handles them.
		rowStored("example-item.store-once publish (a row stored)", "example-item.store-once", "stored once by ", 3,
			10*time.Second, "no example_item row with string %q after 10 s")
		rowStored("example-item.forward publish (through the outbox to store-once, a row stored)", "example-item.forward", "forwarded by ", 4,
			15*time.Second, "no example_item row with string %q 15 s after forwarding it")
	}
	check(t, "every route of the service's catalog is called above", func() error {
		var missing []string
		for _, r := range catalog {
			if !called[r.Name] {
				missing = append(missing, r.Kind+" "+r.Name)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("`service routes` lists routes no Python client called: %s; add cells for them", strings.Join(missing, ", "))
		}
		return nil
	})
}

// testRPCSemantics checks what aio-pika's RPC client relies on besides the
// reply: a call to no queue comes back returned, and a call that expires in
// a busy route's queue comes back as a timeout, through the dead-letter
// exchange rpc.dlx that aio-pika declares its RPC queues with.
func testRPCSemantics(t *testing.T, env stack.Env, proc *stack.Process, py *pyClient) {
	check(t, "lib: no such route (the broker returns the call)", func() error {
		start := time.Now()
		a, err := py.call("lib", "no-such-route", 1)
		if err != nil {
			return err
		}
		if a.OK || a.Exception.Type != "MessageProcessError" || time.Since(start) > 2*time.Second {
			return fmt.Errorf("JSONGzipRPC.call to no queue: ok %v, %v after %s; want MessageProcessError at once", a.OK, a.Exception, time.Since(start))
		}
		return nil
	})
	filler := startPyClient(t, env.VHost)
	ch := env.Channel(t)
	check(t, "lib: a call that expires in a busy route's queue (timeout via rpc.dlx)", func() error {
		// Fill the route "test" (one second per call) past the worker's
		// prefetch, so that the next call waits in the queue.
		fillers := make([]any, worker.DefaultPrefetch+5)
		for i := range fillers {
			fillers[i] = "busy"
		}
		done := make(chan error, 1)
		go func() {
			_, err := filler.do(map[string]any{"op": "calls", "client": "lib", "route": "test", "items": fillers, "concurrency": len(fillers), "timeout": 15}, time.Minute)
			done <- err
		}()
		defer func() { <-done }()
		if err := waitFor(10*time.Second, func() bool {
			q, err := ch.QueueDeclarePassive("test", false, false, false, false, nil)
			return err == nil && q.Messages > 0
		}, "the route test never had calls waiting in its queue"); err != nil {
			return withRefusal(err, proc)
		}
		start := time.Now()
		a, err := py.do(map[string]any{"op": "call", "client": "lib", "route": "test", "data": "late", "timeout": 8, "expiration": 0.2}, 20*time.Second)
		took := time.Since(start).Round(10 * time.Millisecond)
		if err != nil {
			return err
		}
		if a.OK {
			return fmt.Errorf("the call was answered (%s) although it expired in the queue", tail(string(a.Result), 80))
		}
		if !strings.Contains(a.Exception.Repr, "Message timed-out") {
			return fmt.Errorf("JSONGzipRPC.call(expiration=0.2) raised %s after %s; want aio-pika's TimeoutError('Message timed-out') "+
				"as soon as the request expires: a queue with x-dead-letter-exchange rpc.dlx sends it back to the caller, "+
				"a queue without one drops it and the caller waits forever", tail(a.Exception.Repr, 60), took)
		}
		return nil
	})
}

// withRefusal adds to err the Go service's refusal of a request's
// reply_to, when its log shows one: the caller then gets no reply at all.
func withRefusal(err error, proc *stack.Process) error {
	const refused = "its reply_to is not a reply queue"
	logs := proc.Logs()
	i := strings.LastIndex(logs, refused)
	if err == nil || i < 0 {
		return err
	}
	line := logs[i:]
	if j := strings.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	replyTo := ""
	if k := strings.Index(line, "reply_to="); k >= 0 {
		replyTo = strings.Fields(line[k:])[0]
	}
	return fmt.Errorf("%w; the Go service refused the request unanswered (%s, %s): aio-pika names its reply queues amq_<random>", err, refused, replyTo)
}

// callService calls route of the Go service proc with the Python client
// client and reads the reply as replyOf does; an error says, where proc
// refused the call's reply_to, that it did.
func callService(py *pyClient, proc *stack.Process, client string, gz bool, desc, route string, data any) (envelope, error) {
	a, err := py.call(client, route, data)
	if err != nil {
		return envelope{}, err
	}
	e, err := replyOf(client, gz, desc, a)
	return e, withRefusal(err, proc)
}

// replyOf turns client.py's answer into the reply envelope, checking the
// encoding: a gzip client must get gzip back, a plain one plain JSON.
func replyOf(client string, gz bool, desc string, a pyAnswer) (envelope, error) {
	if !a.OK {
		hint := ""
		if a.Props != nil {
			hint = fmt.Sprintf(" (the reply had AMQP type %v, content type %v)", a.Props["type"], a.Props["content_type"])
		}
		return envelope{}, fmt.Errorf("%s raised %s%s", desc, a.Exception.Repr, hint)
	}
	if a.Raw != "" || client == "pika" || client == "pika-json" {
		if a.Gzipped != gz {
			return envelope{}, fmt.Errorf("%s sent %s and got a %s reply", desc, encodingName(gz), encodingName(a.Gzipped))
		}
	}
	return parseEnvelope(a.Result)
}

func encodingName(gz bool) string {
	if gz {
		return "gzip"
	}
	return "plain JSON"
}

// failed checks that a call's reply (envelope, error) is a failure of
// error type typ ("": any type), shaped as the Python library's.
func failed(e envelope, err error) func(typ string) error {
	return func(typ string) error {
		if err != nil {
			return err
		}
		return wantFailure(e, typ)
	}
}

// succeeded returns the data of a call's reply (envelope, error) that must
// be a success.
func succeeded(e envelope, err error) (json.RawMessage, error) {
	if err != nil {
		return nil, err
	}
	return wantSuccess(e)
}

// wantData checks that a call's reply (envelope, error) is a success with
// data want (as JSON, numbers compared exactly).
func wantData(e envelope, err error) func(want string) error {
	return func(want string) error {
		if err != nil {
			return err
		}
		data, err := wantSuccess(e)
		if err != nil {
			return err
		}
		if !sameJSON(data, []byte(want)) {
			return fmt.Errorf("reply data is %s, want %s", tail(string(data), 200), want)
		}
		return nil
	}
}

// seedItemShape checks an item against the seed's example_item row:
// exactly the columns _id, string, integer, json.
func seedItemShape(item map[string]json.RawMessage) error {
	var keys []string
	for k := range item {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"_id", "integer", "json", "string"}; !slices.Equal(keys, want) {
		return fmt.Errorf("an item has the fields %v; the seed's example_item has %v", keys, want)
	}
	return nil
}

// itemID is the key of an item and its name: the seed's _id, or the Go
// service's id.
func itemID(item map[string]json.RawMessage) (id, name string) {
	for _, name := range []string{"_id", "id"} {
		if json.Unmarshal(item[name], &id) == nil && id != "" {
			return id, name
		}
	}
	return "", ""
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// published checks a publish answer of client.py.
func published(a pyAnswer, err error) error {
	switch {
	case err != nil:
		return err
	case !a.OK:
		return fmt.Errorf("publish raised %s", a.Exception.Repr)
	case a.Returned:
		return fmt.Errorf("the broker returned the message: no queue for the route")
	}
	return nil
}

// waitFor polls cond for up to timeout; then it fails with the message.
func waitFor(timeout time.Duration, cond func() bool, format string, args ...any) error {
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf(format, args...)
		}
	}
	return nil
}

// openDB opens the env's database as the tests' superuser.
func openDB(t *testing.T, name string) *sql.DB {
	t.Helper()
	database, err := sql.Open("pgx", testenv.PostgresURL(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = database.Close() })
	return database
}

func countRows(database *sql.DB, s string) int {
	var n int
	if err := database.QueryRowContext(context.Background(), `SELECT count(*) FROM example_item WHERE "string" = $1`, s).Scan(&n); err != nil {
		return -1
	}
	return n
}

// countPrefix counts the example items whose string starts with prefix.
func countPrefix(database *sql.DB, prefix string) (map[string]int, error) {
	rows, err := database.QueryContext(context.Background(), `SELECT "string" FROM example_item WHERE starts_with("string", $1)`, prefix)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out[s]++
	}
	return out, rows.Err()
}

// gunzipIf returns b decompressed when it is gzip data.
func gunzipIf(b []byte) []byte {
	if bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		if out, err := stack.Gunzip(b); err == nil {
			return out
		}
	}
	return b
}
