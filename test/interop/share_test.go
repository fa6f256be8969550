//go:build interop

package interop

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

// shareCalls is how many calls or messages each client sends to a shared
// route.
const shareCalls = 1000

// goShareEnv is the configuration a Go replica runs with to share routes
// with Python replicas: the documented compatibility settings (README,
// "Configuration"). Queue routes: classic queues, declared as the seed
// declares them. RPC routes need none once they are declared as aio-pika
// declares them.
var goShareEnv = []string{"BROKER_QUEUE_TYPE=classic"}

// TestSharedRoutes runs a Go replica (the service binary) and a Python
// replica (the library) on one RPC route (dictionary) and, separately, one
// queue route (example-item.store), each starting first in turn, and sends
// 1,000 calls or messages from the Python library's client and 1,000 from
// the Go client: each must be answered or handled once, and both replicas
// must take a share. A Go replica whose settings clash with the Python
// replica's queue must refuse to start, saying why.
func TestSharedRoutes(t *testing.T) {
	for _, goFirst := range []bool{true, false} {
		order := "Go first"
		if !goFirst {
			order = "Python first"
		}
		shareRPC(t, order, goFirst)
		shareQueue(t, order, goFirst)
	}
	clash := startReplicas(t, false, nil, "--queue", "example-item.store=record")
	check(t, "queue route, Python first, Go with default settings: a clear start error", func() error {
		r := clash
		if r.start == nil {
			return fmt.Errorf("the Go replica started with its default queue type beside the Python replica's queue (then no clash is possible: fine, drop this cell)")
		}
		if r.goP == nil || !r.goP.Exited() {
			return fmt.Errorf("no clear start error: %w", r.start)
		}
		msg := r.start.Error()
		if !strings.Contains(msg, "example-item.store") || !strings.Contains(msg, "classic") {
			return fmt.Errorf("the Go replica's start error does not name the queue and what differs: %s", msg)
		}
		return nil
	})
}

// replicas is a Go and a Python replica in one env.
type replicas struct {
	env   stack.Env
	goP   *stack.Process
	pyP   *pyProcess
	start error // why they did not both start
}

// startReplicas starts both, in the order given, and reports why one of
// them could not start.
func startReplicas(t *testing.T, goFirst bool, goEnv []string, pyArgs ...string) *replicas {
	r := &replicas{env: stack.NewEnv(t, bins)}
	startGo := func() error {
		r.goP = stack.Launch(t, bins, r.env, goEnv...)
		err := waitFor(60*time.Second, func() bool {
			return r.goP.Exited() || strings.Contains(r.goP.Logs(), "service running")
		}, "the Go replica did not log \"service running\" within 60 s")
		if err == nil && r.goP.Exited() {
			code, _ := r.goP.Wait(time.Second)
			return fmt.Errorf("the Go replica exited with %d: %s", code, lastLines(r.goP.Logs(), 1))
		}
		return err
	}
	startPy := func() error {
		r.pyP = startPython(t, r.env.VHost, "service.py", pyArgs...)
		if err := r.pyP.ready(30 * time.Second); err != nil {
			return fmt.Errorf("the Python replica: %w", err)
		}
		return nil
	}
	first, second := startPy, startGo
	if goFirst {
		first, second = startGo, startPy
	}
	if r.start = first(); r.start == nil {
		r.start = second()
	}
	return r
}

// startShared starts the Go and the Python replica (with pyArgs) sharing
// the route of the cells named route, order, and records whether both
// started. When they did not, it records the cells of pyClient and the Go
// client as not run and gives a nil *replicas.
func startShared(t *testing.T, route, order string, goFirst bool, pyClient string, pyArgs ...string) (string, *replicas) {
	name := route + ", " + order
	r := startReplicas(t, goFirst, goShareEnv, pyArgs...)
	check(t, name+": both replicas start", func() error { return r.start })
	if r.start != nil {
		skipRest(t, name, pyClient, "Go client")
		return name, nil
	}
	return name, r
}

func shareRPC(t *testing.T, order string, goFirst bool) {
	name, r := startShared(t, "rpc route dictionary", order, goFirst, "Python library's JSONGzipRPC", "--rpc", "dictionary=dictionary")
	if r == nil {
		return
	}
	pyCalls := func() int { return len(r.pyP.eventsOf("handled", "dictionary")) }
	py := startPyClient(t, r.env.VHost)
	client := r.env.Client(t)

	cell(t, name+": 1,000 calls from the Python library's JSONGzipRPC", func() (string, error) {
		before := pyCalls()
		var items []any
		for i := range shareCalls {
			items = append(items, map[string]any{"i": i})
		}
		a, err := py.do(map[string]any{"op": "calls", "client": "lib", "route": "dictionary", "items": items, "concurrency": 32, "timeout": 10}, 5*time.Minute)
		if err != nil {
			return "", err
		}
		failures := map[string]int{}
		for i, res := range a.Results {
			e, err := replyOf("lib", true, "JSONGzipRPC.call", res)
			if err == nil {
				err = wantData(e, nil)(fmt.Sprintf(`{"i":%d,"bar":"baz"}`, i))
			}
			if err != nil {
				failures[err.Error()]++
			}
		}
		return shareVerdict(failures, pyCalls()-before, len(a.Results))
	})
	cell(t, name+": 1,000 calls from the Go client", func() (string, error) {
		before := pyCalls()
		failures := map[string]int{}
		var mu sync.Mutex
		// Batches of 64: when the first batch fails (calls that get no
		// reply take their whole timeout), the rest is not sent.
		for lo := 0; lo < shareCalls; lo += 64 {
			var wg sync.WaitGroup
			for i := lo; i < min(lo+64, shareCalls); i++ {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					var got json.RawMessage
					err := client.Call(ctx, "dictionary", map[string]any{"i": i}, &got)
					if err == nil && !sameJSON(got, []byte(fmt.Sprintf(`{"i":%d,"bar":"baz"}`, i))) {
						err = fmt.Errorf("call %d answered %s", i, got)
					}
					if err != nil {
						mu.Lock()
						failures[oneLine(err.Error(), 200)]++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			if len(failures) > 0 {
				return shareVerdict(failures, pyCalls()-before, min(lo+64, shareCalls))
			}
		}
		return shareVerdict(failures, pyCalls()-before, shareCalls)
	})
}

func shareQueue(t *testing.T, order string, goFirst bool) {
	name, r := startShared(t, "queue route example-item.store", order, goFirst, "Python library's JSONGzipMaster", "--queue", "example-item.store=record")
	if r == nil {
		return
	}
	database := openDB(t, r.env.Database)
	ch := r.env.Channel(t)
	py := startPyClient(t, r.env.VHost)
	client := r.env.Client(t)
	t.Cleanup(func() { purge(ch, "example-item.store") })

	// handledOnce waits until every message of prefix was handled by one
	// replica or the other, and checks that none was handled twice.
	handledOnce := func(prefix string, decodeFailsBefore int) (string, error) {
		seen := map[string]int{}
		var pyN int
		count := func() int {
			rows, err := countPrefix(database, prefix)
			if err != nil {
				return -1
			}
			seen = rows
			pyN = 0
			for _, ev := range r.pyP.eventsOf("handled", "example-item.store") {
				var d struct{ String string }
				if json.Unmarshal(ev.Data, &d) == nil && strings.HasPrefix(d.String, prefix) {
					seen[d.String]++
					pyN++
				}
			}
			return len(seen)
		}
		err := waitFor(60*time.Second, func() bool { return count() >= shareCalls }, "")
		failures := map[string]int{}
		if err != nil {
			failures[fmt.Sprintf("after 60 s only %d of %d messages were handled", len(seen), shareCalls)]++
		}
		for s, n := range seen {
			if n > 1 {
				failures[fmt.Sprintf("a message handled %d times (e.g. %q)", n, s)]++
			}
		}
		if n := len(r.pyP.eventsOf("decode_failed", "")) - decodeFailsBefore; n > 0 {
			failures[fmt.Sprintf("the Python replica could not decode %d deliveries (%s) and requeued each",
				n, r.pyP.eventsOf("decode_failed", "")[decodeFailsBefore].Error)]++
		}
		return shareVerdict(failures, pyN, shareCalls)
	}

	cell(t, name+": 1,000 messages from the Python library's JSONGzipMaster", func() (string, error) {
		prefix := testenv.Name("share py ") + " "
		var items []any
		for i := range shareCalls {
			items = append(items, map[string]any{"string": fmt.Sprint(prefix, i), "integer": 1})
		}
		fails := len(r.pyP.eventsOf("decode_failed", ""))
		a, err := py.do(map[string]any{"op": "publishes", "client": "lib", "route": "example-item.store", "items": items, "concurrency": 32}, 5*time.Minute)
		if err != nil {
			return "", err
		}
		for _, res := range a.Results {
			if err := published(res, nil); err != nil {
				return "", err
			}
		}
		return handledOnce(prefix, fails)
	})
	cell(t, name+": 1,000 messages from the Go client", func() (string, error) {
		prefix := testenv.Name("share go ") + " "
		fails := len(r.pyP.eventsOf("decode_failed", ""))
		var wg sync.WaitGroup
		errs := make(chan error, shareCalls)
		for w := range 32 {
			wg.Go(func() {
				for i := w; i < shareCalls; i += 32 {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					errs <- client.Publish(ctx, "example-item.store", map[string]any{"string": fmt.Sprint(prefix, i), "integer": 1})
					cancel()
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				return "", fmt.Errorf("publish: %w", err)
			}
		}
		return handledOnce(prefix, fails)
	})
}

// shareVerdict: no failures, and both replicas took a share of total.
func shareVerdict(failures map[string]int, byPython, total int) (string, error) {
	note := fmt.Sprintf("Python replica %d, Go replica %d", byPython, total-byPython)
	if len(failures) > 0 {
		note = fmt.Sprintf("of %d sent, the Python replica's handler ran %d times", total, byPython)
		var parts []string
		for _, msg := range slices.Sorted(maps.Keys(failures)) {
			parts = append(parts, fmt.Sprintf("%d× %s", failures[msg], msg))
		}
		return "", fmt.Errorf("%s (%s)", strings.Join(parts, "; "), note)
	}
	if byPython == 0 || byPython == total {
		return "", fmt.Errorf("one replica took every call (%s): the route was not shared", note)
	}
	return note, nil
}

// skipRest records the cells that could not run because the replicas did
// not start.
func skipRest(t *testing.T, name string, clients ...string) {
	for _, c := range clients {
		what := "calls"
		if strings.Contains(name, "queue") {
			what = "messages"
		}
		check(t, fmt.Sprintf("%s: 1,000 %s from the %s", name, what, c), func() error {
			return fmt.Errorf("not run: the replicas did not both start")
		})
	}
}

// lastLines returns the last n non-empty lines of s, joined by " | ".
func lastLines(s string, n int) string {
	var lines []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
