// Package telemetry sets up the service's OpenTelemetry tracing from the
// standard OTEL_* environment variables, and puts trace ids on its log
// records. Tracing is off, and costs nothing, unless an exporter is
// configured; see [FromEnv].
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Telemetry is the tracing set up by [FromEnv].
type Telemetry struct {
	// Tracing tells whether spans are recorded and exported; when false
	// TracerProvider is a no-op and nothing needs to be instrumented.
	Tracing bool
	// TracerProvider makes the tracers of the worker and db packages.
	TracerProvider trace.TracerProvider
	// Propagator carries trace context in message headers: W3C
	// traceparent/tracestate and baggage.
	Propagator propagation.TextMapPropagator

	shutdown func(context.Context) error
}

// FromEnv sets up tracing as the OpenTelemetry specification's environment
// variables say. It is on when an OTLP endpoint is set
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or
// OTEL_TRACES_EXPORTER is otlp, and off when OTEL_SDK_DISABLED is true,
// OTEL_TRACES_EXPORTER is none, or no exporter is configured (unlike the
// specification's default of otlp: a service that nobody collects from
// pays nothing). Spans go over OTLP/HTTP (protobuf, the collector's port
// 4318) or, with OTEL_EXPORTER_OTLP_PROTOCOL (or ..._TRACES_PROTOCOL) grpc,
// over OTLP/gRPC (port 4317), configured by the exporter's own
// OTEL_EXPORTER_OTLP_* variables (endpoint, insecure, headers, timeout,
// compression, certificates); sampling by OTEL_TRACES_SAMPLER and
// OTEL_TRACES_SAMPLER_ARG (default: parent-based, always on); batching by
// OTEL_BSP_*; the resource by OTEL_SERVICE_NAME (default service) and
// OTEL_RESOURCE_ATTRIBUTES. An invalid value is an error naming the
// variable.
func FromEnv(ctx context.Context, service string) (*Telemetry, error) {
	t := &Telemetry{
		TracerProvider: noop.NewTracerProvider(),
		Propagator:     propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		shutdown:       func(context.Context) error { return nil },
	}
	on, err := tracingWanted()
	if err != nil || !on {
		return t, err
	}
	proto, err := protocol()
	if err != nil {
		return nil, err
	}
	var exp sdktrace.SpanExporter
	if proto == "grpc" {
		exp, err = otlptracegrpc.New(ctx)
	} else {
		exp, err = otlptracehttp.New(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("set up the OTLP trace exporter (%s) from OTEL_EXPORTER_OTLP_*: %w", proto, err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", service)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithProcessPID(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("read the trace resource from OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	t.Tracing, t.TracerProvider, t.shutdown = true, tp, tp.Shutdown
	return t, nil
}

// Shutdown exports the spans still buffered and stops the exporter; ctx
// bounds the wait.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if err := t.shutdown(ctx); err != nil {
		return fmt.Errorf("flush the last spans to the OTLP endpoint: %w", err)
	}
	return nil
}

// tracingWanted reads whether tracing is configured.
func tracingWanted() (bool, error) {
	switch v := strings.ToLower(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED"))); v {
	case "true":
		return false, nil
	case "", "false":
	default:
		return false, fmt.Errorf("OTEL_SDK_DISABLED=%q: want true or false", v)
	}
	if _, err := protocol(); err != nil {
		return false, err
	}
	switch v := strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER")); v {
	case "none":
		return false, nil
	case "otlp":
		return true, nil
	case "":
		return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "", nil
	default:
		return false, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: want otlp or none", v)
	}
}

// protocol reads the OTLP transport of traces: http/protobuf (the
// specification's default) or grpc. The traces-specific variable wins.
func protocol() (string, error) {
	for _, name := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		switch v := strings.TrimSpace(os.Getenv(name)); v {
		case "":
			continue
		case "http/protobuf", "grpc":
			return v, nil
		default:
			return "", fmt.Errorf("%s=%q: want http/protobuf (the collector's port 4318) or grpc (port 4317); OpenTelemetry's Go SDK has no http/json exporter", name, v)
		}
	}
	return "http/protobuf", nil
}
