package telemetry_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"example.com/service/src/telemetry"
)

// LogHandler adds the trace and span ids of the ctx a record is logged with.
func ExampleLogHandler() {
	log := slog.New(telemetry.LogHandler(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})))
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}})
	log.InfoContext(trace.ContextWithSpanContext(context.Background(), sc), "stored", "route", "items.create")
	log.Info("no span")
	// Output:
	// level=INFO msg=stored route=items.create trace_id=01000000000000000000000000000000 span_id=0200000000000000
	// level=INFO msg="no span"
}

// FromEnv leaves tracing off when no exporter is configured: a no-op
// tracer provider, nothing to instrument.
func ExampleFromEnv() {
	os.Unsetenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	os.Unsetenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	os.Unsetenv("OTEL_TRACES_EXPORTER")
	tel, err := telemetry.FromEnv(context.Background(), "service")
	fmt.Println(tel.Tracing, err)

	os.Setenv("OTEL_TRACES_EXPORTER", "zipkin")
	defer os.Unsetenv("OTEL_TRACES_EXPORTER")
	_, err = telemetry.FromEnv(context.Background(), "service")
	fmt.Println(err)
	// Output:
	// false <nil>
	// OTEL_TRACES_EXPORTER="zipkin": want otlp or none
}

// Listen serves /metrics, /healthz and /readyz.
func ExampleListen() {
	ready := func(context.Context) error { return fmt.Errorf("route %q is not consuming", "items.get") }
	srv, err := telemetry.Listen("127.0.0.1:0", prometheus.NewRegistry(), ready)
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = srv.Start(context.Background())
	defer srv.Shutdown(context.Background())
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + srv.Addr() + path)
		if err != nil {
			fmt.Println(err)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%s %d %s", path, resp.StatusCode, body)
	}
	// Output:
	// /healthz 200 ok
	// /readyz 503 not ready: route "items.get" is not consuming
}
