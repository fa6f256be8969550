package e2e

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

// TestIdempotentRouteUnderConnectionCuts: messages (4,000 in the everyday
// suite; 20,000 under test:effects or INBOX_E2E_MESSAGES) through the
// idempotent route example-item.store-once while the service's connections
// to RabbitMQ are cut four times (a TCP proxy between them; the broker
// redelivers what was not acked): none is lost and none is stored twice.
// The same load on the plain route example-item.store, cut the same way,
// stores some twice: that is what the inbox prevents.
func TestIdempotentRouteUnderConnectionCuts(t *testing.T) {
	testenv.RequireBroker(t)
	testenv.RequirePostgres(t)
	env := stack.NewEnv(t, bins)
	proxy := newCutProxy(t, testenv.BrokerAddr())
	p := stack.Start(t, bins, env, "BROKER_HOST=127.0.0.1", fmt.Sprintf("BROKER_PORT=%d", proxy.port()))
	client := env.Client(t)
	db := env.DB(t)

	n := testenv.Count(t, "INBOX_E2E_MESSAGES", 4000, 20000)
	const cuts = 4
	run := func(route string) (confirmed, rows, distinct, dead, cutsDone int) {
		tag := testenv.Name(route + "-")
		var done atomic.Bool
		var watch sync.WaitGroup
		watch.Go(func() { // cut at 1/5, 2/5, ... of the messages stored
			for cutsDone < cuts && !done.Load() {
				_, stored := stack.StoredCounts(t, db, tag)
				if stored >= (cutsDone+1)*n/(cuts+1) {
					cutsDone++
					t.Logf("%s: cutting the service's connections at %d stored (cut %d)", route, stored, cutsDone)
					proxy.cut()
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
		confirmed = stack.PublishTaggedTo(t, client, route, tag, n, 16, 0, nil)
		rows, distinct = stack.WaitStored(t, db, tag, confirmed, 60*time.Second)
		done.Store(true)
		watch.Wait()
		dead = len(stack.DeadLetters(t, env.Channel(t), route))
		return confirmed, rows, distinct, dead, cutsDone
	}

	confirmed, rows, distinct, dead, cutsDone := run("example-item.store-once")
	skipped := strings.Count(p.Logs(), "message handled before")
	t.Logf("idempotent route: %d confirmed, %d rows, %d distinct, %d dead-lettered, %d cuts, %d redeliveries acked without running the handler",
		confirmed, rows, distinct, dead, cutsDone, skipped)
	if confirmed != n || distinct+dead != confirmed {
		t.Errorf("idempotent route: %d of %d confirmed, %d stored, %d dead-lettered: lost %d", confirmed, n, distinct, dead, confirmed-distinct-dead)
	}
	if rows != distinct {
		t.Errorf("idempotent route: %d rows for %d messages: %d duplicate effects", rows, distinct, rows-distinct)
	}
	if cutsDone != cuts {
		t.Errorf("only %d of %d cuts happened before every message was stored", cutsDone, cuts)
	}

	confirmed, rows, distinct, dead, cutsDone = run("example-item.store")
	t.Logf("plain route: %d confirmed, %d rows, %d distinct, %d dead-lettered, %d cuts: %d duplicate effects",
		confirmed, rows, distinct, dead, cutsDone, rows-distinct)
	if distinct+dead != confirmed {
		t.Errorf("plain route: lost %d", confirmed-distinct-dead)
	}
	if rows == distinct {
		// Not a failure of the inbox, but then this run shows nothing: the
		// cuts found no handled-but-unacked message (redeliveries, if any,
		// ran before their first copy was stored).
		t.Errorf("plain route: no duplicates after %d cuts; the comparison shows nothing (the idempotent route acked %d redeliveries without running them)", cutsDone, skipped)
	}
}

// cutProxy forwards TCP connections to target; cut closes every connection
// open through it (both ends), as a network failure would, and keeps
// accepting new ones.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.forward(c)
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); p.cut() })
	return p
}

func (p *cutProxy) forward(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	p.mu.Unlock()
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		_ = dst.Close()
		_ = src.Close()
	}
	go pipe(up, c)
	pipe(c, up)
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
}

func (p *cutProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }
