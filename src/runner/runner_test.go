package runner_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"example.com/service/src/runner"
)

// recorder is a fake service that writes what happens to it into a shared log.
type recorder struct {
	name     string
	log      *events
	startErr error
	block    bool // Shutdown waits for its context to end
}

type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, s)
}

func (e *events) get() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.list)
}

func (r *recorder) Start(context.Context) error {
	r.log.add("start " + r.name)
	return r.startErr
}

func (r *recorder) Shutdown(ctx context.Context) error {
	r.log.add("stop " + r.name)
	if r.block {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

// intakeRecorder is a recorder whose intake can be stopped apart.
type intakeRecorder struct{ recorder }

func (r *intakeRecorder) StopIntake(context.Context) error {
	r.log.add("stop intake " + r.name)
	return nil
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestRunStartsInOrderAndStopsInReverse(t *testing.T) {
	ev := &events{}
	err := runAndCancel(t, &runner.Runner{Logger: quiet()}, ev,
		&recorder{name: "db", log: ev},
		&recorder{name: "broker", log: ev},
		&recorder{name: "worker", log: ev})
	if err != nil {
		t.Fatalf("Run returned %v after a clean stop, want nil", err)
	}
	want := []string{"start db", "start broker", "start worker", "stop worker", "stop broker", "stop db"}
	if got := ev.get(); !slices.Equal(got, want) {
		t.Fatalf("events = %q, want %q", got, want)
	}
}

// Every intake stops before any service drains: the RPC worker must not take
// new requests while the queue worker finishes.
func TestRunStopsEveryIntakeBeforeDraining(t *testing.T) {
	ev := &events{}
	err := runAndCancel(t, &runner.Runner{Logger: quiet()}, ev,
		&recorder{name: "db", log: ev},
		runner.Named("rpc", &intakeRecorder{recorder{name: "rpc", log: ev}}),
		&intakeRecorder{recorder{name: "queue", log: ev}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"start db", "start rpc", "start queue",
		"stop intake queue", "stop intake rpc", "stop queue", "stop rpc", "stop db",
	}
	if got := ev.get(); !slices.Equal(got, want) {
		t.Fatalf("events = %q, want %q", got, want)
	}
}

func TestRunStopsStartedServicesWhenOneFailsToStart(t *testing.T) {
	ev := &events{}
	refused := errors.New("connection refused")
	r := &runner.Runner{Logger: quiet()}
	err := r.Run(context.Background(),
		runner.Named("db", &recorder{name: "db", log: ev}),
		runner.Named("broker", &recorder{name: "broker", log: ev, startErr: refused}),
		&recorder{name: "worker", log: ev})
	if !errors.Is(err, refused) {
		t.Fatalf("Run = %v, want it to wrap %v", err, refused)
	}
	if want := "start broker: connection refused"; err.Error() != want {
		t.Errorf("error text = %q, want %q", err, want)
	}
	want := []string{"start db", "start broker", "stop db"}
	if got := ev.get(); !slices.Equal(got, want) {
		t.Fatalf("events = %q, want %q", got, want)
	}
}

func TestRunBoundsTheDrainAndStillStopsTheRest(t *testing.T) {
	ev := &events{}
	err := runAndCancel(t, &runner.Runner{Logger: quiet(), DrainTimeout: 200 * time.Millisecond}, ev,
		&recorder{name: "db", log: ev},
		&recorder{name: "stuck", log: ev, block: true})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run = %v, want the stuck service's deadline error", err)
	}
	want := []string{"start db", "start stuck", "stop stuck", "stop db"}
	if got := ev.get(); !slices.Equal(got, want) {
		t.Fatalf("events = %q, want %q", got, want)
	}
}

func TestRunStopsOnSignal(t *testing.T) {
	ev := &events{}
	r := &runner.Runner{Logger: quiet(), Signals: []os.Signal{syscall.SIGUSR1}}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background(), &recorder{name: "worker", log: ev}) }()
	waitFor(t, func() bool { return len(ev.get()) == 1 })
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v after SIGUSR1, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop on its signal")
	}
	if got, want := ev.get(), []string{"start worker", "stop worker"}; !slices.Equal(got, want) {
		t.Fatalf("events = %q, want %q", got, want)
	}
}

// runAndCancel runs services with r until each has logged its start to ev,
// then cancels Run's context and returns what Run returns, failing the test
// if that takes more than 10 s.
func runAndCancel(t *testing.T, r *runner.Runner, ev *events, services ...runner.Service) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, services...) }()
	waitFor(t, func() bool { return len(ev.get()) == len(services) })
	cancel()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10 s of its context's end")
		return nil
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 10 s")
}

type printer string

func (p printer) Start(context.Context) error    { fmt.Println("start", p); return nil }
func (p printer) Shutdown(context.Context) error { fmt.Println("stop", p); return nil }

// Services start in the order given and stop in reverse: a worker stops
// before the connection it uses.
func ExampleRunner_Run() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // in a service, SIGINT or SIGTERM ends the run instead
	r := &runner.Runner{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := r.Run(ctx, printer("database"), printer("broker"), printer("rpc worker")); err != nil {
		fmt.Println(err)
	}
	// Output:
	// start database
	// start broker
	// start rpc worker
	// stop rpc worker
	// stop broker
	// stop database
}
