package main

// `service dlq`: the dead letters of the queue routes (and event
// subscriptions), from the shell, with the same BROKER_* configuration as
// the service.

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"
	"time"

	"example.com/service/src/worker"
)

const dlqUsage = `usage:
  service dlq list [ROUTE...]            dead letters per route (default: the service's queue routes)
  service dlq show [--n N] ROUTE         the first N (default 10) dead letters of ROUTE and their errors;
                                         nothing is removed
  service dlq replay [--limit N] ROUTE   move up to N (default: all, each once) dead letters of ROUTE back
                                         to the queue they failed on, each confirmed before its dead letter
                                         is removed

ROUTE is a queue route, or an event subscription's queue ("<service>:<pattern>").`

// deadLetters runs `service dlq`.
func deadLetters(cfg config, args []string, out io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "service dlq: want list, show or replay\n"+dlqUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("dlq "+sub, flag.ContinueOnError)
	timeout := fs.Duration("timeout", time.Minute, "how long the command may take")
	n := fs.Int("n", 10, "show: how many dead letters to print")
	limit := fs.Int("limit", 0, "replay: at most this many (0: all, each once)")
	// Flags may come before or after ROUTE (replay ROUTE --limit 5).
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	var routes []string
	switch sub {
	case "list":
		routes = positional
		if len(routes) == 0 {
			for _, r := range catalog().Routes() {
				if r.Kind == worker.KindQueue {
					routes = append(routes, r.Name)
				}
			}
		}
	case "show", "replay":
		if len(positional) != 1 {
			fmt.Fprintf(os.Stderr, "service dlq %s: want one ROUTE, got %d arguments\n%s\n", sub, len(positional), dlqUsage)
			return 2
		}
		routes = positional
	default:
		fmt.Fprintf(os.Stderr, "service dlq: unknown command %q\n%s\n", sub, dlqUsage)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	conn, err := worker.Dial(ctx, cfg.Broker, worker.WithName("service dlq "+sub), worker.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		fmt.Fprintf(os.Stderr, "service dlq %s: %v\n", sub, err)
		return 1
	}
	defer conn.Close()
	dl := worker.NewDeadLetters(conn)
	switch sub {
	case "list":
		counts, err := dl.List(ctx, routes...)
		if err != nil {
			fmt.Fprintf(os.Stderr, "service dlq list: %v\n", err)
			return 1
		}
		w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "ROUTE\tDEAD LETTERS\tQUEUE")
		for _, c := range counts {
			msgs := fmt.Sprint(c.Messages)
			if c.Missing {
				msgs = "-" // never declared: the route has not run here
			}
			fmt.Fprintf(w, "%s\t%s\t%s\n", c.Route, msgs, c.Queue)
		}
		_ = w.Flush()
		return 0
	case "show":
		letters, total, err := dl.Show(ctx, routes[0], *n)
		if err != nil {
			fmt.Fprintf(os.Stderr, "service dlq show %s: %v\n", routes[0], err)
			return 1
		}
		fmt.Fprintf(out, "%s: %d dead letters in %s\n", routes[0], total, routes[0]+worker.DeadLetterSuffix)
		for i, l := range letters {
			fmt.Fprintf(out, "\n%d. message %s, failed on %s after %d attempts", i+1, l.MessageID, l.Route, l.Attempts)
			if !l.Timestamp.IsZero() {
				fmt.Fprintf(out, ", sent %s", l.Timestamp.UTC().Format(time.RFC3339))
			}
			if l.Event != "" {
				fmt.Fprintf(out, ", event %s", l.Event)
			}
			fmt.Fprintf(out, "\n   %s: %s (error id %s)\n   body: %s\n", l.ErrorType, l.Error, l.ErrorID, bodyPreview(l.Body))
		}
		return 0
	default: // replay
		moved, err := dl.Replay(ctx, routes[0], *limit)
		if err != nil && moved == 0 {
			fmt.Fprintf(os.Stderr, "service dlq replay %s: %v\n", routes[0], err)
			return 1
		}
		fmt.Fprintf(out, "replayed %d dead letters of %s (each confirmed by the broker before its dead letter was removed)\n", moved, routes[0])
		if err != nil {
			fmt.Fprintf(os.Stderr, "service dlq replay %s: %v\n", routes[0], err)
			if errors.Is(err, worker.ErrNoRoute) {
				fmt.Fprintln(os.Stderr, "is the service running? its workers declare the route's queue")
			}
			return 1
		}
		return 0
	}
}

// bodyPreview is the start of a message body as text, gunzipped when it is
// gzip.
func bodyPreview(body []byte) string {
	if bytes.HasPrefix(body, []byte{0x1f, 0x8b}) {
		if zr, err := gzip.NewReader(bytes.NewReader(body)); err == nil {
			if b, err := io.ReadAll(io.LimitReader(zr, 4096)); err == nil || len(b) > 0 {
				body = b
			}
		}
	}
	return preview(bytes.TrimSpace(body), 300)
}
