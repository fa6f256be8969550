package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

// SIGTERM while calls are in flight: every call still gets its reply and the
// process exits 0.
func TestSIGTERMDrainsInFlightCalls(t *testing.T) {
	env := stack.NewEnv(t, bins)
	p := stack.Start(t, bins, env, "DRAIN_TIMEOUT=15s")
	client := env.Client(t)

	const calls = 20
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for i := range calls {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var got string
			if err := client.Call(ctx, "test", strconv.Itoa(i), &got); err != nil {
				errs <- fmt.Errorf("call %d: %w", i, err)
			} else if want := strconv.Itoa(i) + " that took forever"; got != want {
				errs <- fmt.Errorf("call %d: got %q, want %q", i, got, want)
			}
		})
	}
	time.Sleep(400 * time.Millisecond) // the one-second handlers are running now
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	code, err := p.Wait(20 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("after SIGTERM: exit code %d (%v), want 0", code, err)
	}
}

// closedPort returns a local TCP port nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	_ = l.Close()
	return port
}

// With RabbitMQ or PostgreSQL unreachable, the service gives up after
// START_TIMEOUT and exits non-zero with one line naming what it could not reach.
func TestUnreachableAtStart(t *testing.T) {
	env := stack.Env{VHost: "/", Database: "postgres"}
	for _, tc := range []struct {
		name, setting, want string
	}{
		{"RabbitMQ", "BROKER_PORT", "cannot reach RabbitMQ at localhost:%s as " + testenv.Env("BROKER_USER", "guest")},
		{"PostgreSQL", "DB_PORT", "cannot reach PostgreSQL at localhost:%s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "RabbitMQ" {
				testenv.RequirePostgres(t) // reached first
			}
			port := closedPort(t)
			start := time.Now()
			p := stack.Launch(t, bins, env, tc.setting+"="+port, "BROKER_HOST=localhost", "DB_HOST=localhost", "START_TIMEOUT=2s")
			code, err := p.Wait(30 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if code == 0 {
				t.Fatalf("exit code 0 with %s unreachable", tc.name)
			}
			want := fmt.Sprintf(tc.want, port)
			if !strings.Contains(p.Logs(), want) {
				t.Errorf("log does not say %q; its end:\n%s", want, p.Tail(15))
			}
			t.Logf("exited %d after %s", code, time.Since(start).Round(time.Millisecond))
		})
	}
}

// An invalid setting is refused at start, naming the variable.
func TestInvalidConfiguration(t *testing.T) {
	for _, setting := range []string{"BROKER_PORT=amqp", "DB_PORT=99999", "MODE=staging", "DRAIN_TIMEOUT=soon"} {
		name, _, _ := strings.Cut(setting, "=")
		cmd := exec.Command(bins.Service)
		cmd.Env = append(os.Environ(), setting)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 {
			t.Errorf("%s: exit %v, want code 2; output %s", setting, err, out)
		}
		if !strings.Contains(string(out), name) {
			t.Errorf("%s: output %q does not name %s", setting, out, name)
		}
	}
}

// `service healthcheck` without METRICS_ADDR (no service to ask: the probe
// `task dev` runs) exits 0 when both services answer and 1 naming the
// unreachable one otherwise.
func TestHealthcheck(t *testing.T) {
	testenv.RequireBroker(t)
	testenv.RequirePostgres(t)
	run := func(extra ...string) (int, string) {
		cmd := exec.Command(bins.Service, "healthcheck")
		cmd.Env = append(append(os.Environ(), "METRICS_ADDR="), extra...) // the devcontainer sets it
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := run(); code != 0 {
		t.Fatalf("healthcheck with both services up: exit %d: %s", code, out)
	}
	port := closedPort(t)
	code, out := run("BROKER_HOST=localhost", "BROKER_PORT="+port)
	if want := "cannot reach RabbitMQ at localhost:" + port; code != 1 || !strings.Contains(out, want) {
		t.Fatalf("healthcheck with RabbitMQ down: exit %d, output %q; want 1 and %q", code, out, want)
	}
}
