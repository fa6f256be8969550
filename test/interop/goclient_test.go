//go:build interop

package interop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
	"example.com/service/test/stack"
)

// TestGoClientToPythonWorker calls a Python RPC worker and publishes to a
// Python queue worker, both built with the library, with the Go client as
// a Go service ported from the fleet would: worker.NewClient with its
// defaults.
func TestGoClientToPythonWorker(t *testing.T) {
	env := stack.Env{VHost: stack.NewVHost(t)}
	svc := startPython(t, env.VHost, "service.py",
		"--rpc", "py.echo=echo", "--rpc", "py.raise=raise", "--rpc", "py.sleep=sleep",
		"--queue", "py.record=record", "--queue", "py.queue-raise=queue-raise")
	if err := svc.ready(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	client := env.Client(t)
	ch := env.Channel(t)
	// A message the library cannot decode is requeued at once, forever:
	// empty its queues when done, or the loop outlives the test.
	t.Cleanup(func() { purge(ch, "py.record", "py.queue-raise") })

	ctxFor := func(d time.Duration) (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), d)
	}

	check(t, "rpc success", func() error {
		ctx, cancel := ctxFor(5 * time.Second)
		defer cancel()
		want := `{"a":"b","n":[1,2.5,null]}`
		var got json.RawMessage
		if err := client.Call(ctx, "py.echo", json.RawMessage(want), &got); err != nil {
			return undecodedBy(svc, err)
		}
		if !sameJSON(got, []byte(want)) {
			return fmt.Errorf("py.echo answered %s, want %s", got, want)
		}
		return nil
	})
	check(t, "rpc Python exception (type, message, args, trace)", func() error {
		ctx, cancel := ctxFor(5 * time.Second)
		defer cancel()
		err := client.Call(ctx, "py.raise", "x", nil)
		var remote *worker.RemoteError
		if !errors.As(err, &remote) {
			return undecodedBy(svc, fmt.Errorf("Call returned %w, want a *worker.RemoteError", err))
		}
		var problems []string
		if remote.Type != "ValueError" {
			problems = append(problems, fmt.Sprintf("Type %q, want ValueError", remote.Type))
		}
		if remote.Message != "ValueError('boom', 42)" {
			problems = append(problems, fmt.Sprintf("Message %q, want %q", remote.Message, "ValueError('boom', 42)"))
		}
		if args, ok := remoteArgs(remote); !ok {
			problems = append(problems, "RemoteError has no Args field to hold the Python args [\"boom\", 42]")
		} else if b, _ := json.Marshal(args); !sameJSON(b, []byte(`["boom",42]`)) {
			problems = append(problems, fmt.Sprintf("Args %s, want [\"boom\",42]", b))
		}
		if !strings.Contains(remote.Trace, "ValueError") {
			problems = append(problems, fmt.Sprintf("Trace %q lacks the Python traceback", tail(remote.Trace, 80)))
		}
		if len(problems) > 0 {
			return errors.New(strings.Join(problems, "; "))
		}
		return nil
	})
	check(t, "rpc no such route", func() error {
		ctx, cancel := ctxFor(5 * time.Second)
		defer cancel()
		start := time.Now()
		err := client.Call(ctx, "py.no-such-route", "x", nil)
		if !errors.Is(err, worker.ErrNoRoute) {
			return fmt.Errorf("Call returned %w, want ErrNoRoute", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			return fmt.Errorf("ErrNoRoute came after %s, want it at once", took)
		}
		return nil
	})
	check(t, "rpc caller's deadline (Python handler slower)", func() error {
		ctx, cancel := ctxFor(700 * time.Millisecond)
		defer cancel()
		err := client.Call(ctx, "py.sleep", 2, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("Call returned %w, want context.DeadlineExceeded", err)
		}
		// The deadline is only meaningful if the request reached the
		// handler: the Python worker must have run it.
		if _, err := svc.waitHandled("py.sleep", 3*time.Second, func(json.RawMessage) bool { return true }); err != nil {
			return err
		}
		return nil
	})
	check(t, "queue success (handled by the Python worker)", func() error {
		ctx, cancel := ctxFor(5 * time.Second)
		defer cancel()
		marker := testenv.Name("to python ")
		if err := client.Publish(ctx, "py.record", map[string]any{"marker": marker}); err != nil {
			return err
		}
		_, err := svc.waitHandled("py.record", 5*time.Second, func(d json.RawMessage) bool { return strings.Contains(string(d), marker) })
		return err
	})
	check(t, "queue Python exception (handled once, not requeued)", func() error {
		ctx, cancel := ctxFor(5 * time.Second)
		defer cancel()
		marker := testenv.Name("to python raising ")
		if err := client.Publish(ctx, "py.queue-raise", marker); err != nil {
			return err
		}
		match := func(d json.RawMessage) bool { return strings.Contains(string(d), marker) }
		if _, err := svc.waitHandled("py.queue-raise", 5*time.Second, match); err != nil {
			return err
		}
		time.Sleep(time.Second)
		n := 0
		for _, ev := range svc.eventsOf("handled", "py.queue-raise") {
			if match(ev.Data) {
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("the Python handler ran %d times, want once (the library acks a failed handler's message)", n)
		}
		return nil
	})
	check(t, "queue no such route", func() error {
		ctx, cancel := ctxFor(5 * time.Second)
		defer cancel()
		if err := client.Publish(ctx, "py.no-such-queue", 1); !errors.Is(err, worker.ErrNoRoute) {
			return fmt.Errorf("Publish returned %w, want ErrNoRoute", err)
		}
		return nil
	})
}

// remoteArgs reads RemoteError.Args, which issue 15 adds: read by name so
// that this test compiles before and after.
func remoteArgs(e *worker.RemoteError) (any, bool) {
	f := reflect.ValueOf(e).Elem().FieldByName("Args")
	if !f.IsValid() {
		return nil, false
	}
	return f.Interface(), true
}
