package worker

import (
	"testing"
	"time"
)

// A flood of failures on one route yields a burst of lines, then about ten
// a second, and the next line out says how many were left out; another
// route has its own allowance.
func TestSamplerBoundsLogLines(t *testing.T) {
	s := newSampler()
	passed := 0
	for range 1000 {
		if ok, _ := s.allow("route-a\x00failed"); ok {
			passed++
		}
	}
	if passed != logBurst {
		t.Fatalf("%d of 1000 lines at once passed, want the burst of %d", passed, logBurst)
	}
	if ok, _ := s.allow("route-b\x00failed"); !ok {
		t.Fatal("another route's first line was suppressed")
	}
	time.Sleep(2 * logEvery)
	ok, suppressed := s.allow("route-a\x00failed")
	if !ok || suppressed != 1000-logBurst {
		t.Fatalf("after a pause: ok %v, suppressed %d, want true and %d", ok, suppressed, 1000-logBurst)
	}
}
