// Package stack runs the service as a separate process for black-box tests:
// it builds the binary, gives each run its own RabbitMQ vhost and its own
// PostgreSQL database (schema from src/models through `manage sync`), starts
// the process and stops it with a signal. The e2e tests in test/ and the
// fault tests in test/faults share it.
package stack

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// Binaries are the service and manage executables a test binary built once.
type Binaries struct {
	Root    string // the module root
	Service string // go build [-race] ./src
	Manage  string // go build ./src/manage
	dir     string
}

// Build compiles the service and the manage tool into a temporary directory.
// With race the service is built with the race detector, so that e2e traffic
// also hunts data races; tests that measure memory or push volume build it
// without, as it is deployed. Call Build once from TestMain and Clean up at
// the end.
//
// E2E_SOURCE, when set, names another checkout of the project to build the
// binaries from (the tests stay today's): that is how the figures of an
// earlier version are measured with the same tests, e.g.
// `git worktree add /tmp/before <commit>` then E2E_SOURCE=/tmp/before.
func Build(race bool) (*Binaries, error) {
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	src := root
	if other := os.Getenv("E2E_SOURCE"); other != "" {
		if _, err := os.Stat(filepath.Join(other, "go.mod")); err != nil {
			return nil, fmt.Errorf("E2E_SOURCE=%q is not a checkout of the project: %w", other, err)
		}
		src = other
	}
	dir, err := os.MkdirTemp("", "service-e2e-")
	if err != nil {
		return nil, err
	}
	b := &Binaries{Root: root, Service: filepath.Join(dir, "service"), Manage: filepath.Join(dir, "manage"), dir: dir}
	service := []string{"build", "-o", b.Service, "./src"}
	if race {
		service = []string{"build", "-race", "-o", b.Service, "./src"}
	}
	for _, args := range [][]string{
		service,
		{"build", "-o", b.Manage, "./src/manage"},
	} {
		cmd := exec.Command("go", args...)
		cmd.Dir = src
		if out, err := cmd.CombinedOutput(); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
	}
	return b, nil
}

// Clean removes the built binaries.
func (b *Binaries) Clean() { _ = os.RemoveAll(b.dir) }

// ModuleRoot is the directory holding go.mod.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the module: run the tests from the repository")
	}
	return filepath.Dir(gomod), nil
}

// Env is a private place for one or more service processes: a vhost and a
// database of their own, so tests never compete with a dev service or with
// each other for the fixed route queues.
type Env struct {
	VHost    string
	Database string
	Roles    Roles // the service connects as Roles.App, manage as Roles.Owner
}

// NewEnv creates a vhost and a database with the roles of
// migrations/roles.sql and the models' schema (applied with `manage sync
// --noprompt` as the owner role, as a developer would). All of it is removed
// when the test ends.
func NewEnv(t testing.TB, b *Binaries) Env {
	t.Helper()
	if External() {
		return externalEnv(t)
	}
	testenv.RequireBroker(t)
	roles, applyRoles := newRoles(t, b.Root)
	e := Env{VHost: NewVHost(t), Database: testenv.CreateDatabase(t, "e2e_"), Roles: roles}
	applyRoles(e.Database)
	cmd := exec.Command(b.Manage, "sync", "--noprompt")
	cmd.Dir = b.Root
	cmd.Env = append(childEnv(), dbEnv(e.Database, roles.Owner, roles.OwnerPass)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("manage sync --noprompt into %s: %v\n%s", e.Database, err, out)
	}
	return e
}

// Broker returns the worker configuration for this env's vhost.
func (e Env) Broker() worker.Config {
	cfg, err := worker.ConfigFromEnv()
	if err != nil {
		panic(err) // the tests' own environment is invalid: nothing else can run
	}
	cfg.VHost = e.VHost
	return cfg
}

// URL is the amqp:// URL of env's vhost, for plain amqp091-go clients.
func (e Env) URL() string {
	cfg := e.Broker()
	uri := amqp.URI{Scheme: "amqp", Host: cfg.Host, Port: cfg.Port, Username: cfg.User, Password: cfg.Password, Vhost: cfg.VHost}
	return uri.String()
}

// Channel opens a plain amqp091-go channel on env's vhost; its connection
// is closed when the test ends.
func (e Env) Channel(t testing.TB) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(e.URL())
	if err != nil {
		t.Fatalf("dial %s: %v", testenv.BrokerAddr(), err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// DB opens env's database as the tests' superuser, to look at what the
// service stored; it is closed when the test ends.
func (e Env) DB(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", testenv.PostgresURL(e.Database))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// Client connects a project client to this env's vhost; it is closed when
// the test ends.
func (e Env) Client(t testing.TB) *worker.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := worker.Dial(ctx, e.Broker(), worker.WithName("e2e client "+t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	c := worker.NewClient(conn)
	t.Cleanup(func() { _ = c.Close(); _ = conn.Close() })
	return c
}

// childEnv is the environment for the processes tests start: this one's,
// with the URL forms of the settings blanked. BROKER_URL and DB_URL would
// override the per-test vhost and database, and `manage sync --noprompt`
// would then change a real database; the tests, like testenv, go by the
// host, port, user and password variables alone. METRICS_ADDR is blanked
// too: the devcontainer sets it (:9464) for the service `task dev` runs,
// and every test's service would try to listen there; the tests that
// scrape metrics give their service a port of its own.
func childEnv() []string {
	return append(os.Environ(), "BROKER_URL=", "DB_URL=", "METRICS_ADDR=")
}

// Process is a running service.
type Process struct {
	cmd      *exec.Cmd
	logs     *testenv.Buffer
	done     chan struct{}
	err      error // the result of Wait, set before done closes
	external bool  // a service already running (see External)
}

// Start runs the service in env with extra environment variables (KEY=value)
// and waits until it answers hello_world and has logged that it runs (every
// worker started, so every route's queue exists: the RPC worker answers
// before the queue worker has declared its queues). The process is killed
// when the test ends if it is still running; its log is printed if the test
// failed.
func Start(t testing.TB, b *Binaries, env Env, extra ...string) *Process {
	t.Helper()
	if External() {
		return attach(t, env, extra)
	}
	p := Launch(t, b, env, extra...)
	running := func() error {
		if !strings.Contains(p.Logs(), "service running") {
			return errors.New(`hello_world answered, but no "service running" line in its log yet`)
		}
		return nil
	}
	if err := awaitHello(env.Client(t), running, p.Exited); err != nil {
		t.Fatalf("service not ready: %v; the end of its log:\n%s", err, p.Tail(15))
	}
	return p
}

// awaitHello calls hello_world through client every 100 ms until it
// answers "Hello world!" and ready (nil: none) returns nil, up to 60 s or
// until gone() (nil: never); when it gives up it returns what was missing
// last: the call's error, a wrong reply or ready's error.
func awaitHello(client *worker.Client, ready func() error, gone func() bool) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var reply string
		err := client.Call(ctx, "hello_world", nil, &reply)
		cancel()
		switch {
		case err != nil:
		case reply != "Hello world!":
			err = fmt.Errorf("hello_world answered %q, want \"Hello world!\"", reply)
		case ready != nil:
			err = ready()
		}
		if err == nil {
			return nil
		}
		if (gone != nil && gone()) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Launch starts the service process without waiting for it to be ready.
func Launch(t testing.TB, b *Binaries, env Env, extra ...string) *Process {
	t.Helper()
	if External() {
		t.Skipf("starts a service process of its own; %s=running drives one that runs already", externalVar)
	}
	cmd := exec.Command(b.Service)
	cmd.Dir = b.Root
	cmd.SysProcAttr = DieWithParent()
	// Every setting explicit, as production mode wants them.
	cmd.Env = append(childEnv(), "MODE=development", "BROKER_VHOST="+env.VHost,
		"BROKER_USER="+testenv.Env("BROKER_USER", "guest"), "BROKER_PASS="+testenv.Env("BROKER_PASS", "guest"))
	cmd.Env = append(cmd.Env, dbEnv(env.Database, env.Roles.App, env.Roles.AppPass)...)
	cmd.Env = append(cmd.Env, extra...)
	p := &Process{cmd: cmd, logs: &testenv.Buffer{}, done: make(chan struct{})}
	cmd.Stdout = p.logs
	cmd.Stderr = p.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", b.Service, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.Exited() {
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("the last lines of the service's log (all of it in %s):\n%s", p.saveLog(t), p.Tail(15))
		}
	})
	return p
}

// Tail returns the last n lines the process wrote, each cut to 300 bytes.
func (p *Process) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Logs(), "\n"), "\n")
	lines = lines[max(0, len(lines)-n):]
	for i, l := range lines {
		if len(l) > 300 {
			lines[i] = l[:300] + "..."
		}
	}
	return strings.Join(lines, "\n")
}

// saveLog writes the whole log to a file under the system's temporary
// directory named after the test, and returns its path.
func (p *Process) saveLog(t testing.TB) string {
	dir := filepath.Join(os.TempDir(), "service-test-logs")
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + fmt.Sprintf("-%d.log", p.PID())
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "(not saved: " + err.Error() + ")"
	}
	if err := os.WriteFile(path, []byte(p.Logs()), 0o644); err != nil {
		return "(not saved: " + err.Error() + ")"
	}
	return path
}

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Wait waits up to timeout for the process to exit and returns its exit code.
func (p *Process) Wait(timeout time.Duration) (int, error) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return -1, fmt.Errorf("service still running after %s", timeout)
	}
	var exit *exec.ExitError
	if errors.As(p.err, &exit) {
		return exit.ExitCode(), nil
	}
	return 0, p.err
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Logs returns what the process wrote so far.
func (p *Process) Logs() string {
	if p.external {
		return externalLogs()
	}
	return p.logs.String()
}
