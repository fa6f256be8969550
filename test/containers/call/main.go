// Command call sends one RPC route a request, over and over, until the reply
// is the expected one, and prints how long that took. The container tests
// run it inside the devcontainer, where RabbitMQ is reachable and the host is
// not, to time a hot reload:
//
//	call -route hello_world -want 'Hello reload!' -since 1733100000000 -timeout 60s
//
// It reads the broker from BROKER_* as the service does. -since is the Unix
// time in milliseconds the edit was saved; the output's "after" counts from
// it (the host and the container share one clock). Exit status 1 when no
// such reply came in time.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"example.com/service/src/worker"
)

func main() {
	route := flag.String("route", "hello_world", "the RPC route to call")
	want := flag.String("want", "", "the reply (a JSON string) to wait for; empty: the first reply")
	since := flag.Int64("since", 0, "Unix milliseconds to count from (default: now)")
	timeout := flag.Duration("timeout", time.Minute, "how long to keep calling")
	flag.Parse()
	if err := run(*route, *want, *since, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "call:", err)
		os.Exit(1)
	}
}

func run(route, want string, since int64, timeout time.Duration) error {
	start := time.Now()
	if since > 0 {
		start = time.UnixMilli(since)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cfg, err := worker.ConfigFromEnv()
	if err != nil {
		return err
	}
	conn, err := worker.Dial(ctx, cfg, worker.WithName("containers call"))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := worker.NewClient(conn)
	defer client.Close()

	var last string
	var lastErr error
	for ctx.Err() == nil {
		callCtx, callCancel := context.WithTimeout(ctx, 2*time.Second)
		var reply string
		lastErr = client.Call(callCtx, route, nil, &reply)
		callCancel()
		if lastErr == nil {
			last = reply
			if want == "" || reply == want {
				fmt.Printf("reply %q after %.2f s\n", reply, time.Since(start).Seconds())
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if lastErr != nil {
		return fmt.Errorf("no reply %q from %s within %s (last reply %q): %w", want, route, timeout, last, lastErr)
	}
	return fmt.Errorf("no reply %q from %s within %s: the last reply was %q", want, route, timeout, last)
}
