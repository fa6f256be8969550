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

type discardSpans struct{}

func (discardSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardSpans) Shutdown(context.Context) error                             { return nil }

// BenchmarkObserveHooks: what tracing and metrics cost a call in this
// process alone, without a broker: a Client's send hooks (span, headers,
// call histogram) and a worker's Trace and Metrics middleware around an
// echo handler, every trace sampled (or one in ten: @10%), spans batched
// to an exporter that drops them; context is the tracing code with the
// no-op tracer under a caller's span context (headers, no spans). ns/op and allocs/op are one call's both
// sides; on=none is the benchmark's own share (a message, a request).
func BenchmarkObserveHooks(b *testing.B) {
	for _, on := range []string{"tracing+metrics", "tracing", "tracing@10%", "context", "metrics", "none"} {
		b.Run("on="+on, func(b *testing.B) {
			sampled := 1.0
			if strings.Contains(on, "@10%") {
				sampled = 0.1
			}
			sdk := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardSpans{}),
				sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(sampled))))
			b.Cleanup(func() { _ = sdk.Shutdown(context.Background()) })
			var tp trace.TracerProvider = sdk
			callCtx := context.Background()
			if on == "context" { // no spans: the no-op tracer under a caller's span context
				tp = noop.NewTracerProvider()
				callCtx = trace.ContextWithSpanContext(callCtx, trace.NewSpanContext(trace.SpanContextConfig{
					TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled,
				}))
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
