package workspace_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

// TestTaskDevHotReload runs `go tool task dev` in a copy of the project
// against the local RabbitMQ and PostgreSQL, calls hello_world, rewrites its
// reply in the copy's src/lib.go and measures the seconds from the write to
// the new reply; saves code that does not compile (the old process stops,
// the error is logged), fixes it (the service is back); then interrupts task
// and checks that everything stopped.
// The service gets a vhost and a database of its own, so it competes with no
// other copy of the service for the queues.
func TestTaskDevHotReload(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the service under Air; skipped with -short")
	}
	testenv.RequireBroker(t)
	testenv.RequirePostgres(t)
	vhost := stack.NewVHost(t)
	database := testenv.CreateDatabase(t, "ws_hot_")
	dir := copyProject(t)

	out := &lockedWriter{w: new(bytes.Buffer)}
	cmd := exec.Command("go", "tool", "task", "dev")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MODE=development", "BROKER_VHOST="+vhost, "DB_NAME="+database)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start go tool task dev: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			interruptGroup(t, cmd, exited)
		}
		if t.Failed() {
			t.Logf("go tool task dev output:\n%s", out.String())
		}
	})

	client := newRPCClient(t, brokerURLWithVhost(vhost))

	// First start: task builds the service, probes it, starts Air, which
	// builds and runs it. Generous: a cold build cache takes minutes.
	if _, err := client.waitFor(t, "hello_world", "Hello world!", 5*time.Minute, exited); err != nil {
		t.Fatalf("hello_world under task dev: %v", err)
	}

	// Save a new reply text; Air rebuilds and restarts the service.
	lib := filepath.Join(dir, "src", "lib.go")
	src, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	want := "Hello reload " + testenv.Name("") + "!"
	if !bytes.Contains(src, []byte(`"Hello world!"`)) {
		t.Fatalf("src/lib.go no longer holds the reply \"Hello world!\"; update this test")
	}
	edited := bytes.Replace(src, []byte(`"Hello world!"`), []byte(strconv.Quote(want)), 1)
	if err := os.WriteFile(lib, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	saved := time.Now()
	if _, err := client.waitFor(t, "hello_world", want, 60*time.Second, exited); err != nil {
		t.Fatalf("after editing src/lib.go: %v", err)
	}
	reload := time.Since(saved)
	t.Logf("hot reload: %.2f s from saving src/lib.go to the new hello_world reply (%s)", reload.Seconds(), phases(out, saved))
	if reload > 30*time.Second {
		t.Errorf("hot reload took %v, want under 30 s", reload)
	}

	// A save that does not compile: the compiler's error is shown, and the
	// last good binary answers every call at once with type Unavailable and
	// that error, so nobody waits for a timeout or gets stale code; the next
	// good save brings the service back.
	broken := append(bytes.Clone(edited), []byte("\nfunc broken() {\n")...)
	if err := os.WriteFile(lib, broken, 0o644); err != nil {
		t.Fatal(err)
	}
	failedAt := time.Now()
	for {
		typ, msg, err := client.callError(t, "hello_world")
		if err == nil && typ == "Unavailable" {
			if !strings.Contains(msg, "src/lib.go") {
				t.Errorf("the Unavailable reply %q does not name the file that does not compile", msg)
			}
			t.Logf("a call after a save that does not compile is answered Unavailable %.2f s after the save", time.Since(failedAt).Seconds())
			break
		}
		if time.Since(failedAt) > 60*time.Second {
			t.Fatalf("60 s after a save that does not compile, hello_world still answers %q %q (%v), want type Unavailable", typ, msg, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if at, ok := out.firstAfter(failedAt, "src/lib.go:"); !ok || at.IsZero() {
		t.Error("task dev's output does not show the compiler's error naming src/lib.go")
	}
	fixed := "Hello fixed " + testenv.Name("") + "!"
	if err := os.WriteFile(lib, bytes.Replace(src, []byte(`"Hello world!"`), []byte(strconv.Quote(fixed)), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := client.waitFor(t, "hello_world", fixed, 60*time.Second, exited); err != nil {
		t.Fatalf("after fixing the build error: %v", err)
	}

	// Ctrl-C: task, Air and the service stop; the route loses its consumer.
	stopped = true
	code := interruptGroup(t, cmd, exited)
	t.Logf("go tool task dev exited with code %d after SIGINT", code)
	if n := consumers(t, vhost, "hello_world"); n != 0 {
		t.Errorf("hello_world still has %d consumers after task dev exited: the service outlived Air", n)
	}
}

// phases splits a restart by the log lines of Air and the service, seconds
// after the save: change seen, build started, old process interrupted (the
// build is done), new process started; the new reply comes after.
func phases(out *lockedWriter, saved time.Time) string {
	var parts []string
	for _, p := range []struct{ name, text string }{
		{"change seen", "has changed"},
		{"build start", "building..."},
		{"old stopping", `msg=stopping`},
		{"new started", "running..."},
	} {
		if at, ok := out.firstAfter(saved, p.text); ok {
			parts = append(parts, fmt.Sprintf("%s +%.2fs", p.name, at.Sub(saved).Seconds()))
		}
	}
	return strings.Join(parts, ", ")
}

// TestTaskDevWithoutServices runs `go tool task dev` where neither the
// services nor a Docker engine answer: it must fail at once, say how to get
// the services, and never start Air.
func TestTaskDevWithoutServices(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the service; skipped with -short")
	}
	dir := copyProject(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "tool", "task", "dev")
	cmd.Dir = dir
	ports := testenv.FreePorts(t, 2)
	brokerPort, dbPort := strconv.Itoa(ports[0]), strconv.Itoa(ports[1])
	cmd.Env = append(os.Environ(),
		"BROKER_HOST=127.0.0.1", "BROKER_PORT="+brokerPort,
		"DB_HOST=127.0.0.1", "DB_PORT="+dbPort,
		"DOCKER_HOST=unix://"+filepath.Join(dir, "no-docker.sock"),
	)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("task dev succeeded without services:\n%s", out)
	}
	if ctx.Err() != nil {
		t.Fatalf("task dev did not fail at once (killed after 5 min):\n%s", out)
	}
	// The probe names what is unreachable; task says how to get it.
	for _, want := range []string{":" + brokerPort, ":" + dbPort, "devcontainer", "Codespace", "docker compose", "BROKER_HOST", "DB_HOST"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("task dev output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "watching") {
		t.Errorf("task dev started Air although nothing answers:\n%s", out)
	}
}

// TestTaskBuildWithoutDocker checks that `go tool task build` says that no
// Docker engine is reachable and exits non-zero.
func TestTaskBuildWithoutDocker(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go tool task; skipped with -short")
	}
	cmd := exec.Command("go", "tool", "task", "build")
	cmd.Dir = root(t)
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+filepath.Join(t.TempDir(), "no-docker.sock"))
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("task build without a Docker engine: err = %v, want a non-zero exit\n%s", err, out)
	}
	if !strings.Contains(string(out), "no Docker engine is reachable") && !strings.Contains(string(out), "docker command is not installed") {
		t.Errorf("task build does not say that Docker is missing:\n%s", out)
	}
}

// interruptGroup sends SIGINT to the command's process group, as Ctrl-C in a
// terminal does, and returns its exit code. Past the service's drain timeout
// plus a margin it kills the group and fails the test.
func interruptGroup(t *testing.T, cmd *exec.Cmd, exited chan error) int {
	t.Helper()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
	select {
	case err := <-exited:
		exited <- err
		return cmd.ProcessState.ExitCode()
	case <-time.After(drainTimeout + 20*time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err := <-exited
		exited <- err
		t.Errorf("go tool task dev did not exit within %v of SIGINT; killed", drainTimeout+20*time.Second)
		return -1
	}
}

// copyProject copies the files git knows (tracked, or untracked and not
// ignored) into a temporary directory: tmp/ and other build output stay
// behind.
func copyProject(t *testing.T) string {
	t.Helper()
	src := root(t)
	git := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	git.Dir = src
	list, err := git.Output()
	if err != nil {
		t.Skipf("list the project's files with git: %v", err)
	}
	dst := t.TempDir()
	for _, name := range strings.Split(strings.TrimRight(string(list), "\x00"), "\x00") {
		from := filepath.Join(src, name)
		info, err := os.Lstat(from)
		if err != nil || !info.Mode().IsRegular() {
			continue // deleted in the work tree, or not a file
		}
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatalf("copy %s: %v", name, err)
		}
		to := filepath.Join(dst, name)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func brokerURLWithVhost(vhost string) string {
	u, _ := url.Parse(testenv.BrokerURL())
	u.Path, u.RawPath = "/"+vhost, "/"+url.PathEscape(vhost)
	return u.String()
}

// consumers returns the number of consumers of a queue in vhost; 0 when the
// queue does not exist.
func consumers(t *testing.T, vhost, queue string) int {
	t.Helper()
	conn, err := amqp.Dial(brokerURLWithVhost(vhost))
	if err != nil {
		t.Fatalf("connect to vhost %s: %v", vhost, err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
	var amqpErr *amqp.Error
	if errors.As(err, &amqpErr) && amqpErr.Code == amqp.NotFound {
		return 0
	}
	if err != nil {
		t.Fatalf("inspect queue %s: %v", queue, err)
	}
	return q.Consumers
}

// rpcClient is a plain amqp091-go RPC client of the seed's wire format:
// {"data": ...} to the route's queue, reply on direct reply-to.
type rpcClient struct {
	ch      *amqp.Channel
	replies <-chan amqp.Delivery
	seq     int
}

func newRPCClient(t *testing.T, u string) *rpcClient {
	t.Helper()
	conn, err := amqp.Dial(u)
	if err != nil {
		t.Fatalf("connect the RPC client: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	replies, err := ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	if err != nil {
		t.Fatalf("consume direct reply-to: %v", err)
	}
	return &rpcClient{ch: ch, replies: replies}
}

// call publishes one request and waits up to timeout for its reply.
func (c *rpcClient) call(route string, data any, timeout time.Duration) (json.RawMessage, error) {
	body, err := json.Marshal(map[string]any{"data": data})
	if err != nil {
		return nil, err
	}
	c.seq++
	id := strconv.Itoa(c.seq)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err = c.ch.PublishWithContext(ctx, "", route, false, false, amqp.Publishing{
		ContentType: "application/json", CorrelationId: id, ReplyTo: "amq.rabbitmq.reply-to", Body: body,
	})
	if err != nil {
		return nil, fmt.Errorf("publish to %s: %w", route, err)
	}
	for {
		select {
		case d, ok := <-c.replies:
			if !ok {
				return nil, errors.New("reply channel closed")
			}
			if d.CorrelationId != id {
				continue // a late reply to an earlier call
			}
			b := d.Body
			if bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
				zr, err := gzip.NewReader(bytes.NewReader(b))
				if err != nil {
					return nil, err
				}
				if b, err = io.ReadAll(zr); err != nil {
					return nil, err
				}
			}
			var reply struct {
				Success bool            `json:"success"`
				Data    json.RawMessage `json:"data"`
				Error   json.RawMessage `json:"error"`
			}
			if err := json.Unmarshal(b, &reply); err != nil {
				return nil, fmt.Errorf("decode reply %q: %w", b, err)
			}
			if !reply.Success {
				f := &failedReply{route: route}
				_ = json.Unmarshal(reply.Error, f)
				return nil, f
			}
			return reply.Data, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("no reply from %s within %v", route, timeout)
		}
	}
}

// failedReply is a failure envelope's error.
type failedReply struct {
	route   string
	Type    string `json:"type"`
	Message string `json:"message"`
}

func (f *failedReply) Error() string { return f.route + " failed: " + f.Type + ": " + f.Message }

// callError calls route once and returns the type and message of its
// failure reply; err is set when there was no failure reply.
func (c *rpcClient) callError(t *testing.T, route string) (typ, msg string, err error) {
	t.Helper()
	data, err := c.call(route, nil, 2*time.Second)
	var f *failedReply
	switch {
	case errors.As(err, &f):
		return f.Type, f.Message, nil
	case err == nil:
		return "", "", fmt.Errorf("%s answered %s", route, data)
	}
	return "", "", err
}

// waitFor calls route until it answers want, the process exits, or the
// deadline passes. Calls made while no service consumes the route are lost
// (nothing is queued for a route without its queue), so each waits briefly.
func (c *rpcClient) waitFor(t *testing.T, route, want string, within time.Duration, exited chan error) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < within {
		select {
		case err := <-exited:
			exited <- err
			if err == nil {
				err = errors.New("exit status 0")
			}
			return 0, fmt.Errorf("go tool task dev exited before %s answered %q: %w", route, want, err)
		default:
		}
		data, err := c.call(route, nil, 500*time.Millisecond)
		if err == nil {
			var got string
			if json.Unmarshal(data, &got) == nil && got == want {
				return time.Since(start), nil
			}
			last = string(data)
			time.Sleep(50 * time.Millisecond) // old code still answering
		} else {
			last = err.Error()
		}
	}
	return 0, fmt.Errorf("%s did not answer %q within %v; last: %s", route, want, within, last)
}
