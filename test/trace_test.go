package e2e

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collector "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
	"example.com/service/test/stack"
)

// otlpReceiver is an OTLP/HTTP trace endpoint: it keeps every span it is
// sent.
type otlpReceiver struct {
	*httptest.Server
	mu    sync.Mutex
	spans []*tracepb.Span
	names map[string]string // service.name by span id
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	r := &otlpReceiver{names: map[string]string{}}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		var in collector.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(body, &in)
		}
		if req.URL.Path != "/v1/traces" || err != nil {
			t.Errorf("OTLP receiver: %s %s: %v", req.Method, req.URL.Path, err)
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		for _, rs := range in.ResourceSpans {
			service := ""
			for _, kv := range rs.GetResource().GetAttributes() {
				if kv.Key == "service.name" {
					service = kv.Value.GetStringValue()
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					r.spans = append(r.spans, s)
					r.names[hex.EncodeToString(s.SpanId)] = service
				}
			}
		}
		r.mu.Unlock()
		out, _ := proto.Marshal(&collector.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(r.Close)
	return r
}

// span waits for the span of trace named name whose parent is parent, and
// returns it.
func (r *otlpReceiver) span(t *testing.T, traceID trace.TraceID, name string, parent []byte) *tracepb.Span {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r.mu.Lock()
		var seen []string
		for _, s := range r.spans {
			if string(s.TraceId) != string(traceID[:]) {
				continue
			}
			seen = append(seen, fmt.Sprintf("%s (parent %x)", s.Name, s.ParentSpanId))
			if s.Name == name && string(s.ParentSpanId) == string(parent) {
				r.mu.Unlock()
				return s
			}
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s no span %q with parent %x in trace %s; the service exported %v", name, parent, traceID, seen)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// service is the service.name of the resource that exported the span with
// id spanID ("" when none did). The handler writes the map as exports
// arrive: read it under the lock.
func (r *otlpReceiver) service(spanID []byte) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.names[hex.EncodeToString(spanID)]
}

func attr(s *tracepb.Span, key string) string {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return kv.Value.GetStringValue()
		}
	}
	return ""
}

// tree draws the spans of trace id, the client's and the service's, as an
// indented list with durations and their main attributes.
func tree(exp *tracetest.InMemoryExporter, otlp *otlpReceiver, id trace.TraceID) string {
	type node struct {
		id, parent, name, kind, attrs string
		took                          time.Duration
	}
	var nodes []node
	for _, s := range exp.GetSpans() {
		if s.SpanContext.TraceID() == id {
			nodes = append(nodes, node{
				id: s.SpanContext.SpanID().String(), parent: s.Parent.SpanID().String(), name: s.Name,
				kind: s.SpanKind.String(), took: s.EndTime.Sub(s.StartTime),
			})
		}
	}
	otlp.mu.Lock()
	for _, s := range otlp.spans {
		if string(s.TraceId) != string(id[:]) {
			continue
		}
		var attrs []string
		for _, kv := range s.Attributes {
			switch kv.Key {
			case "messaging.rabbitmq.outcome", "db.operation.name", "db.collection.name", "messaging.destination.name":
				attrs = append(attrs, kv.Key+"="+kv.Value.GetStringValue())
			}
		}
		kind := strings.ToLower(strings.TrimPrefix(s.Kind.String(), "SPAN_KIND_"))
		nodes = append(nodes, node{
			id: hex.EncodeToString(s.SpanId), parent: hex.EncodeToString(s.ParentSpanId), name: s.Name,
			kind: kind, attrs: strings.Join(attrs, " "), took: time.Duration(s.EndTimeUnixNano - s.StartTimeUnixNano),
		})
	}
	otlp.mu.Unlock()
	var b strings.Builder
	var walk func(parent string, depth int)
	walk = func(parent string, depth int) {
		for _, n := range nodes {
			if n.parent == parent {
				fmt.Fprintf(&b, "%s%s [%s, %s] %s\n", strings.Repeat("  ", depth), n.name, n.kind, n.took.Round(10*time.Microsecond), n.attrs)
				walk(n.id, depth+1)
			}
		}
	}
	walk(trace.SpanID{}.String(), 0)
	return b.String()
}

// TestTrace runs the service exporting OTLP/HTTP to a receiver in the
// test, calls it through a traced client inside a caller span and checks
// the service's spans join the caller's trace: caller → send → process
// route → SQL, for an RPC route and across a queue route; the log line a
// handler writes with its ctx carries the trace id.
func TestTrace(t *testing.T) {
	otlp := newOTLPReceiver(t)
	env := stack.NewEnv(t, bins)
	p := stack.Start(t, bins, env, "OTEL_EXPORTER_OTLP_ENDPOINT="+otlp.URL, "OTEL_BSP_SCHEDULE_DELAY=50", "OTEL_SERVICE_NAME=e2e-service")

	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := worker.Dial(ctx, env.Broker(), worker.WithName("e2e traced client"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	client := worker.NewClient(conn, worker.WithTracing(tp, propagation.TraceContext{}))
	t.Cleanup(func() { _ = client.Close() })
	sendSpan := func(traceID trace.TraceID) tracetest.SpanStub {
		t.Helper()
		for _, s := range exp.GetSpans() {
			if strings.HasPrefix(s.Name, "send ") && s.SpanContext.TraceID() == traceID {
				return s
			}
		}
		t.Fatalf("the client recorded no send span in trace %s", traceID)
		return tracetest.SpanStub{}
	}

	t.Run("rpc route to SQL", func(t *testing.T) {
		cctx, caller := tp.Tracer("gateway").Start(ctx, "gateway request")
		var item map[string]any
		err := client.Call(cctx, "example-item.create", map[string]any{"string": "traced " + testenv.Name(""), "integer": 1}, &item)
		caller.End()
		if err != nil {
			t.Fatal(err)
		}
		id := caller.SpanContext().TraceID()
		send := sendSpan(id)
		if send.Parent.SpanID() != caller.SpanContext().SpanID() {
			t.Fatalf("send span's parent %s, want the caller's %s", send.Parent.SpanID(), caller.SpanContext().SpanID())
		}
		sid := send.SpanContext.SpanID()
		route := otlp.span(t, id, "process example-item.create", sid[:])
		sql := otlp.span(t, id, "INSERT example_item", route.SpanId)
		if got := otlp.service(route.SpanId); got != "e2e-service" {
			t.Errorf("the route span's service.name is %q, want e2e-service (from OTEL_SERVICE_NAME)", got)
		}
		if attr(route, "messaging.system") != "rabbitmq" || attr(route, "messaging.rabbitmq.outcome") != worker.OutcomeReplied {
			t.Errorf("route span attributes %v", route.Attributes)
		}
		if attr(sql, "db.system.name") != "postgresql" || attr(sql, "db.collection.name") != "example_item" {
			t.Errorf("SQL span attributes %v", sql.Attributes)
		}
		for _, kv := range sql.Attributes {
			if strings.Contains(fmt.Sprint(kv.Value), "traced ") {
				t.Errorf("SQL span attribute %s holds the statement's argument: %v", kv.Key, kv.Value)
			}
		}
		// example-item.create records item.created in the outbox; the
		// relay publishes it later, in this trace.
		otlp.span(t, id, "send item.created", route.SpanId)
		t.Logf("trace %s:\n%s", id, tree(exp, otlp, id))
	})

	t.Run("service call from the shell", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(cctx, bins.Service, "call", "example-item.create", `{"string": "from the shell `+testenv.Name("")+`", "integer": 3}`)
		cmd.Env = append(os.Environ(), "BROKER_URL=", "DB_URL=", "BROKER_VHOST="+env.VHost,
			"OTEL_EXPORTER_OTLP_ENDPOINT="+otlp.URL, "OTEL_SERVICE_NAME=e2e-cli")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if out, err := cmd.Output(); err != nil {
			t.Fatalf("service call: %v\n%s%s", err, out, stderr.String())
		}
		hexID, ok := strings.CutPrefix(strings.TrimSpace(stderr.String()), "trace ")
		id, err := trace.TraceIDFromHex(hexID)
		if !ok || err != nil {
			t.Fatalf("service call printed %q on stderr, want \"trace <trace id>\"", stderr.String())
		}
		root := otlp.span(t, id, "service call example-item.create", nil)
		if got := otlp.service(root.SpanId); got != "e2e-cli" {
			t.Errorf("the command's span has service.name %q, want e2e-cli", got)
		}
		send := otlp.span(t, id, "send example-item.create", root.SpanId)
		route := otlp.span(t, id, "process example-item.create", send.SpanId)
		otlp.span(t, id, "INSERT example_item", route.SpanId)
	})

	t.Run("through a queue route", func(t *testing.T) {
		cctx, caller := tp.Tracer("gateway").Start(ctx, "gateway publish")
		err := client.Publish(cctx, "example-item.store", map[string]any{"string": "queued " + testenv.Name(""), "integer": 2})
		caller.End()
		if err != nil {
			t.Fatal(err)
		}
		id := caller.SpanContext().TraceID()
		send := sendSpan(id)
		sid := send.SpanContext.SpanID()
		route := otlp.span(t, id, "process example-item.store", sid[:])
		otlp.span(t, id, "INSERT example_item", route.SpanId)
		if attr(route, "messaging.rabbitmq.outcome") != worker.OutcomeAcked {
			t.Errorf("queue route span outcome %q, want acked", attr(route, "messaging.rabbitmq.outcome"))
		}
	})

	t.Run("log records carry the trace id", func(t *testing.T) {
		cctx, caller := tp.Tracer("gateway").Start(ctx, "gateway log")
		err := client.Publish(cctx, "queue-test", map[string]any{"hello": "log"})
		caller.End()
		if err != nil {
			t.Fatal(err)
		}
		want := "trace_id=" + caller.SpanContext().TraceID().String()
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(p.Logs(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("no log line with %s; the end of the log:\n%s", want, p.Tail(10))
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}
