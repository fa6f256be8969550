package main

// The service binary's commands besides running: list its routes, document
// them, and call or publish to any route from the shell with the same
// configuration the service reads. `service help` lists them.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"text/tabwriter"
	"time"

	"go.opentelemetry.io/otel/trace"

	"example.com/service/src/runner"
	"example.com/service/src/telemetry"
	"example.com/service/src/worker"
)

const usage = `usage:
  service                     run until SIGINT or SIGTERM
  service routes [--json]     list the routes: name, kind, request and reply types
  service asyncapi            print an AsyncAPI 3 document of the routes (JSON)
  service call [--timeout D] ROUTE [JSON]
                              call an RPC route with JSON as its data (default null;
                              - reads it from stdin) and print the reply envelope;
                              exits 1 on an error reply
  service publish [--timeout D] ROUTE [JSON]
                              publish JSON as the data of a message to a queue route
                              and wait for the broker's confirm
  service dlq list|show|replay [ROUTE]
                              count, show and replay the dead letters of queue routes
                              (service dlq for details)
  service healthcheck         exit 0 when the service is ready: /readyz at METRICS_ADDR
                              (consuming on every route, database reachable); without
                              METRICS_ADDR, when RabbitMQ and PostgreSQL answer

call, publish and dlq read the same BROKER_* variables as the service.`

// catalog lists the service's routes, without connecting to anything.
func catalog() *worker.Catalog {
	c := &worker.Catalog{}
	routes(c.RPC(), c.Queue(), &service{})
	return c
}

// printRoutes prints the routes as a table, or as JSON with their schemas.
func printRoutes(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("routes", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON: names, kinds, types and JSON Schemas of the data")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c := catalog()
	if *asJSON {
		b, err := json.MarshalIndent(c.JSON(), "", "  ")
		if err != nil {
			fmt.Fprintln(os.Stderr, "encode the routes:", err)
			return 1
		}
		fmt.Fprintln(out, string(b))
		return 0
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "ROUTE\tKIND\tDATA\tREPLY DATA")
	name := func(t reflect.Type) string {
		if t == nil {
			return "raw JSON"
		}
		return strings.ReplaceAll(t.String(), "interface {}", "any")
	}
	for _, r := range c.Routes() {
		resp := ""
		if r.Kind == worker.KindRPC {
			resp = name(r.Response)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.Name, r.Kind, name(r.Request), resp)
	}
	_ = w.Flush()
	return 0
}

// printAsyncAPI prints the AsyncAPI document of the routes.
func printAsyncAPI(out io.Writer) int {
	b, err := catalog().AsyncAPI(worker.AsyncAPIInfo{
		Title:       "service",
		Version:     "1.0.0",
		Description: "The RPC and queue routes of the service, reached through RabbitMQ's default exchange with the route as routing key.",
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "build the AsyncAPI document:", err)
		return 1
	}
	fmt.Fprintln(out, string(b))
	return 0
}

// callOrPublish runs `service call` and `service publish`.
func callOrPublish(cfg config, cmd string, args []string, stdin io.Reader, out io.Writer) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the reply (call) or the confirm (publish)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		fmt.Fprintf(os.Stderr, "service %s: want ROUTE and at most one JSON argument, got %d arguments\n%s\n", cmd, fs.NArg(), usage)
		return 2
	}
	route, data := fs.Arg(0), json.RawMessage("null")
	if fs.NArg() == 2 {
		text := []byte(fs.Arg(1))
		if fs.Arg(1) == "-" {
			var err error
			if text, err = io.ReadAll(stdin); err != nil {
				fmt.Fprintf(os.Stderr, "service %s: read the data from stdin: %v\n", cmd, err)
				return 2
			}
		}
		text = bytes.TrimSpace(text)
		if !json.Valid(text) {
			fmt.Fprintf(os.Stderr, "service %s %s: the data %q is not JSON; quote strings as JSON does, e.g. '\"foo\"' or '{\"string\": \"foo\"}'\n",
				cmd, route, preview(text, 80))
			return 2
		}
		data = text
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	// With OTEL_* set as for the service, the command is traced too: a
	// span "service call ROUTE" around the Client's, whose trace id goes to
	// stderr, to look the call up in the tracing backend.
	tel, err := telemetry.FromEnv(ctx, "service-cli")
	if err != nil {
		fmt.Fprintf(os.Stderr, "service %s %s: %v\n", cmd, route, err)
		return 2
	}
	var opts []worker.ClientOption
	if tel.Tracing {
		opts = append(opts, worker.WithTracing(tel.TracerProvider, tel.Propagator))
		var span trace.Span
		ctx, span = tel.TracerProvider.Tracer("example.com/service/src").Start(ctx, "service "+cmd+" "+route)
		fmt.Fprintf(os.Stderr, "trace %s\n", span.SpanContext().TraceID())
		defer func() {
			span.End()
			flush, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := tel.Shutdown(flush); err != nil {
				fmt.Fprintf(os.Stderr, "service %s: %v\n", cmd, err)
			}
		}()
	}
	conn, err := worker.Dial(ctx, cfg.Broker, worker.WithName("service "+cmd), worker.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		fmt.Fprintf(os.Stderr, "service %s %s: %v\n", cmd, route, err)
		return 1
	}
	defer conn.Close()
	client := worker.NewClient(conn, opts...)
	defer client.Close()

	if cmd == "publish" {
		if err := client.Publish(ctx, route, data); err != nil {
			fmt.Fprintf(os.Stderr, "service publish %s: %v\n", route, err)
			return 1
		}
		fmt.Fprintf(out, "published to %s (confirmed by the broker)\n", route)
		return 0
	}
	var reply json.RawMessage
	err = client.Call(ctx, route, data, &reply)
	var remote *worker.RemoteError
	switch {
	case err == nil:
		printJSON(out, map[string]any{"success": true, "data": reply})
		return 0
	case errors.As(err, &remote):
		e := map[string]any{"type": remote.Type, "message": remote.Message}
		if remote.ID != "" {
			e["id"] = remote.ID
		}
		if remote.Trace != "" {
			e["go_type"], e["trace"] = remote.GoType, remote.Trace
		}
		printJSON(out, map[string]any{"success": false, "error": e})
		return 1
	case errors.Is(err, worker.ErrNoRoute):
		fmt.Fprintf(os.Stderr, "service call %s: no queue named %q: is the service running (go tool task dev) and is the route's name right? `service routes` lists them\n", route, route)
		return 1
	default:
		fmt.Fprintf(os.Stderr, "service call %s: %v\n", route, err)
		return 1
	}
}

// printJSON prints v indented, without HTML escaping.
func printJSON(out io.Writer, v any) {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
	fmt.Fprint(out, b.String())
}

// buildErrors returns the compiler's errors when the service runs under
// `task dev` and the last save did not compile: .air.toml builds into a
// new file, keeps the last good binary and starts it with DEV_BUILD_ERRORS
// naming the file the errors went to. "" otherwise.
func buildErrors() string {
	path := os.Getenv("DEV_BUILD_ERRORS")
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// serveUnavailable answers every RPC route of the last good build with
// type "Unavailable" and the compiler's errors, so a call made while the
// code does not compile fails at once instead of waiting for its timeout.
// Queue routes are not consumed: their messages wait for the fixed code.
func serveUnavailable(ctx context.Context, cfg config, log *slog.Logger, errs string) error {
	startCtx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	broker, err := worker.Dial(startCtx, cfg.Broker, worker.WithLogger(log))
	if err != nil {
		return err
	}
	defer broker.Close()
	rpc := worker.NewRPC(broker, worker.WithLogger(log), worker.WithDevelopment(true), worker.WithQueueType(cfg.RPCQueueType))
	msg := "the service does not compile; fix it and save (task dev rebuilds it): " + preview([]byte(errs), 2000)
	routes(unavailable{rpc, msg}, discard{}, &service{})
	log.Error("the code does not compile: answering every RPC route with Unavailable until it does", "errors", errs)
	r := &runner.Runner{Logger: log, DrainTimeout: cfg.DrainTimeout}
	return r.Run(ctx, runner.Named("rpc worker (unavailable)", rpc))
}

// unavailable registers a route of the RPC worker with a handler that
// fails with type "Unavailable".
type unavailable struct {
	rpc *worker.RPC
	msg string
}

func (u unavailable) Handle(route string, _ worker.Handler, _ ...worker.Middleware) {
	u.rpc.HandleFunc(route, func(context.Context, *worker.Request) ([]byte, error) {
		return nil, worker.Errorf("Unavailable", "%s", u.msg)
	})
}

// discard registers nothing.
type discard struct{}

func (discard) Handle(string, worker.Handler, ...worker.Middleware) {}
