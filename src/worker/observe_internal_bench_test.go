package worker

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// discard is a span exporter that drops what it is given: the benchmarks
// pay for recording, batching and handing over spans, not for a network.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

// BenchTracing is the benchmarks' SDK (for this package's and worker_test's):
// parent-based sampling of the fraction sampled of traces, spans batched to
// an exporter that drops them, shut down when tb ends.
func BenchTracing(tb testing.TB, sampled float64) *sdktrace.TracerProvider {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(sampled))))
	tb.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp
}

// BenchCaller returns ctx under a fixed sampled span context: a caller's
// trace, for the no-op tracer to pass on.
func BenchCaller(ctx context.Context) context.Context {
	return trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled,
	}))
}

// BenchmarkObserveHooks: what tracing and metrics cost a call in this
// process alone, without a broker: a Client's send hooks (span, headers,
// call histogram) and a worker's Trace and Metrics middleware around an
// echo handler, every trace sampled (or one in ten: @10%), spans batched
// to an exporter that drops them; context is the tracing code with the
// no-op tracer under a caller's span context (headers, no spans). ns/op
// and allocs/op are one call's both sides; on=none is the benchmark's own
// share (a message, a request).
func BenchmarkObserveHooks(b *testing.B) {
	for _, on := range []string{"tracing+metrics", "tracing", "tracing@10%", "context", "metrics", "none"} {
		b.Run("on="+on, func(b *testing.B) {
			sampled := 1.0
			if strings.Contains(on, "@10%") {
				sampled = 0.1
			}
			var tp trace.TracerProvider = BenchTracing(b, sampled)
			callCtx := context.Background()
			if on == "context" { // no spans: the no-op tracer under a caller's span context
				tp = noop.NewTracerProvider()
				callCtx = BenchCaller(callCtx)
			}
			prop := propagation.TraceContext{}
			m, err := NewMetrics(prometheus.NewRegistry())
			if err != nil {
				b.Fatal(err)
			}
			c := Client{sessions: &sessions{opts: clientOptions(nil)}}
			var mws []Middleware
			var opts []ClientOption
			if on != "metrics" && on != "none" {
				opts = append(opts, WithTracing(tp, prop))
				mws = append(mws, Trace(tp, prop))
			}
			if strings.Contains(on, "metrics") {
				opts = append(opts, m.Client())
				mws = append(mws, m.Middleware())
			}
			for _, o := range opts {
				o.applyClient(&c.opts)
			}
			var h Handler = HandlerFunc(func(_ context.Context, req *Request) ([]byte, error) { return req.Data, nil })
			for i := len(mws) - 1; i >= 0; i-- {
				h = mws[i](h)
			}
			base := context.WithValue(context.Background(), serverKey{}, &server{kind: kindRPC})
			data := []byte(`{"n":1}`)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				msg := amqp.Publishing{
					CorrelationId: "c1", MessageId: "c1", Body: data,
					Headers: amqp.Table{HeaderDeadline: int64(1)},
				}
				_, end := c.sending(callCtx, "call", "bench", &msg)
				req := &Request{Route: "bench", Data: data, Headers: msg.Headers, MessageID: msg.MessageId, CorrelationID: msg.CorrelationId}
				if _, err := h.Serve(base, req); err != nil {
					b.Fatal(err)
				}
				end(nil)
			}
		})
	}
}
