package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"example.com/service/src/worker"
)

// BenchmarkRPCObserved: RPC calls through a worker and a client with
// tracing (the SDK, every trace sampled or one in ten, spans batched to an
// exporter) and metrics on, next to the same calls with both off, in
// alternating rounds of the same run. ratio is on/off (the goal is >=
// 0.95); the *-cpu-µs/op metrics say where a call's CPU time went: this
// process (the client and the worker) or the broker.
//
// deadline=no calls with a ctx without deadline: the off calls carry no
// AMQP headers at all, the traced ones a traceparent header, so the ratio
// includes what a headers table costs the broker (BenchmarkTraceHeader).
// deadline=yes calls as a gateway does, with a timeout: both carry the
// deadline header, and tracing adds a field to the table.
func BenchmarkRPCObserved(b *testing.B) {
	quiet(b)
	requireBroker(b)
	for _, deadline := range []bool{false, true} {
		for _, conc := range []int{1, 64} {
			// on=none is the control: both sides off, so its ratio is the
			// benchmark's own noise and bias.
			// tracing@10% samples one trace in ten (parent-based: the
			// worker's span follows the caller's choice), as production
			// services often configure with OTEL_TRACES_SAMPLER.
			// context runs the tracing code with OpenTelemetry's no-op
			// tracer under a caller's span context: the traceparent header
			// travels and is read back, no span is made (the header and the
			// hooks without the SDK).
			for _, on := range []string{"tracing+metrics", "tracing@10%+metrics", "tracing", "context", "metrics", "none"} {
				b.Run(fmt.Sprintf("deadline=%s/concurrency=%d/on=%s", yesNo(deadline), conc, on), func(b *testing.B) {
					var tp trace.TracerProvider
					ctx := context.Background()
					switch {
					case on == "context":
						tp = noop.NewTracerProvider()
						ctx = worker.BenchCaller(ctx)
					case strings.Contains(on, "tracing"):
						sampled := 1.0
						if strings.Contains(on, "@10%") {
							sampled = 0.1
						}
						tp = worker.BenchTracing(b, sampled)
					}
					benchObserved(ctx, b, conc, deadline, tp, strings.Contains(on, "metrics"))
				})
			}
		}
	}
}

func yesNo(v bool) string {
	if v {
		return "yes"
	}
	return "no"
}

// benchObserved compares calls with tp's tracing (none when nil) and
// metrics (when metered) to calls with neither; the traced calls start
// from onCtx.
func benchObserved(onCtx context.Context, b *testing.B, conc int, deadline bool, tp trace.TracerProvider, metered bool) {
	offQ, onQ := route(b, "bench-off"), route(b, "bench-on")
	echo := worker.Func(func(_ context.Context, in json.RawMessage) (json.RawMessage, error) { return in, nil })

	prop := propagation.TraceContext{}
	metrics, err := worker.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}

	conn := dial(b, "")
	off := worker.NewRPC(conn)
	off.Handle(offQ, echo)
	start(b, off)
	on := worker.NewRPC(conn)
	var opts []worker.ClientOption
	if tp != nil {
		on.Use(worker.Trace(tp, prop))
		opts = append(opts, worker.WithTracing(tp, prop))
	}
	if metered {
		on.Use(metrics.Middleware())
		opts = append(opts, metrics.Client())
	}
	on.Handle(onQ, echo)
	start(b, on)

	cconn := dial(b, "")
	offC := worker.NewClient(cconn, worker.WithEncoding(worker.JSON))
	onC := worker.NewClient(cconn, append(opts, worker.WithEncoding(worker.JSON))...)
	b.Cleanup(func() { _ = offC.Close(); _ = onC.Close() })
	call := func(base context.Context, c *worker.Client, q string) func() error {
		return func() error {
			ctx := base
			if deadline {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
			}
			var out json.RawMessage
			return c.Call(ctx, q, benchPayload, &out)
		}
	}
	for _, warm := range []func() error{call(context.Background(), offC, offQ), call(onCtx, onC, onQ)} {
		if err := warm(); err != nil {
			b.Fatal(err)
		}
	}

	b.ResetTimer()
	c, err := compare(b.N, conc, max(200, conc*10), call(context.Background(), offC, offQ), call(onCtx, onC, onQ))
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	reportComparison(b, "off", "on", c)
}

// BenchmarkTraceHeader: what carrying a trace context costs without any
// tracing code: a raw amqp091-go caller sending a traceparent header on
// every request against the same caller sending none, to the same raw echo
// server, in alternating rounds. ratio is with/without.
func BenchmarkTraceHeader(b *testing.B) {
	quiet(b)
	requireBroker(b)
	for _, conc := range []int{1, 64} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			q := route(b, "bench-header")
			rawEcho(b, q, false, worker.Classic)
			plain := newRawCaller(b, true, false)
			traced := newRawCaller(b, true, false)
			traced.headers = amqp.Table{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
			body := []byte(`{"data":` + string(benchPayload) + `}`)
			_, _ = plain.call(q, body), traced.call(q, body)
			b.ResetTimer()
			c, err := compare(b.N, conc, max(200, conc*10),
				func() error { return plain.call(q, body) }, func() error { return traced.call(q, body) })
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			reportComparison(b, "without", "with", c)
		})
	}
}

// reportComparison reports both sides of c, named first and second: their
// rates, ratio (second/first), p99 latencies, and the CPU time a call took
// in this process (client and worker: self) and in the broker, in µs.
func reportComparison(b *testing.B, first, second string, c comparison) {
	b.ReportMetric(c.rate[1]/c.rate[0], "ratio")
	for side, name := range []string{first, second} {
		b.ReportMetric(c.rate[side], name+"-ops/s")
		b.ReportMetric(float64(c.p99[side].Microseconds()), name+"-p99-µs")
		b.ReportMetric(float64(c.selfCPU[side].Nanoseconds())/1e3, name+"-self-cpu-µs/op")
		if c.brokerCPU[side] > 0 {
			b.ReportMetric(float64(c.brokerCPU[side].Nanoseconds())/1e3, name+"-broker-cpu-µs/op")
		}
	}
}
