// Package bench measures the service from outside, as its callers see it:
// a load generator in a process of its own calls the running service
// binary's hello_world and, in alternating rounds (A B A B ...), a
// hand-written amqp091-go echo server in a process of its own; the ratio of
// the two is the price of everything the service does per call (decoding,
// the middleware, the reply envelope, acks), measured the same way in the
// same run.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"example.com/service/test/stack"
)

// result is one round of the load generator.
type result struct {
	Ops float64 `json:"ops_per_s"`
	P50 float64 `json:"p50_us"`
	P99 float64 `json:"p99_us"`
}

func BenchmarkOutside(b *testing.B) {
	bins, err := stack.Build(false) // as deployed
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(bins.Clean)
	dir := b.TempDir()
	for _, tool := range []string{"echo", "load"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, tool), "./test/bench/"+tool)
		cmd.Dir = bins.Root
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("build %s: %v\n%s", tool, err, out)
		}
	}
	env := stack.NewEnv(b, bins)
	stack.Start(b, bins, env, "MODE=production") // logs as deployed: nothing per success
	startEcho(b, filepath.Join(dir, "echo"), env.URL())

	rounds, _ := strconv.Atoi(os.Getenv("BENCH_ROUNDS"))
	if rounds < 1 {
		rounds = 3
	}
	for _, c := range []int{1, 64} {
		b.Run(fmt.Sprintf("concurrency=%d", c), func(b *testing.B) {
			var ratio, p99 []float64
			var svc, raw result
			for range rounds {
				svc = load(b, filepath.Join(dir, "load"), env.URL(), "hello_world", c)
				raw = load(b, filepath.Join(dir, "load"), env.URL(), "raw_echo", c)
				ratio = append(ratio, svc.Ops/raw.Ops)
				p99 = append(p99, svc.P99/raw.P99)
				b.Logf("round: service %.0f calls/s (p99 %.0f µs), raw echo %.0f calls/s (p99 %.0f µs): %.3f×", svc.Ops, svc.P99, raw.Ops, raw.P99, svc.Ops/raw.Ops)
			}
			b.ReportMetric(median(ratio), "ratio")
			b.ReportMetric(median(p99), "p99-ratio")
			b.ReportMetric(svc.Ops, "service-ops/s")
			b.ReportMetric(raw.Ops, "raw-ops/s")
		})
	}
}

// startEcho runs the echo server on queue raw_echo until the benchmark
// ends.
func startEcho(b *testing.B, bin, url string) {
	b.Helper()
	cmd := exec.Command(bin, "-url", url, "-queue", "raw_echo")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan struct{})
	go func() {
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			if strings.Contains(s.Text(), "echo serving") {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		b.Fatal("the echo server did not start")
	}
}

// load runs the load generator once against route.
func load(b *testing.B, bin, url, route string, concurrency int) result {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-url", url, "-route", route,
		"-concurrency", strconv.Itoa(concurrency), "-duration", "5s", "-warmup", "1s").Output()
	if err != nil {
		b.Fatalf("load %s: %v", route, err)
	}
	var r result
	if err := json.Unmarshal(out, &r); err != nil {
		b.Fatalf("load %s printed %q: %v", route, out, err)
	}
	return r
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
