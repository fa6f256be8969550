package worker

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Failures are logged one line each, at warn level, with the route, the
// error's type and id and its (truncated) text; successes are not logged.
// In production a flood of bad messages must not become a flood of log
// lines, so each route and kind of line is sampled: a burst of logBurst
// lines, then one per logEvery, and the next line that goes out says how
// many were suppressed. In development ([WithDevelopment]) every line goes
// out.
const (
	logBurst = 20
	logEvery = 100 * time.Millisecond
)

// sampler is a token bucket per key.
type sampler struct {
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens     float64
	last       time.Time
	suppressed int
}

func newSampler() *sampler { return &sampler{buckets: map[string]*bucket{}} }

// allow reports whether a line for key may go out now, and how many were
// suppressed since the last one that did.
func (s *sampler) allow(key string) (ok bool, suppressed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	b := s.buckets[key]
	if b == nil {
		if len(s.buckets) > 10_000 { // keys are routes x kinds; never grow without bound
			clear(s.buckets)
		}
		b = &bucket{tokens: logBurst, last: now}
		s.buckets[key] = b
	}
	b.tokens = min(logBurst, b.tokens+float64(now.Sub(b.last))/float64(logEvery))
	b.last = now
	if b.tokens < 1 {
		b.suppressed++
		return false, 0
	}
	b.tokens--
	suppressed, b.suppressed = b.suppressed, 0
	return true, suppressed
}

// logFailure logs a failed delivery of route at warn level (error level
// for a panic, with its stack), sampled.
func (s *server) logFailure(route, msg string, o *outcome, args ...any) {
	s.logFailureCtx(s.base, route, msg, o, args...)
}

// logFailureCtx is logFailure with the delivery's ctx, so a log handler
// can add what ctx carries (the trace and span ids of Trace).
func (s *server) logFailureCtx(ctx context.Context, route, msg string, o *outcome, args ...any) {
	ok, suppressed := s.allowLog(route, msg)
	if !ok {
		return
	}
	attrs := append([]any{"route", route, "error_type", o.Type, "error_id", o.ID, "err", truncate(o.Internal, maxLogText)}, args...)
	if suppressed > 0 {
		attrs = append(attrs, "suppressed", suppressed)
	}
	level := slog.LevelWarn
	if o.Panic != nil {
		level = slog.LevelError
		attrs = append(attrs, "stack", string(o.Panic.stack))
	}
	s.opts.logger.Log(ctx, level, msg, attrs...)
}

// logRefused logs a delivery of route that was refused before it ran, at
// warn level, sampled.
func (s *server) logRefused(route, msg string, args ...any) {
	ok, suppressed := s.allowLog(route, msg)
	if !ok {
		return
	}
	attrs := append([]any{"route", route}, args...)
	if suppressed > 0 {
		attrs = append(attrs, "suppressed", suppressed)
	}
	s.opts.logger.Warn(msg, attrs...)
}

func (s *server) allowLog(route, msg string) (ok bool, suppressed int) {
	if s.opts.development {
		return true, 0
	}
	return s.logs.allow(route + "\x00" + msg)
}
