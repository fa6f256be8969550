package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

// freeAddr returns a 127.0.0.1 address with a port free right now.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// get fetches http://addr/path and returns its status and body.
func get(addr, path string) (int, string, error) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// scrape reads /metrics with client_golang's text parser and returns each
// sample by its name and labels, e.g.
// worker_requests_total{kind="rpc",outcome="replied",route="hello_world"};
// a histogram gives NAME_count.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	code, body, err := get(addr, "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	out := map[string]float64{}
	for name, f := range families {
		for _, m := range f.Metric {
			key := name + labels(m.Label)
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[name+"_count"+labels(m.Label)] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

func labels(ls []*dto.LabelPair) string {
	if len(ls) == 0 {
		return ""
	}
	parts := make([]string, len(ls))
	for i, l := range ls { // the parser sorts them by name
		parts[i] = fmt.Sprintf("%s=%q", l.GetName(), l.GetValue())
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// TestMetrics scrapes the service's /metrics and checks that its counters
// move exactly as calls, error replies and dead letters happen.
func TestMetrics(t *testing.T) {
	env := stack.NewEnv(t, bins)
	addr := freeAddr(t)
	stack.Start(t, bins, env, "METRICS_ADDR="+addr)
	client := env.Client(t)

	if code, body, err := get(addr, "/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("GET /healthz = %d %q %v, want 200", code, body, err)
	}
	before := scrape(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 3 {
		if err := client.Call(ctx, "hello_world", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := client.Call(ctx, "will-error", "x", nil); err == nil {
			t.Fatal("will-error succeeded")
		}
	}
	if err := client.Publish(ctx, "example-item.store", map[string]any{"string": "metered " + testenv.Name(""), "integer": 1}); err != nil {
		t.Fatal(err)
	}
	if err := client.Publish(ctx, "example-item.store", map[string]any{"integer": 1}); err != nil { // no "string": BadRequest, dead-lettered
		t.Fatal(err)
	}

	const (
		hello  = `worker_requests_total{kind="rpc",outcome="replied",route="hello_world"}`
		failed = `worker_requests_total{kind="rpc",outcome="error",route="will-error"}`
		stored = `worker_requests_total{kind="queue",outcome="acked",route="example-item.store"}`
		dead   = `worker_requests_total{kind="queue",outcome="dead_lettered",route="example-item.store"}`
		dlq    = `worker_dead_letters_total{route="example-item.store"}`
		took   = `worker_request_duration_seconds_count{kind="rpc",route="hello_world"}`
	)
	want := map[string]float64{hello: 3, failed: 2, stored: 1, dead: 1, dlq: 1, took: 3}
	var after map[string]float64
	deadline := time.Now().Add(30 * time.Second)
	for {
		after = scrape(t, addr)
		done := true
		for k, d := range want {
			if after[k]-before[k] < d {
				done = false
			}
		}
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for k, d := range want {
		if got := after[k] - before[k]; got != d {
			t.Errorf("%s went up by %v, want %v", k, got, d)
		}
	}
	for _, k := range []string{
		`worker_connection_up{connection="consume"}`, `worker_connection_up{connection="publish"}`,
	} {
		if after[k] != 1 {
			t.Errorf("%s = %v, want 1", k, after[k])
		}
	}
	if _, ok := after[`go_sql_max_open_connections{db_name="`+env.Database+`"}`]; !ok {
		t.Errorf("no database pool metrics (go_sql_*) for %s", env.Database)
	}
	for k := range after {
		if strings.Contains(k, "message_id") || strings.Contains(k, "correlation") {
			t.Errorf("unbounded label in %s", k)
		}
	}
	if testing.Verbose() { // an excerpt, for the README
		_, body, _ := get(addr, "/metrics")
		var lines []string
		for l := range strings.SplitSeq(body, "\n") {
			if (strings.HasPrefix(l, "worker_") && !strings.Contains(l, "_bucket")) || strings.HasPrefix(l, "go_sql_in_use") || strings.HasPrefix(l, "go_sql_open") {
				lines = append(lines, l)
			}
		}
		t.Logf("metrics excerpt:\n%s", strings.Join(lines, "\n"))
	}
}

// tcpProxy forwards connections to target until cut.
type tcpProxy struct {
	target string
	addr   string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	p := &tcpProxy{target: target}
	p.listen(t, "127.0.0.1:0")
	t.Cleanup(p.cut)
	return p
}

func (p *tcpProxy) listen(t *testing.T, addr string) {
	var ln net.Listener
	var err error
	for range 50 { // the port may linger a moment after cut
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
			go func() { _, _ = io.Copy(c, up); _ = c.Close() }()
		}
	}()
}

// cut closes the listener and every forwarded connection: to the service
// the broker is gone.
func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// waitStatus polls path until it answers code, and returns how long that took.
func waitStatus(t *testing.T, addr, path string, code int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	last := ""
	for time.Since(start) < within {
		got, body, err := get(addr, path)
		if err == nil && got == code {
			return time.Since(start)
		}
		last = fmt.Sprintf("%d %q %v", got, body, err)
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s did not answer %d within %s; last answer: %s", path, code, within, last)
	return 0
}

// healthcheck runs `service healthcheck` against the service at addr.
func healthcheck(t *testing.T, addr string) (int, string) {
	t.Helper()
	cmd := exec.Command(bins.Service, "healthcheck")
	cmd.Env = append(os.Environ(), "MODE=development", "METRICS_ADDR="+addr)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run service healthcheck: %v", err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

// TestReadiness cuts the service's connection to the broker (a TCP proxy
// between them) and checks /readyz: not ready within 2 s, ready again once
// the broker is back, and not ready at the start of a drain while
// /healthz still answers.
func TestReadiness(t *testing.T) {
	env := stack.NewEnv(t, bins)
	proxy := newTCPProxy(t, testenv.BrokerAddr())
	_, port, _ := net.SplitHostPort(proxy.addr)
	addr := freeAddr(t)
	p := stack.Start(t, bins, env, "METRICS_ADDR="+addr, "BROKER_HOST=127.0.0.1", "BROKER_PORT="+port)

	waitStatus(t, addr, "/readyz", http.StatusOK, 30*time.Second)
	if code, out := healthcheck(t, addr); code != 0 || !strings.Contains(out, "healthy: ready") {
		t.Errorf("service healthcheck while ready: exit %d, %q; want 0", code, out)
	}
	proxy.cut()
	took := waitStatus(t, addr, "/readyz", http.StatusServiceUnavailable, 2*time.Second)
	_, body, _ := get(addr, "/readyz")
	t.Logf("not ready %s after the cut: %s", took.Round(time.Millisecond), strings.TrimSpace(body))
	if code, out := healthcheck(t, addr); code != 1 || !strings.Contains(out, "not consuming") {
		t.Errorf("service healthcheck with the broker away: exit %d, %q; want 1 saying a route is not consuming", code, out)
	}
	if code, _, err := get(addr, "/healthz"); err != nil || code != http.StatusOK {
		t.Errorf("/healthz while the broker is away = %d %v, want 200 (alive)", code, err)
	}
	proxy.listen(t, proxy.addr)
	back := waitStatus(t, addr, "/readyz", http.StatusOK, 60*time.Second)
	t.Logf("ready %s after the broker came back", back.Round(time.Millisecond))

	// A drain: a 1 s request in flight, then SIGTERM.
	client := env.Client(t)
	called := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		called <- client.Call(ctx, "test", "drain", nil)
	}()
	time.Sleep(300 * time.Millisecond) // the request is running
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	took = waitStatus(t, addr, "/readyz", http.StatusServiceUnavailable, 2*time.Second)
	_, body, _ = get(addr, "/readyz")
	t.Logf("not ready %s after SIGTERM: %s", took.Round(time.Millisecond), strings.TrimSpace(body))
	if !strings.Contains(body, "draining") {
		t.Errorf("/readyz during the drain says %q, want it to say draining", body)
	}
	if err := <-called; err != nil {
		t.Errorf("the request in flight at SIGTERM: %v, want its reply (drained)", err)
	}
	if code, err := p.Wait(30 * time.Second); err != nil || code != 0 {
		t.Errorf("service exit %d %v, want 0", code, err)
	}
}
