//go:build interop

package interop

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

// pyDir holds the Python harness: compat.py (the shims), service.py (a
// service built with the library) and client.py (Python clients).
var pyDir string

// pyEnv is the environment of a Python process working in vhost.
func pyEnv(vhost string) []string {
	return append(os.Environ(),
		"INTEROP_PY_LIB="+pyLib,
		"INTEROP_VHOST="+vhost,
		"BROKER_HOST="+testenv.Env("BROKER_HOST", "127.0.0.1"),
		"BROKER_PORT="+testenv.Env("BROKER_PORT", "5672"),
		"BROKER_USER="+testenv.Env("BROKER_USER", "guest"),
		"BROKER_PASS="+testenv.Env("BROKER_PASS", "guest"),
		"PYTHONDONTWRITEBYTECODE=1", // no __pycache__ in the library's checkout
		"PYTHONUNBUFFERED=1",
	)
}

// checkPython says what is missing when the Python side cannot run.
func checkPython() error {
	if _, err := exec.LookPath(python); err != nil {
		return fmt.Errorf("INTEROP_PYTHON=%s: %w", python, err)
	}
	cmd := exec.Command(python, "-c", "import compat, aio_pika, pika; print(aio_pika.__version__)")
	cmd.Dir = pyDir
	cmd.Env = pyEnv("/")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s cannot load the Python side (%v): %s\n"+
			"install aio-pika 8 and pika for it (Debian: apt-get install -y python3-aio-pika python3-pika) "+
			"and point INTEROP_PY_LIB at a checkout of lib-python-amqp-worker", python, err, bytes.TrimSpace(out))
	}
	return nil
}

// pyProcess is a running Python script that writes one JSON object per
// line on stdout.
type pyProcess struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan json.RawMessage // stdout lines not taken by a watcher
	stderr *testenv.Buffer
	done   chan struct{}

	mu     sync.Mutex
	events []pyEvent // every event line seen (service.py)
}

// pyEvent is one event line of service.py.
type pyEvent struct {
	Event string          `json:"event"`
	Route string          `json:"route"`
	Data  json.RawMessage `json:"data"`
	Error string          `json:"error"`
}

// startPython runs script with args in vhost. It is killed when the test
// ends (and by the kernel if this test process dies first); its stderr is
// logged if the test failed.
func startPython(t *testing.T, vhost, script string, args ...string) *pyProcess {
	t.Helper()
	cmd := exec.Command(python, append([]string{filepath.Join(pyDir, script)}, args...)...)
	cmd.Dir = pyDir
	cmd.Env = pyEnv(vhost)
	cmd.SysProcAttr = stack.DieWithParent()
	p := &pyProcess{
		name: script + " " + strings.Join(args, " "), cmd: cmd, stderr: &testenv.Buffer{},
		lines: make(chan json.RawMessage, 1<<16), done: make(chan struct{}),
	}
	cmd.Stderr = p.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			line := json.RawMessage(bytes.Clone(sc.Bytes()))
			var ev pyEvent
			if json.Unmarshal(line, &ev) == nil && ev.Event != "" {
				p.mu.Lock()
				p.events = append(p.events, ev)
				p.mu.Unlock()
				if ev.Event == "handled" || ev.Event == "decode_failed" {
					continue // read through events()
				}
			}
			p.lines <- line
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s stderr (last 4 KiB):\n%s", p.name, tail(p.stderr.String(), 4096))
		}
	})
	return p
}

// stop ends the process: SIGTERM, then SIGKILL after 5 s.
func (p *pyProcess) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.stdin.Close()
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// next returns the next stdout line that is not an event the watcher keeps.
func (p *pyProcess) next(timeout time.Duration) (json.RawMessage, error) {
	select {
	case line := <-p.lines:
		return line, nil
	case <-p.done:
		select {
		case line := <-p.lines:
			return line, nil
		default:
		}
		return nil, fmt.Errorf("%s exited: %v; stderr: %s", p.name, p.cmd.ProcessState, tail(p.stderr.String(), 600))
	case <-time.After(timeout):
		return nil, fmt.Errorf("%s: no answer in %s; stderr: %s", p.name, timeout, tail(p.stderr.String(), 600))
	}
}

// ready waits for {"event": "ready"}; a start_failed event or an exit is
// returned as the error.
func (p *pyProcess) ready(timeout time.Duration) error {
	line, err := p.next(timeout)
	if err != nil {
		return err
	}
	var ev pyEvent
	_ = json.Unmarshal(line, &ev)
	switch ev.Event {
	case "ready":
		return nil
	case "start_failed":
		return fmt.Errorf("the Python library's worker could not start: %s", ev.Error)
	}
	return fmt.Errorf("%s: unexpected first line %s", p.name, line)
}

// eventsOf returns the events of kind ("handled", "decode_failed") seen so
// far, for route ("" for any).
func (p *pyProcess) eventsOf(kind, route string) []pyEvent {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []pyEvent
	for _, ev := range p.events {
		if ev.Event == kind && (route == "" || ev.Route == route) {
			out = append(out, ev)
		}
	}
	return out
}

// waitHandled waits until a handled event for route satisfies match.
func (p *pyProcess) waitHandled(route string, timeout time.Duration, match func(data json.RawMessage) bool) (pyEvent, error) {
	deadline := time.Now().Add(timeout)
	for {
		for _, ev := range p.eventsOf("handled", route) {
			if match(ev.Data) {
				return ev, nil
			}
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("the Python worker did not handle the message on %q within %s", route, timeout)
			if fails := p.eventsOf("decode_failed", ""); len(fails) > 0 {
				msg += fmt.Sprintf("; the library failed to decode %d deliveries meanwhile (and requeued them), the last with %s",
					len(fails), fails[len(fails)-1].Error)
			}
			return pyEvent{}, errors.New(msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pyClient drives client.py: one command, one answer, in turn.
type pyClient struct {
	p  *pyProcess
	mu sync.Mutex
}

func startPyClient(t *testing.T, vhost string) *pyClient {
	t.Helper()
	p := startPython(t, vhost, "client.py")
	if err := p.ready(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	return &pyClient{p: p}
}

// pyAnswer is client.py's answer to a command.
type pyAnswer struct {
	OK        bool            `json:"ok"`
	Result    json.RawMessage `json:"result"`
	Raw       string          `json:"raw"`
	Gzipped   bool            `json:"gzipped"`
	Props     map[string]any  `json:"props"`
	Exception *pyException    `json:"exception"`
	Returned  bool            `json:"returned"`
	Results   []pyAnswer      `json:"results"`
}

type pyException struct {
	Type string `json:"type"`
	Repr string `json:"repr"`
	Args []any  `json:"args"`
}

func (e *pyException) String() string { return e.Repr }

// do sends cmd and waits for its answer (up to wait).
func (c *pyClient) do(cmd map[string]any, wait time.Duration) (pyAnswer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := json.Marshal(cmd)
	if err != nil {
		return pyAnswer{}, err
	}
	if _, err := c.p.stdin.Write(append(b, '\n')); err != nil {
		return pyAnswer{}, fmt.Errorf("send command to client.py: %w", err)
	}
	line, err := c.p.next(wait)
	if err != nil {
		return pyAnswer{}, err
	}
	var a pyAnswer
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if err := dec.Decode(&a); err != nil {
		return a, fmt.Errorf("client.py answered %s: %w", tail(string(line), 300), err)
	}
	return a, nil
}

// call makes one RPC call with a Python client.
func (c *pyClient) call(client, route string, data any) (pyAnswer, error) {
	return c.do(map[string]any{"op": "call", "client": client, "route": route, "data": data, "timeout": 5}, 20*time.Second)
}

// publish publishes one message with a Python client.
func (c *pyClient) publish(client, route string, data any) (pyAnswer, error) {
	return c.do(map[string]any{"op": "publish", "client": client, "route": route, "data": data}, 20*time.Second)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
