package outbox_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"example.com/service/src/db"
	"example.com/service/src/outbox"
	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// TestRelayContinuesTrace: a message recorded in the outbox by a traced
// handler is published by the relay in a span of the handler's trace
// (child of the handler's span, though the relay's ctx has none), and the
// message carries that send span's context to its consumer.
func TestRelayContinuesTrace(t *testing.T) {
	_, c, conn := setUp(t, "outbox-trace-")
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	prop := propagation.TraceContext{}
	client := worker.NewClient(conn, worker.WithEncoding(worker.JSON), worker.WithTracing(tp, prop))
	t.Cleanup(func() { _ = client.Close() })

	ch := testenv.Channel(t)
	queue := testenv.Name("outbox-trace-q-")
	t.Cleanup(func() { _ = testenv.DeleteQueues(queue) })
	if _, err := ch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}

	ctx, handler := tp.Tracer("test").Start(context.Background(), "process example-item.forward")
	err := c.InTx(ctx, func(tx *db.Tx) error {
		_, err := outbox.Publish(ctx, tx, queue, map[string]any{"n": 1})
		return err
	})
	handler.End()
	if err != nil {
		t.Fatal(err)
	}
	relay := outbox.NewRelay(c, client, outbox.RelayConfig{})
	if n, err := relay.Flush(context.Background()); n != 1 || err != nil {
		t.Fatalf("Flush = %d, %v; want 1 message published", n, err)
	}

	var send tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		if s.Name == "send "+queue {
			send = s
		}
	}
	if !send.SpanContext.IsValid() {
		t.Fatalf("no span named %q among %d spans", "send "+queue, len(exp.GetSpans()))
	}
	if send.SpanContext.TraceID() != handler.SpanContext().TraceID() || send.Parent.SpanID() != handler.SpanContext().SpanID() {
		t.Fatalf("the relay's send span is in trace %s under span %s, want the handler's trace %s under its span %s",
			send.SpanContext.TraceID(), send.Parent.SpanID(), handler.SpanContext().TraceID(), handler.SpanContext().SpanID())
	}

	// Confirmed by the broker before Flush returned: the message is there.
	d, ok, err := ch.Get(queue, true)
	if err != nil || !ok {
		t.Fatalf("get the relayed message from %s: ok=%v, %v", queue, ok, err)
	}
	got, _ := d.Headers["traceparent"].(string)
	remote := trace.SpanContextFromContext(prop.Extract(context.Background(), propagation.MapCarrier{"traceparent": got}))
	if remote.SpanID() != send.SpanContext.SpanID() {
		t.Fatalf("the message's traceparent %q names span %s, want the send span %s", got, remote.SpanID(), send.SpanContext.SpanID())
	}
}
