//go:build containers

// Package containers runs the template's container path for real, as a user
// meets it: it builds the Dockerfile's images with `docker build .`, brings
// compose.yaml up and runs the e2e suite against the service in it, opens
// the devcontainer with the Dev Containers CLI and runs the e2e suite and a
// hot reload inside it. `go tool task test:containers` runs it (CI too).
//
// Where no Docker engine answers, it installs Debian's Docker packages and starts
// one of its own, with its own data root, exec root and socket under
// /var/lib/service-containers and /run/service-containers, and stops it at
// the end. That engine reaches no image registry, so the base images the
// project's files name (golang, rabbitmq, postgres) are made from Debian's
// packages (stand-ins: see images/), and kept between runs. Containers run
// on networks this engine creates and talk to each other and to 127.0.0.1
// only; the host's own RabbitMQ and PostgreSQL keep their ports (the stack's
// ports are published on free ones: machine.ports.compose.yaml).
//
// Every step prints its time; a table of them closes the run. Settings:
// CONTAINERS_ROOT (default /var/lib/service-containers) holds the engine's
// data, the compose and devcontainer tools and the logs of each run. Two
// runs on one machine (test:containers, containers:prepare, whatever their
// CONTAINERS_ROOT) take turns through /tmp/service-containers.lock.
package containers_test

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// timing is the run's table: each step and how long it took.
type timing struct {
	mu    sync.Mutex
	rows  []string
	notes []string
}

var times timing

// step runs f as one timed step, logging its name and time as it ends.
// A failing step fails the test (f calls t.Fatal); the time is recorded
// either way.
func step(t *testing.T, name string, f func()) {
	t.Helper()
	start := time.Now()
	ok := false
	defer func() {
		took := time.Since(start)
		status := "ok"
		if !ok {
			status = "FAILED"
		}
		row := fmt.Sprintf("%-58s %8.1f s  %s", name, took.Seconds(), status)
		times.mu.Lock()
		times.rows = append(times.rows, row)
		times.mu.Unlock()
		fmt.Fprintf(os.Stderr, "[containers] %s\n", row)
	}()
	f()
	ok = !t.Failed()
}

// note adds a line under the table (sizes, figures).
func note(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	times.mu.Lock()
	times.notes = append(times.notes, line)
	times.mu.Unlock()
	fmt.Fprintf(os.Stderr, "[containers] %s\n", line)
}

func printTable() {
	times.mu.Lock()
	defer times.mu.Unlock()
	var b strings.Builder
	b.WriteString("\n[containers] step                                                        time\n")
	for _, r := range times.rows {
		b.WriteString("[containers] " + r + "\n")
	}
	for _, n := range times.notes {
		b.WriteString("[containers] " + n + "\n")
	}
	fmt.Fprint(os.Stderr, b.String())
}

// TestContainers is the whole run, in the order a user meets the pieces.
// Later steps need earlier ones, so the first failure ends it.
func TestContainers(t *testing.T) {
	e := begin(t)
	if e == nil {
		return
	}
	p := copyProject(t, e)
	buildImages(t, e, p)
	composeStack(t, e, p)
	composeCluster(t, e, p)
	devcontainer(t, e, p)
}

// TestPrepare makes what TestContainers keeps between runs and runs nothing
// else: the engine's packages, compose v2, the base images, the Dev
// Containers CLI and the build cache of the project's two images (which it
// builds and checks as TestContainers does). Then it stops the engine. A
// later TestContainers finds them cached; `go tool task containers:prepare`
// runs it, and .ci/run runs it in the background, at low priority, while
// the other suites run.
func TestPrepare(t *testing.T) {
	e := begin(t)
	if e == nil {
		return
	}
	step(t, "devcontainer: install the CLI ("+devcontainerCLI+")", func() { installCLI(t, e) })
	p := copyProject(t, e)
	buildImages(t, e, p)
}

// begin starts a run: the table of its steps (printed last), its budget,
// the engine and compose, the base images. It returns nil when the run
// cannot go on.
func begin(t *testing.T) *engine {
	t.Cleanup(printTable)
	if !withinBudget(t) {
		return nil
	}
	e := setUpEngine(t)
	if t.Failed() {
		return nil
	}
	makeBaseImages(t, e)
	return e
}

// withinBudget stops every command of the run (and so the run, which then
// cleans up: containers, the engine) a little before go test's -timeout,
// which would kill the binary without running the cleanups, and at SIGINT
// or SIGTERM. It reports false, failing t, when the timeout leaves too
// little time.
func withinBudget(t *testing.T) bool {
	deadline, ok := t.Deadline()
	if !ok {
		deadline = time.Now().Add(40 * time.Minute)
	}
	budget := time.Until(deadline) - 2*time.Minute
	if budget < 10*time.Minute {
		t.Errorf("go test -timeout leaves %s; the container tests need at least 12m (a fresh machine takes about 25)", time.Until(deadline).Round(time.Second))
		return false
	}
	timer := time.AfterFunc(budget, func() {
		fmt.Fprintf(os.Stderr, "[containers] the run is past its budget of %s: stopping its commands\n", budget.Round(time.Second))
		cancelAll()
	})
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		if sig, ok := <-signals; ok {
			fmt.Fprintf(os.Stderr, "[containers] %s: stopping the run's commands, then cleaning up\n", sig)
			cancelAll()
		}
	}()
	t.Cleanup(func() {
		timer.Stop()
		signal.Stop(signals)
		close(signals)
	})
	return true
}
