package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"example.com/service/src/telemetry"
	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// tracing is an SDK tracer provider that keeps its spans in memory.
func tracing(tb testing.TB) (*sdktrace.TracerProvider, *tracetest.InMemoryExporter, propagation.TextMapPropagator) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	tb.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, exp, propagation.TraceContext{}
}

// spanNamed returns the one ended span called name, waiting for it a while
// (a worker's span ends after the reply is sent).
func spanNamed(tb testing.TB, exp *tracetest.InMemoryExporter, name string) tracetest.SpanStub {
	tb.Helper()
	var found []tracetest.SpanStub
	eventually(tb, "a span named "+name, func() bool {
		found = found[:0]
		for _, s := range exp.GetSpans() {
			if s.Name == name {
				found = append(found, s)
			}
		}
		return len(found) > 0
	})
	if len(found) != 1 {
		tb.Fatalf("%d spans named %q, want 1", len(found), name)
	}
	return found[0]
}

func attrs(s tracetest.SpanStub) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes {
		m[kv.Key] = kv.Value
	}
	return m
}

func wantAttr(t *testing.T, s tracetest.SpanStub, key attribute.Key, want any) {
	t.Helper()
	got, ok := attrs(s)[key]
	if !ok {
		t.Errorf("span %q has no attribute %s (has %v)", s.Name, key, s.Attributes)
		return
	}
	if got.AsInterface() != want {
		t.Errorf("span %q: %s = %v, want %v", s.Name, key, got.AsInterface(), want)
	}
}

// TestTraceRPC follows one Call: the caller's span, the Client's send span,
// the worker's process span and a span the handler starts from its ctx are
// one trace, parent to child; a failure is recorded with its type.
func TestTraceRPC(t *testing.T) {
	tp, exp, prop := tracing(t)
	var handlerTrace trace.TraceID
	name, _ := serveRPC(t, "trace", worker.Func(func(ctx context.Context, in string) (string, error) {
		handlerTrace = trace.SpanContextFromContext(ctx).TraceID()
		_, span := tp.Tracer("test").Start(ctx, "inside the handler")
		span.End()
		if in == "fail" {
			return "", worker.Errorf("NotFound", "no item %q", in)
		}
		return "hello " + in, nil
	}), worker.Trace(tp, prop))
	c := worker.NewClient(dial(t, ""), worker.WithTracing(tp, prop))
	t.Cleanup(func() { _ = c.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx, caller := tp.Tracer("test").Start(ctx, "caller")
	var reply string
	if err := c.Call(ctx, name, "you", &reply); err != nil || reply != "hello you" {
		t.Fatalf("Call = %q, %v; want hello you", reply, err)
	}
	caller.End()

	root := spanNamed(t, exp, "caller")
	send := spanNamed(t, exp, "send "+name)
	process := spanNamed(t, exp, "process "+name)
	inner := spanNamed(t, exp, "inside the handler")
	for _, s := range []tracetest.SpanStub{send, process, inner} {
		if s.SpanContext.TraceID() != root.SpanContext.TraceID() {
			t.Errorf("span %q is in trace %s, want the caller's %s", s.Name, s.SpanContext.TraceID(), root.SpanContext.TraceID())
		}
	}
	if handlerTrace != root.SpanContext.TraceID() {
		t.Errorf("the handler's ctx carries trace %s, want the caller's %s", handlerTrace, root.SpanContext.TraceID())
	}
	for _, pc := range []struct{ child, parent tracetest.SpanStub }{{send, root}, {process, send}, {inner, process}} {
		if pc.child.Parent.SpanID() != pc.parent.SpanContext.SpanID() {
			t.Errorf("span %q has parent %s, want %q (%s)", pc.child.Name, pc.child.Parent.SpanID(), pc.parent.Name, pc.parent.SpanContext.SpanID())
		}
	}
	if send.SpanKind != trace.SpanKindClient || process.SpanKind != trace.SpanKindConsumer {
		t.Errorf("kinds: send %v, process %v; want client, consumer", send.SpanKind, process.SpanKind)
	}
	wantAttr(t, process, "messaging.system", "rabbitmq")
	wantAttr(t, process, "messaging.destination.name", name)
	wantAttr(t, process, "messaging.operation.type", "process")
	wantAttr(t, process, worker.AttrOutcome, worker.OutcomeReplied)
	wantAttr(t, process, worker.AttrRedelivered, false)
	wantAttr(t, process, "messaging.message.id", attrs(send)["messaging.message.id"].AsString())
	if attrs(send)["messaging.message.id"].AsString() == "" {
		t.Error("the send span has no message id")
	}

	exp.Reset()
	err := c.Call(context.Background(), name, "fail", nil)
	var remote *worker.RemoteError
	if !errors.As(err, &remote) || remote.Type != "NotFound" {
		t.Fatalf("Call(fail) = %v, want a NotFound RemoteError", err)
	}
	failed := spanNamed(t, exp, "process "+name)
	wantAttr(t, failed, worker.AttrOutcome, worker.OutcomeError)
	wantAttr(t, failed, "error.type", "NotFound")
	wantAttr(t, failed, worker.AttrErrorID, remote.ID)
	if failed.Status.Code != codes.Error {
		t.Errorf("failed span's status is %v, want Error", failed.Status)
	}
	sent := spanNamed(t, exp, "send "+name)
	if sent.Status.Code != codes.Error || attrs(sent)["error.type"].AsString() != "NotFound" {
		t.Errorf("the caller's send span of a failed call: status %v, attributes %v; want Error, error.type NotFound", sent.Status, sent.Attributes)
	}
	if failed.Parent.TraceID() == (trace.TraceID{}) || failed.Parent.SpanID() != sent.SpanContext.SpanID() {
		t.Errorf("a call without a span in its ctx: the process span's parent is %v, want the send span", failed.Parent)
	}
}

// TestTraceWithoutHeaders: a caller that sends no trace context (a Python
// seed client) is served as before, in a new root span.
func TestTraceWithoutHeaders(t *testing.T) {
	tp, exp, prop := tracing(t)
	name, _ := serveRPC(t, "trace-plain", worker.Func(func(ctx context.Context, in string) (string, error) { return "hi " + in, nil }),
		worker.Trace(tp, prop))

	ch := raw(t)
	replyTo, replies := replyQueue(t, ch)
	if err := ch.Publish("", name, false, false, amqp.Publishing{
		ContentType: "application/json", ReplyTo: replyTo, CorrelationId: "py-1", MessageId: "py-1",
		Body: []byte(`{"data": "python"}`),
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-replies:
		var env struct {
			Success bool   `json:"success"`
			Data    string `json:"data"`
		}
		if err := json.Unmarshal(d.Body, &env); err != nil || !env.Success || env.Data != "hi python" {
			t.Fatalf("reply %s (%v), want success hi python", d.Body, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reply in 10 s")
	}
	s := spanNamed(t, exp, "process "+name)
	if s.Parent.IsValid() {
		t.Errorf("span of a request without trace headers has parent %v, want none (a root span)", s.Parent)
	}
	if !s.SpanContext.TraceID().IsValid() {
		t.Error("root span has no trace id")
	}
	wantAttr(t, s, "messaging.message.id", "py-1")
	wantAttr(t, s, "messaging.message.conversation_id", "py-1")
}

// TestTraceQueue: a published message is processed in a child of the
// publish span; its failure after the last retry is recorded as
// dead-lettered, once for the whole delivery (retries included).
func TestTraceQueue(t *testing.T) {
	requireBroker(t)
	tp, exp, prop := tracing(t)
	conn := dial(t, "")
	name := route(t, "trace-queue")
	queue := worker.NewQueue(conn, worker.WithRetry(worker.Retry{Attempts: 2, Backoff: time.Millisecond}))
	queue.Use(worker.Trace(tp, prop))
	runs := &counter{}
	queue.Handle(name, worker.Job(func(ctx context.Context, in string) error {
		runs.add(in)
		if in == "bad" {
			return errors.New("cannot store it")
		}
		return nil
	}))
	start(t, queue)
	c := worker.NewClient(conn, worker.WithTracing(tp, prop))
	t.Cleanup(func() { _ = c.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Publish(ctx, name, "good"); err != nil {
		t.Fatal(err)
	}
	send := spanNamed(t, exp, "send "+name)
	ok := spanNamed(t, exp, "process "+name)
	if send.SpanKind != trace.SpanKindProducer {
		t.Errorf("publish span kind %v, want producer", send.SpanKind)
	}
	if ok.Parent.SpanID() != send.SpanContext.SpanID() || ok.SpanContext.TraceID() != send.SpanContext.TraceID() {
		t.Errorf("process span's parent %v, want the publish span %v", ok.Parent, send.SpanContext)
	}
	wantAttr(t, ok, worker.AttrOutcome, worker.OutcomeAcked)

	exp.Reset()
	if err := c.Publish(ctx, name, "bad"); err != nil {
		t.Fatal(err)
	}
	bad := spanNamed(t, exp, "process "+name)
	wantAttr(t, bad, worker.AttrOutcome, worker.OutcomeDeadLettered)
	wantAttr(t, bad, "error.type", "Error")
	if runs.get("bad") != 2 {
		t.Errorf("bad ran %d times, want 2 (one span around both attempts)", runs.get("bad"))
	}
	if !strings.HasPrefix(bad.Status.Description, "Error") || bad.Status.Code != codes.Error {
		t.Errorf("status %v, want Error", bad.Status)
	}
}

// TestTraceBrokerRetry: with retries held by the broker each run is a
// delivery of its own: the failed runs are "retrying", the last one
// "dead_lettered", and all stay in the publisher's trace (the retry copies
// keep the headers).
func TestTraceBrokerRetry(t *testing.T) {
	requireBroker(t)
	tp, exp, prop := tracing(t)
	policy := worker.Retry{InBroker: true, Attempts: 3, Backoff: 20 * time.Millisecond}
	conn := dial(t, "")
	name := brokerRoute(t, "trace-delayed", policy)
	q := worker.NewQueue(conn, worker.WithRetry(policy))
	q.Use(worker.Trace(tp, prop))
	q.Handle(name, worker.Job(func(context.Context, string) error { return errors.New("still failing") }))
	start(t, q)
	c := worker.NewClient(conn, worker.WithTracing(tp, prop))
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Publish(context.Background(), name, "x"); err != nil {
		t.Fatal(err)
	}
	var runs []tracetest.SpanStub
	eventually(t, "three process spans", func() bool {
		runs = runs[:0]
		for _, s := range exp.GetSpans() {
			if s.Name == "process "+name {
				runs = append(runs, s)
			}
		}
		return len(runs) >= 3
	})
	send := spanNamed(t, exp, "send "+name)
	for i, want := range []string{worker.OutcomeRetrying, worker.OutcomeRetrying, worker.OutcomeDeadLettered} {
		wantAttr(t, runs[i], worker.AttrOutcome, want)
		if runs[i].SpanContext.TraceID() != send.SpanContext.TraceID() {
			t.Errorf("run %d is in trace %s, want the publisher's %s", i+1, runs[i].SpanContext.TraceID(), send.SpanContext.TraceID())
		}
	}
}

// TestTraceFailureLog: the worker's own failure line carries the trace id
// of the delivery's span when its logger's handler reads it from ctx
// (telemetry.LogHandler).
func TestTraceFailureLog(t *testing.T) {
	requireBroker(t)
	tp, exp, prop := tracing(t)
	var buf testenv.Buffer
	logger := slog.New(telemetry.LogHandler(slog.NewTextHandler(&buf, nil)))
	conn := dial(t, "")
	name := route(t, "trace-log")
	rpc := worker.NewRPC(conn, worker.WithLogger(logger), worker.WithDevelopment(true))
	rpc.Use(worker.Trace(tp, prop))
	rpc.Handle(name, worker.Func(func(context.Context, string) (string, error) { return "", errors.New("broken") }))
	start(t, rpc)
	c := worker.NewClient(conn, worker.WithTracing(tp, prop))
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Call(context.Background(), name, "x", nil); err == nil {
		t.Fatal("call succeeded")
	}
	s := spanNamed(t, exp, "process "+name)
	want := "trace_id=" + s.SpanContext.TraceID().String() + " span_id=" + s.SpanContext.SpanID().String()
	if !strings.Contains(buf.String(), want) {
		t.Errorf("the failure line lacks %q:\n%s", want, buf.String())
	}
}

// TestTraceEvent: PublishEvent runs in a producer span "send EVENT" whose
// context reaches the subscriber's process span.
func TestTraceEvent(t *testing.T) {
	requireBroker(t)
	tp, exp, prop := tracing(t)
	service := testenv.Name("trace-events-")
	exchange := eventExchange(t, []string{"item.*"}, service)
	conn := dial(t, "")
	ev := worker.NewEvents(conn, service, worker.WithEventExchange(exchange))
	ev.Use(worker.Trace(tp, prop))
	ev.HandleFunc("item.*", func(context.Context, *worker.Request) ([]byte, error) { return nil, nil })
	start(t, ev)
	c := worker.NewClient(conn, worker.WithEventExchange(exchange), worker.WithTracing(tp, prop))
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.PublishEvent(ctx, "item.created", map[string]int{"id": 1}); err != nil {
		t.Fatal(err)
	}
	send := spanNamed(t, exp, "send item.created")
	if send.SpanKind != trace.SpanKindProducer {
		t.Errorf("event span kind %v, want producer", send.SpanKind)
	}
	var process tracetest.SpanStub
	eventually(t, "the subscriber's process span", func() bool {
		for _, s := range exp.GetSpans() {
			if strings.HasPrefix(s.Name, "process ") {
				process = s
				return true
			}
		}
		return false
	})
	if process.Parent.SpanID() != send.SpanContext.SpanID() || process.SpanContext.TraceID() != send.SpanContext.TraceID() {
		t.Errorf("span %q's parent %v, want the event's send span %v", process.Name, process.Parent, send.SpanContext)
	}
	wantAttr(t, process, worker.AttrOutcome, worker.OutcomeAcked)
}

// TestTraceRefused: deliveries refused before their handler pass through
// the Use middleware all the same: an RPC request whose body is not JSON
// (answered BadRequest), a reply sent as a request (neither run nor
// answered: refused) and a queue message that does not decode
// (dead-lettered) each get their process span and are counted by outcome.
func TestTraceRefused(t *testing.T) {
	requireBroker(t)
	tp, exp, prop := tracing(t)
	reg := prometheus.NewRegistry()
	metrics, err := worker.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	conn := dial(t, "")
	rpcRoute, queueRoute := route(t, "trace-refused"), route(t, "trace-refused-q")
	var ran atomic.Int32
	rpc := worker.NewRPC(conn)
	rpc.Use(worker.Trace(tp, prop), metrics.Middleware())
	rpc.Handle(rpcRoute, worker.Func(func(context.Context, string) (string, error) { ran.Add(1); return "", nil }))
	start(t, rpc)
	queue := worker.NewQueue(conn)
	queue.Use(worker.Trace(tp, prop), metrics.Middleware())
	queue.Handle(queueRoute, worker.Job(func(context.Context, string) error { ran.Add(1); return nil }))
	start(t, queue)

	ch := raw(t)
	publish := func(route string, m amqp.Publishing) {
		t.Helper()
		if err := ch.Publish("", route, false, false, m); err != nil {
			t.Fatal(err)
		}
	}
	span := func(id string) tracetest.SpanStub {
		t.Helper()
		var found tracetest.SpanStub
		eventually(t, "the span of message "+id, func() bool {
			for _, s := range exp.GetSpans() {
				if attrs(s)["messaging.message.id"].AsString() == id {
					found = s
					return true
				}
			}
			return false
		})
		return found
	}
	replies, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	publish(rpcRoute, amqp.Publishing{ContentType: "application/json", ReplyTo: replies.Name, MessageId: "not-json", Body: []byte(`{"data": no`)})
	publish(rpcRoute, amqp.Publishing{Type: "result", MessageId: "a-reply", Body: []byte(`{"success": true, "data": 1}`)})
	publish(queueRoute, amqp.Publishing{ContentEncoding: "gzip", MessageId: "not-gzip", Body: []byte(`{"data": "x"}`)})

	for _, c := range []struct{ id, outcome, typ string }{
		{"not-json", worker.OutcomeError, "BadRequest"},
		{"a-reply", worker.OutcomeRefused, "Refused"},
		{"not-gzip", worker.OutcomeDeadLettered, "BadRequest"},
	} {
		s := span(c.id)
		wantAttr(t, s, worker.AttrOutcome, c.outcome)
		wantAttr(t, s, "error.type", c.typ)
		if s.Status.Code != codes.Error {
			t.Errorf("span of %s: status %v, want an error", c.id, s.Status)
		}
	}
	if n := ran.Load(); n != 0 {
		t.Errorf("the handlers ran %d times, want 0", n)
	}
	for _, c := range []struct{ kind, route, outcome string }{
		{"rpc", rpcRoute, worker.OutcomeError},
		{"rpc", rpcRoute, worker.OutcomeRefused},
		{"queue", queueRoute, worker.OutcomeDeadLettered},
	} {
		if got := requests(t, reg, c.kind, c.route, c.outcome); got != 1 {
			t.Errorf("requests{kind=%s,route=%s,outcome=%s} = %v, want 1", c.kind, c.route, c.outcome, got)
		}
	}
}

// requests reads the counter of deliveries by kind, route and outcome.
func requests(t *testing.T, reg *prometheus.Registry, kind, route, outcome string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if !strings.HasSuffix(f.GetName(), "requests_total") {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["kind"] == kind && labels["route"] == route && labels["outcome"] == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// One Metrics middleware whose pipeline serves several routes (as an
// events subscription's does) counts each delivery under its own route and
// outcome, whichever route came before it. No broker: the middleware is
// called directly.
func TestMetricsRoutesOfOnePipeline(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics, err := worker.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	h := metrics.Middleware()(worker.HandlerFunc(func(_ context.Context, req *worker.Request) ([]byte, error) {
		if string(req.Data) == "fail" {
			return nil, errors.New("failed")
		}
		return req.Data, nil
	}))
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Go(func() {
			r := []string{"a", "b", "c"}[i%3]
			data := "ok"
			if i%5 == 0 {
				data = "fail"
			}
			_, _ = h.Serve(context.Background(), &worker.Request{Route: r, Data: []byte(data)})
		})
	}
	wg.Wait()
	for _, r := range []string{"a", "b", "c"} {
		// i%3 picks the route, i%5 == 0 the failures: 20 of each route's 100.
		if got := requests(t, reg, "rpc", r, worker.OutcomeReplied); got != 80 {
			t.Errorf("requests{route=%s,outcome=replied} = %v, want 80", r, got)
		}
		if got := requests(t, reg, "rpc", r, worker.OutcomeError); got != 20 {
			t.Errorf("requests{route=%s,outcome=error} = %v, want 20", r, got)
		}
	}
}
