// Package runner runs the parts of a service for the life of the process:
// it starts them in order, waits for SIGINT or SIGTERM, then stops all new
// work and shuts the parts down in reverse order within a drain timeout. It is the Go counterpart of the
// Python seed's start_server.Runner.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// A Service is a part of the process with a start and a stop: a worker, a
// client, a connection.
//
// Start returns once the service is running (for a worker: consuming), or
// with an error if it cannot start. Shutdown stops taking new work, lets the
// work in flight finish until ctx ends, and then releases its resources; it
// is called once, after a successful Start.
type Service interface {
	Start(ctx context.Context) error
	Shutdown(ctx context.Context) error
}

// Intake is implemented by services that can stop taking new work apart from
// finishing the work they have (a worker cancels its consumers). When a run
// ends, Run calls StopIntake on every such service before it shuts any of
// them down, so that no service keeps accepting work while another drains.
type Intake interface {
	StopIntake(ctx context.Context) error
}

// Runner starts services in order and stops them in reverse order.
// The zero value is usable: it logs to slog.Default and drains for 10 s.
type Runner struct {
	// Logger receives one line per start, stop and failure.
	// Nil means slog.Default().
	Logger *slog.Logger
	// DrainTimeout bounds the whole shutdown: every service's Shutdown
	// shares this budget. Zero means 10 s.
	DrainTimeout time.Duration
	// Signals end the run. Nil means SIGINT and SIGTERM. After the first
	// signal the default handling is restored, so a second one kills the
	// process at once.
	Signals []os.Signal
}

// Named gives a service a name for the runner's log lines.
func Named(name string, s Service) Service { return named{name, s} }

type named struct {
	name string
	Service
}

func (n named) String() string { return n.name }

// StopIntake forwards to the wrapped service, if it has an intake to stop.
func (n named) StopIntake(ctx context.Context) error {
	if i, ok := n.Service.(Intake); ok {
		return i.StopIntake(ctx)
	}
	return nil
}

// Run starts services in the order given. If one fails to start, the ones
// already started are shut down and its error is returned. Otherwise Run
// waits until ctx ends or a signal arrives, then stops the intake of every
// [Intake], shuts the services down in reverse order, and returns the
// shutdown errors joined (nil for a clean stop).
func (r *Runner) Run(ctx context.Context, services ...Service) error {
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	signals := r.Signals
	if signals == nil {
		signals = []os.Signal{os.Interrupt, syscall.SIGTERM}
	}
	ctx, stopSignals := signal.NotifyContext(ctx, signals...)
	defer stopSignals()

	started := 0
	for _, s := range services {
		if err := s.Start(ctx); err != nil {
			return errors.Join(fmt.Errorf("start %s: %w", nameOf(s), err), r.shutdown(log, services[:started]))
		}
		started++
		log.Debug("started", "service", nameOf(s))
	}
	log.Info("service running; stop with SIGINT or SIGTERM")

	<-ctx.Done()
	log.Info("stopping", "reason", context.Cause(ctx))
	stopSignals() // a second signal now kills the process
	return r.shutdown(log, services)
}

// shutdown stops every intake first, then shuts the services down in reverse
// order, all within one drain budget.
func (r *Runner) shutdown(log *slog.Logger, services []Service) error {
	drain := r.DrainTimeout
	if drain <= 0 {
		drain = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	var errs []error
	for i := len(services) - 1; i >= 0; i-- {
		if in, ok := services[i].(Intake); ok {
			if err := in.StopIntake(ctx); err != nil {
				errs = append(errs, fmt.Errorf("stop intake of %s: %w", nameOf(services[i]), err))
			}
		}
	}
	for i := len(services) - 1; i >= 0; i-- {
		s := services[i]
		if err := s.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", nameOf(s), err))
			continue
		}
		log.Debug("stopped", "service", nameOf(s))
	}
	return errors.Join(errs...)
}

func nameOf(s Service) string {
	if n, ok := s.(fmt.Stringer); ok {
		return n.String()
	}
	return fmt.Sprintf("%T", s)
}
