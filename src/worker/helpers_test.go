package worker_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// brokerConfig is the test broker as a worker.Config.
func brokerConfig() worker.Config {
	port, _ := strconv.Atoi(testenv.Env("BROKER_PORT", "5672"))
	return worker.Config{
		Host:     testenv.Env("BROKER_HOST", "127.0.0.1"),
		Port:     port,
		User:     testenv.Env("BROKER_USER", "guest"),
		Password: testenv.Env("BROKER_PASS", "guest"),
		VHost:    testenv.Env("BROKER_VHOST", "/"),
	}
}

// requireBroker skips in -short mode and fails when the broker is down.
func requireBroker(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs RabbitMQ; skipped with -short")
	}
	testenv.RequireBroker(tb)
}

// dial opens a Conn named name (random when empty) with opts, closed at
// cleanup.
func dial(tb testing.TB, name string, opts ...worker.ConnOption) *worker.Conn {
	tb.Helper()
	if name == "" {
		name = testenv.Name("worker-test-")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := worker.Dial(ctx, brokerConfig(), append([]worker.ConnOption{worker.WithName(name)}, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

// raw opens a plain amqp091 connection and channel for the test's own
// checks, closed at cleanup.
func raw(tb testing.TB) *amqp.Channel { return testenv.Channel(tb) }

// replyQueue declares an exclusive, server-named queue on ch, as a caller's
// reply queue, and consumes it (auto-ack): its name and its deliveries.
func replyQueue(tb testing.TB, ch *amqp.Channel) (string, <-chan amqp.Delivery) {
	tb.Helper()
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		tb.Fatal(err)
	}
	replies, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return q.Name, replies
}

// route returns a unique route name whose queue and dead-letter queue are
// deleted at cleanup.
func route(tb testing.TB, prefix string) string {
	tb.Helper()
	name := testenv.Name("wt-" + prefix + "-")
	tb.Cleanup(func() { deleteQueues(tb, name, name+worker.DeadLetterSuffix) })
	return name
}

func deleteQueues(tb testing.TB, names ...string) {
	if err := testenv.DeleteQueues(names...); err != nil {
		tb.Error(err)
	}
}

// shutdowner is what RPC and Queue have in common.
type shutdowner interface {
	Start(context.Context) error
	Shutdown(context.Context) error
}

// start starts w and shuts it down at cleanup.
func start(tb testing.TB, w shutdowner) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = w.Shutdown(ctx)
	})
}

// serveRPC starts an RPC worker on a connection of its own, with the
// middleware use (Use), serving h on a new route named after prefix, and
// returns the route and the worker. The worker shuts down at cleanup,
// before the route's queues are deleted.
func serveRPC(tb testing.TB, prefix string, h worker.Handler, use ...worker.Middleware) (string, *worker.RPC) {
	tb.Helper()
	requireBroker(tb)
	r := route(tb, prefix)
	rpc := worker.NewRPC(dial(tb, ""))
	rpc.Use(use...)
	rpc.Handle(r, h)
	start(tb, rpc)
	return r, rpc
}

// within returns a context that ends after d or when the test does.
func within(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(tb.Context(), d)
	tb.Cleanup(cancel)
	return ctx
}

func client(tb testing.TB, conn *worker.Conn) *worker.Client {
	c := worker.NewClient(conn)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// closeConnection makes the broker close the connections of the Conn
// dialed WithName(name) (its consuming and its publishing connection), as a
// network failure would.
func closeConnection(tb testing.TB, name string) {
	tb.Helper()
	out, err := exec.Command("rabbitmqctl", "-q", "list_connections", "pid", "client_properties").CombinedOutput()
	if err != nil {
		tb.Fatalf("rabbitmqctl list_connections: %v\n%s", err, out)
	}
	closed := 0
	for _, line := range strings.Split(string(out), "\n") {
		if !namedConn(line, name) {
			continue
		}
		pid := strings.Fields(line)[0]
		if out, err := exec.Command("rabbitmqctl", "-q", "close_connection", pid, "test closes it").CombinedOutput(); err != nil {
			tb.Fatalf("rabbitmqctl close_connection %s: %v\n%s", pid, err, out)
		}
		closed++
	}
	if closed == 0 {
		tb.Fatalf("no connection named %q in:\n%s", name, out)
	}
}

// counter counts calls per key.
type counter struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counter) add(k string) {
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[k]++
	c.mu.Unlock()
}

func (c *counter) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[k]
}

func (c *counter) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// storeWhenUp returns a job handler for a store that is down while down
// holds: the job then fails with err. Otherwise it stores the job, counting
// it in stored under key(j).
func storeWhenUp(down *atomic.Bool, err error, stored *counter, key func(job) string) func(context.Context, job) error {
	return func(_ context.Context, j job) error {
		if down.Load() {
			return err
		}
		stored.add(key(j))
		return nil
	}
}

// settled waits until count reaches want, gives a late extra (a duplicate,
// a run too many) 300 ms to show, and fails the test unless count is then
// exactly want. what names the count in failures.
func settled(tb testing.TB, what string, want int, count func() int) {
	tb.Helper()
	eventually(tb, fmt.Sprintf("%d %s", want, what), func() bool { return count() >= want })
	time.Sleep(300 * time.Millisecond)
	if got := count(); got != want {
		tb.Fatalf("%d %s, want %d", got, what, want)
	}
}

// eventually polls cond until it holds, failing the test after 90 s.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	testenv.Eventually(tb, 90*time.Second, what, cond)
}

// namedConn reports whether a line of rabbitmqctl list_connections is one
// of the two connections of the Conn dialed WithName(name).
func namedConn(line, name string) bool {
	for _, role := range []string{"consume", "publish"} {
		full := name + " (" + role + ")"
		if strings.Contains(line, `"`+full+`"`) || strings.Contains(line, "<<\""+full+"\">>") {
			return true
		}
	}
	return false
}

// channels returns how many channels the Conn dialed WithName(name) has
// open, on its two connections together.
func channels(tb testing.TB, name string) int {
	tb.Helper()
	out, err := exec.Command("rabbitmqctl", "-q", "list_connections", "channels", "client_properties").CombinedOutput()
	if err != nil {
		tb.Fatalf("rabbitmqctl list_connections: %v\n%s", err, out)
	}
	total, found := 0, 0
	for _, line := range strings.Split(string(out), "\n") {
		if namedConn(line, name) {
			n, err := strconv.Atoi(strings.Fields(line)[0])
			if err != nil {
				tb.Fatalf("rabbitmqctl list_connections: no channel count in %q", line)
			}
			total += n
			found++
		}
	}
	if found == 0 {
		tb.Fatalf("no connection named %q in:\n%s", name, out)
	}
	return total
}

// silentListener accepts TCP connections and never answers; it returns the
// port.
func silentListener(tb testing.TB) int {
	tb.Helper()
	p := newProxy(tb, "")
	p.silence()
	return p.port()
}

// proxy forwards TCP connections to a target until silence; then it drops
// them and accepts new ones without ever answering, like a hung broker.
type proxy struct {
	ln     net.Listener
	target string

	mu       sync.Mutex
	silent   bool
	conns    []net.Conn
	accepted int           // connections accepted while silent
	frozen   chan struct{} // while not nil, nothing is passed on; closed by shut
}

func newProxy(tb testing.TB, target string) *proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	tb.Cleanup(p.shut)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			silent := p.silent
			if silent {
				p.accepted++
			}
			p.mu.Unlock()
			if !silent {
				go p.forward(c)
			}
		}
	}()
	return p
}

func (p *proxy) forward(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, up)
	p.mu.Unlock()
	go func() { p.pipe(up, c); _ = up.Close() }()
	p.pipe(c, up)
	_ = c.Close()
}

// pipe copies from src to dst, holding the data back while frozen.
func (p *proxy) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			frozen := p.frozen
			p.mu.Unlock()
			if frozen != nil {
				<-frozen
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// freeze keeps the connections open but passes nothing on, as a broker
// that hangs; shut ends it.
func (p *proxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen == nil {
		p.frozen = make(chan struct{})
	}
}

// shut closes the listener and every connection.
func (p *proxy) shut() {
	_ = p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
	if p.frozen != nil {
		close(p.frozen)
		p.frozen = nil
	}
	p.mu.Unlock()
}

func (p *proxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// silence drops every connection; new ones are accepted and never answered.
func (p *proxy) silence() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.silent = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// silentAccepts is how many connections were accepted since silence.
func (p *proxy) silentAccepts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// dialProxied opens a Conn to the broker through a proxy.
func dialProxied(tb testing.TB) (*worker.Conn, *proxy) {
	tb.Helper()
	cfg := brokerConfig()
	p := newProxy(tb, net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	cfg.Host, cfg.Port = "127.0.0.1", p.port()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := worker.Dial(ctx, cfg, worker.WithName(testenv.Name("worker-test-proxied-")))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn, p
}

// gunzipped returns b decompressed when it is gzip, else b.
func gunzipped(tb testing.TB, b []byte) []byte {
	tb.Helper()
	if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		return b
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		tb.Fatalf("gunzip: %v", err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		tb.Fatalf("gunzip: %v", err)
	}
	return out
}
