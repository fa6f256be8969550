package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"example.com/service/src/worker"
)

// Trace runs each delivery in a consumer span, child of the trace context
// in its headers, and the handler's ctx carries it. On a worker:
// rpc.Use(worker.Trace(tp, prop)); here the middleware is called directly
// with a request as the worker would hand it over.
func ExampleTrace() {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	prop := propagation.TraceContext{}

	h := worker.Trace(tp, prop)(worker.HandlerFunc(func(ctx context.Context, req *worker.Request) ([]byte, error) {
		fmt.Println("handler's trace:", trace.SpanContextFromContext(ctx).TraceID())
		return []byte(`"ok"`), nil
	}))
	headers := map[string]any{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	_, _ = h.Serve(context.Background(), &worker.Request{Route: "items.get", Data: json.RawMessage(`1`), Headers: headers, MessageID: "m-1"})

	s := exp.GetSpans()[0]
	fmt.Println(s.Name, s.SpanKind, "parent", s.Parent.SpanID())
	// Output:
	// handler's trace: 0af7651916cd43dd8448eb211c80319c
	// process items.get consumer parent b7ad6b7169203331
}

// Carrier puts a trace context into AMQP headers and reads it back, as a
// hand-written publisher or consumer would.
func ExampleCarrier() {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0x0a, 0xf7, 0x65, 0x19}, SpanID: trace.SpanID{0xb7, 0xad}, TraceFlags: trace.FlagsSampled,
	})
	headers := worker.Carrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), sc), headers)
	fmt.Println(headers["traceparent"])

	back := propagation.TraceContext{}.Extract(context.Background(), headers)
	fmt.Println(trace.SpanContextFromContext(back).TraceID() == sc.TraceID())
	// Output:
	// 00-0af76519000000000000000000000000-b7ad000000000000-01
	// true
}

// Metrics count every delivery by route and outcome; register them once,
// add the middleware with Use and the client option to Clients, and serve
// the registry (telemetry.Listen does, at METRICS_ADDR).
func ExampleMetrics() {
	reg := prometheus.NewRegistry()
	metrics, err := worker.NewMetrics(reg)
	if err != nil {
		fmt.Println(err)
		return
	}
	h := metrics.Middleware()(worker.HandlerFunc(func(ctx context.Context, req *worker.Request) ([]byte, error) {
		return nil, nil
	}))
	for range 2 {
		_, _ = h.Serve(context.Background(), &worker.Request{Route: "items.get", Data: json.RawMessage(`1`)})
	}
	families, _ := reg.Gather()
	for _, f := range families {
		if f.GetName() == "worker_requests_total" {
			m := f.GetMetric()[0]
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			fmt.Println(f.GetName(), strings.Join(labels, ","), m.GetCounter().GetValue())
		}
	}
	// Output:
	// worker_requests_total kind=rpc,outcome=replied,route=items.get 2
}
