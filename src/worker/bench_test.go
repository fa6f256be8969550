package worker_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// The benchmarks measure the library next to a minimal hand-written
// amqp091-go baseline doing the same work in the same run, and report both
// rates, their ratio (worker/raw; >= 0.9 is the target) and, for RPC, both
// p99 latencies. ns/op covers both halves; read the custom metrics.

var benchPayload = json.RawMessage(`{"n":1,"s":"hello"}`)

// run runs op n times on conc goroutines; it returns each op's latency and
// the wall time.
func run(n, conc int, op func() error) ([]time.Duration, time.Duration, error) {
	lat := make([][]time.Duration, conc)
	var next atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	began := time.Now()
	for g := range conc {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				t0 := time.Now()
				if err := op(); err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
				lat[g] = append(lat[g], time.Since(t0))
			}
		})
	}
	wg.Wait()
	if e, _ := first.Load().(error); e != nil {
		return nil, 0, e
	}
	return slices.Concat(lat...), time.Since(began), nil
}

func percentile(lat []time.Duration, p int) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return lat[min(len(lat)-1, len(lat)*p/100)]
}

// interleaved runs rawOp and libOp n times each, alternating rounds of at
// most chunk ops so both see the same machine load, and returns both rates
// and p99 latencies.
func interleaved(n, conc, chunk int, rawOp, libOp func() error) (rawRate, libRate float64, rawP99, libP99 time.Duration, err error) {
	c, err := compare(n, conc, chunk, rawOp, libOp)
	return c.rate[0], c.rate[1], c.p99[0], c.p99[1], err
}

// comparison is what compare measured of its two sides (0: op a, 1: op b): rate in ops/s, p99 latency, and the CPU time one op took
// in this process and in the broker's (zero when its process is not found).
type comparison struct {
	rate               [2]float64
	p99                [2]time.Duration
	selfCPU, brokerCPU [2]time.Duration
}

// compare is interleaved with the CPU time of each side: it tells whether
// a side's cost lands in this process (client and worker) or in the broker.
func compare(n, conc, chunk int, a, b func() error) (comparison, error) {
	ops := [2]func() error{a, b}
	var c comparison
	var lat [2][]time.Duration
	var took [2]time.Duration
	broker := brokerPID()
	for done := 0; done < n; done += chunk {
		k := min(chunk, n-done)
		for side, op := range ops {
			self0, broker0 := processCPU(0), processCPU(broker)
			l, t, err := run(k, conc, op)
			if err != nil {
				return c, err
			}
			lat[side], took[side] = append(lat[side], l...), took[side]+t
			c.selfCPU[side] += processCPU(0) - self0
			if broker > 0 {
				c.brokerCPU[side] += processCPU(broker) - broker0
			}
		}
	}
	for side := range ops {
		c.rate[side] = float64(n) / took[side].Seconds()
		c.p99[side] = percentile(lat[side], 99)
		c.selfCPU[side] /= time.Duration(n)
		c.brokerCPU[side] /= time.Duration(n)
	}
	return c, nil
}

// processCPU is the CPU time process pid (0: this one) has used so far:
// this process's from getrusage, another's as the sum of its threads'
// run times in /proc (nanoseconds, unlike /proc/PID/stat's clock ticks).
func processCPU(pid int) time.Duration {
	if pid == 0 {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var sum time.Duration
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, task.Name()))
		if err != nil {
			continue
		}
		ns, _ := strconv.ParseInt(strings.Fields(string(b) + " 0")[0], 10, 64)
		sum += time.Duration(ns)
	}
	return sum
}

// brokerPID is the process id of the broker at 127.0.0.1:5672, asked of
// rabbitmqctl once; 0 when it cannot tell (another machine's broker, no
// rabbitmqctl).
var brokerPID = sync.OnceValue(func() int {
	if !strings.HasPrefix(testenv.BrokerAddr(), "127.0.0.1:") && !strings.HasPrefix(testenv.BrokerAddr(), "localhost:") {
		return 0
	}
	out, err := exec.Command("rabbitmqctl", "-q", "eval", "os:getpid().").Output()
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.Trim(strings.TrimSpace(string(out)), `"`))
	return pid
})

// quiet keeps the default logger's info lines ("connected to RabbitMQ")
// out of the benchmark's output, where they would split its result lines.
func quiet(b *testing.B) {
	prev := slog.SetLogLoggerLevel(slog.LevelWarn)
	b.Cleanup(func() { slog.SetLogLoggerLevel(prev) })
}

func report(b *testing.B, raw, lib float64, rawP99, libP99 time.Duration) {
	b.ReportMetric(raw, "raw-ops/s")
	b.ReportMetric(lib, "worker-ops/s")
	b.ReportMetric(lib/raw, "ratio")
	if rawP99 > 0 {
		b.ReportMetric(float64(rawP99.Microseconds()), "raw-p99-µs")
		b.ReportMetric(float64(libP99.Microseconds()), "worker-p99-µs")
		b.ReportMetric(float64(libP99)/float64(rawP99), "p99-ratio")
	}
}

// rawGzip and rawGunzip are what a hand-written client and server that
// talk to the Python fleet (gzip bodies) do: compress and inflate with
// pooled writers and readers, at the worker's level (BestSpeed).
var (
	rawWriters = sync.Pool{New: func() any { zw, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed); return zw }}
	rawReaders sync.Pool
)

func rawGzip(body []byte) []byte {
	var buf bytes.Buffer
	zw := rawWriters.Get().(*gzip.Writer)
	zw.Reset(&buf)
	_, _ = zw.Write(body)
	_ = zw.Close()
	rawWriters.Put(zw)
	return buf.Bytes()
}

func rawGunzip(body []byte) []byte {
	zr, _ := rawReaders.Get().(*gzip.Reader)
	if zr == nil {
		zr, _ = gzip.NewReader(bytes.NewReader(body))
	} else {
		_ = zr.Reset(bytes.NewReader(body))
	}
	out, _ := io.ReadAll(zr)
	rawReaders.Put(zr)
	return out
}

// rawEcho is the baseline RPC server: one consumer answering each request
// to its reply_to, then acking; with gz it inflates each request and
// answers gzip, as a hand-written server beside the Python fleet must.
func rawEcho(b *testing.B, queue string, gz bool, typ worker.QueueType) {
	ch := raw(b)
	if err := ch.Qos(256, 0, false); err != nil {
		b.Fatal(err)
	}
	durable, args := false, amqp.Table(nil) // as the seed declares RPC queues
	if typ == worker.Quorum {
		durable, args = true, amqp.Table{"x-queue-type": "quorum"}
	}
	if _, err := ch.QueueDeclare(queue, durable, false, false, false, args); err != nil {
		b.Fatal(err)
	}
	ds, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for d := range ds {
			body, ct := d.Body, "application/json"
			if gz {
				body, ct = rawGzip(rawGunzip(body)), "application/octet-stream"
			}
			_ = ch.PublishWithContext(context.Background(), "", d.ReplyTo, false, false, amqp.Publishing{
				ContentType: ct, CorrelationId: d.CorrelationId, Body: body,
			})
			_ = d.Ack(false)
		}
	}()
}

// rawCaller is the baseline RPC client: direct reply-to, a map of waiters.
// With mandatory it also publishes mandatory, as a client must to fail at
// once when a route has no queue (the worker's client always does), and
// drains the returns.
type rawCaller struct {
	ch        *amqp.Channel
	mandatory bool
	gz        bool       // gzip requests, inflate replies
	headers   amqp.Table // sent with every request (BenchmarkTraceHeader)
	mu        sync.Mutex
	pending   map[string]chan []byte
	seq       atomic.Uint64
}

func newRawCaller(b *testing.B, mandatory, gz bool) *rawCaller {
	c := &rawCaller{ch: raw(b), mandatory: mandatory, gz: gz, pending: map[string]chan []byte{}}
	if mandatory {
		returns := c.ch.NotifyReturn(make(chan amqp.Return, 16))
		go func() {
			for range returns { // none expected: the queue exists
			}
		}()
	}
	ds, err := c.ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for d := range ds {
			c.mu.Lock()
			w := c.pending[d.CorrelationId]
			delete(c.pending, d.CorrelationId)
			c.mu.Unlock()
			if w != nil {
				if c.gz {
					d.Body = rawGunzip(d.Body)
				}
				w <- d.Body
			}
		}
	}()
	return c
}

func (c *rawCaller) call(queue string, body []byte) error {
	id := strconv.FormatUint(c.seq.Add(1), 36)
	w := make(chan []byte, 1)
	c.mu.Lock()
	c.pending[id] = w
	c.mu.Unlock()
	ct := "application/json"
	if c.gz {
		body, ct = rawGzip(body), "application/octet-stream"
	}
	err := c.ch.PublishWithContext(context.Background(), "", queue, c.mandatory, false, amqp.Publishing{
		ContentType: ct, ReplyTo: "amq.rabbitmq.reply-to", CorrelationId: id, Body: body, Headers: c.headers,
	})
	if err != nil {
		return err
	}
	select {
	case <-w:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("raw call %s: no reply", id)
	}
}

// BenchmarkRPC: round trips through worker and client against a raw echo
// server and caller. The baselines: raw=minimal publishes requests without
// the mandatory flag (the baseline); raw=mandatory publishes them
// mandatory, the broker-side cost that no-route detection needs, so the
// ratio shows the library's own overhead; both against a client sending
// plain JSON (worker.WithEncoding(worker.JSON)). raw=mandatory+gzip
// compares the client's default encoding, gzip as the Python fleet wants
// it, with a raw pair that compresses and inflates the same way.
// queue=quorum runs the mandatory pair on quorum queues (both declared
// as WithQueueType(worker.Quorum) declares them).
func BenchmarkRPC(b *testing.B) {
	quiet(b)
	requireBroker(b)
	for _, conc := range []int{1, 64} {
		for _, v := range []struct {
			name          string
			mandatory, gz bool
			typ           worker.QueueType
		}{
			{"raw=minimal", false, false, worker.Classic},
			{"raw=mandatory", true, false, worker.Classic},
			{"raw=mandatory+gzip", true, true, worker.Classic},
			{"queue=quorum/raw=mandatory", true, false, worker.Quorum},
		} {
			b.Run(fmt.Sprintf("concurrency=%d/%s", conc, v.name), func(b *testing.B) { benchRPC(b, conc, v.mandatory, v.gz, v.typ) })
		}
	}
}

func benchRPC(b *testing.B, conc int, mandatory, gz bool, typ worker.QueueType) {
	rawQ, libQ := route(b, "bench-raw"), route(b, "bench-rpc")
	rawEcho(b, rawQ, gz, typ)
	rc := newRawCaller(b, mandatory, gz)
	body := []byte(`{"data":` + string(benchPayload) + `}`)

	conn := dial(b, "")
	rpc := worker.NewRPC(conn, worker.WithQueueType(typ))
	rpc.Handle(libQ, worker.Func(func(_ context.Context, in json.RawMessage) (json.RawMessage, error) { return in, nil }))
	start(b, rpc)
	c := client(b, dial(b, ""))
	if !gz {
		c = c.WithEncoding(worker.JSON)
	}
	ctx := context.Background()
	var out json.RawMessage
	call := func() error { return c.Call(ctx, libQ, benchPayload, &out) }
	if err := call(); err != nil { // warm up
		b.Fatal(err)
	}
	_ = rc.call(rawQ, body)

	b.ResetTimer()
	rawRate, libRate, rawP99, libP99, err := interleaved(b.N, conc, max(200, conc*10),
		func() error { return rc.call(rawQ, body) },
		func() error {
			var out json.RawMessage
			return c.Call(ctx, libQ, benchPayload, &out)
		})
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	report(b, rawRate, libRate, rawP99, libP99)
}

// BenchmarkPublish: persistent messages to a durable queue, each confirmed
// before the publisher counts it, with the same number in flight on both
// sides, in alternating rounds of 2000. Raw: one goroutine pipelining with
// a window of deferred confirms. Worker: that many goroutines calling
// Publish.
func BenchmarkPublish(b *testing.B) {
	quiet(b)
	for _, inflight := range []int{64, 256} {
		b.Run(fmt.Sprintf("inflight=%d", inflight), func(b *testing.B) { benchPublish(b, inflight) })
	}
}

func benchPublish(b *testing.B, inflight int) {
	requireBroker(b)
	rawQ, libQ := route(b, "bench-praw"), route(b, "bench-pub")
	ch := raw(b)
	for _, q := range []string{rawQ, libQ} {
		if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
			b.Fatal(err)
		}
	}
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"data":` + string(benchPayload) + `}`)
	c := client(b, dial(b, "")).WithEncoding(worker.JSON) // plain JSON, as the raw publisher sends
	ctx := context.Background()

	rawRun := func(k int) error {
		window := make([]*amqp.DeferredConfirmation, 0, k)
		wait := func(dc *amqp.DeferredConfirmation) error {
			if ok, err := dc.WaitContext(ctx); !ok || err != nil {
				return fmt.Errorf("raw publish not confirmed: %w", err)
			}
			return nil
		}
		for i := range k {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", rawQ, true, false, amqp.Publishing{
				ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: body,
			})
			if err != nil {
				return err
			}
			window = append(window, dc)
			if i >= inflight {
				if err := wait(window[i-inflight]); err != nil {
					return err
				}
			}
		}
		for _, dc := range window[max(0, k-inflight):] {
			if err := wait(dc); err != nil {
				return err
			}
		}
		return nil
	}
	b.ResetTimer()
	var rawTook, libTook time.Duration
	const chunk = 2000
	for done := 0; done < b.N; done += chunk {
		k := min(chunk, b.N-done)
		t0 := time.Now()
		if err := rawRun(k); err != nil {
			b.Fatal(err)
		}
		rawTook += time.Since(t0)
		// The worker publishes the same k with the same number in flight.
		_, took, err := run(k, inflight, func() error { return c.Publish(ctx, libQ, benchPayload) })
		if err != nil {
			b.Fatal(err)
		}
		libTook += took
	}
	rawRate := float64(b.N) / rawTook.Seconds()
	libRate := float64(b.N) / libTook.Seconds()
	b.StopTimer()
	report(b, rawRate, libRate, 0, 0)
}

// BenchmarkConsume: b.N messages waiting in a durable queue of each type,
// consumed and acked. Raw: one consumer acking one by one, same prefetch,
// on a queue declared as the worker declares it. Worker: a Queue worker
// with its default prefetch and a typed handler.
func BenchmarkConsume(b *testing.B) {
	quiet(b)
	for _, typ := range []worker.QueueType{worker.Quorum, worker.Classic} {
		b.Run("queue="+string(typ), func(b *testing.B) { benchConsume(b, typ) })
	}
}

func benchConsume(b *testing.B, typ worker.QueueType) {
	requireBroker(b)
	rawQ, libQ := route(b, "bench-craw"), route(b, "bench-con")
	ch := raw(b)
	body := []byte(`{"data":` + string(benchPayload) + `}`)
	// Both queues are declared by a worker of the type: the same arguments.
	declare := worker.NewQueue(dial(b, ""), worker.WithQueueType(typ))
	for _, q := range []string{rawQ, libQ} {
		declare.Handle(q, worker.Job(func(context.Context, any) error { return nil }))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := declare.Start(ctx); err != nil {
		b.Fatal(err)
	}
	if err := declare.Shutdown(ctx); err != nil {
		b.Fatal(err)
	}
	fill := func(q string) {
		for range b.N {
			if err := ch.PublishWithContext(context.Background(), "", q, false, false, amqp.Publishing{
				ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: body,
			}); err != nil {
				b.Fatal(err)
			}
		}
		eventually(b, "queue filled", func() bool {
			qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
			return err == nil && qi.Messages >= b.N
		})
	}
	b.StopTimer()
	fill(rawQ)
	fill(libQ)
	b.StartTimer()

	cch := raw(b)
	if err := cch.Qos(worker.DefaultPrefetch, 0, false); err != nil {
		b.Fatal(err)
	}
	began := time.Now()
	ds, err := cch.Consume(rawQ, "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	for range b.N {
		d := <-ds
		var v struct{ Data json.RawMessage }
		_ = json.Unmarshal(d.Body, &v)
		if err := d.Ack(false); err != nil {
			b.Fatal(err)
		}
	}
	rawRate := float64(b.N) / time.Since(began).Seconds()

	var n atomic.Int64
	done := make(chan struct{})
	q := worker.NewQueue(dial(b, ""), worker.WithQueueType(typ))
	q.Handle(libQ, worker.Job(func(_ context.Context, m struct {
		N int    `json:"n"`
		S string `json:"s"`
	},
	) error {
		if n.Add(1) == int64(b.N) {
			close(done)
		}
		return nil
	}))
	began = time.Now()
	start(b, q)
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("consumed %d of %d", n.Load(), b.N)
	}
	libRate := float64(b.N) / time.Since(began).Seconds()
	b.StopTimer()
	report(b, rawRate, libRate, 0, 0)
}
