package telemetry_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	collector "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"

	"example.com/service/src/telemetry"
)

// grpcReceiver is an OTLP/gRPC trace endpoint on a loopback port: it keeps
// the names of the spans it receives, by service.name.
type grpcReceiver struct {
	collector.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans map[string][]string // service.name -> span names
}

func (r *grpcReceiver) Export(_ context.Context, req *collector.ExportTraceServiceRequest) (*collector.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		service := ""
		for _, a := range rs.GetResource().GetAttributes() {
			if a.Key == "service.name" {
				service = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				r.spans[service] = append(r.spans[service], s.Name)
			}
		}
	}
	return &collector.ExportTraceServiceResponse{}, nil
}

func newGRPCReceiver(t *testing.T) (*grpcReceiver, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &grpcReceiver{spans: map[string][]string{}}
	srv := grpc.NewServer()
	collector.RegisterTraceServiceServer(srv, r)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return r, ln.Addr().String()
}

// OTEL_EXPORTER_OTLP_PROTOCOL=grpc sends the spans over OTLP/gRPC, and the
// traces-specific variable wins over the general one.
func TestFromEnvGRPC(t *testing.T) {
	r, addr := newGRPCReceiver(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+addr) // http: plain text
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
	t.Setenv("OTEL_SERVICE_NAME", "grpc-test")
	tel, err := telemetry.FromEnv(context.Background(), "service")
	if err != nil {
		t.Fatal(err)
	}
	if !tel.Tracing {
		t.Fatal("tracing is off with an endpoint set")
	}
	_, span := tel.TracerProvider.Tracer("test").Start(context.Background(), "process items.create")
	span.End()
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown (flushes over gRPC to %s): %v", addr, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if got := strings.Join(r.spans["grpc-test"], ","); got != "process items.create" {
		t.Fatalf("the gRPC receiver got spans %v, want [process items.create] under service.name grpc-test", r.spans)
	}
}

func TestFromEnvProtocolRefused(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
	_, err := telemetry.FromEnv(context.Background(), "service")
	if err == nil || !strings.Contains(err.Error(), `OTEL_EXPORTER_OTLP_PROTOCOL="http/json"`) || !strings.Contains(err.Error(), "grpc") {
		t.Fatalf("FromEnv with http/json: %v, want an error naming the variable and the protocols it takes", err)
	}
}
