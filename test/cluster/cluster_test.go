//go:build cluster

package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
	"example.com/service/test/cluster"
	"example.com/service/test/stack"
)

// 1. kill -9 of the node that leads example-item.store while 20,000
// confirmed messages are published and consumed, and RPC calls run at
// concurrency 32: every confirmed message is stored, every call is
// answered or fails within its deadline, and both replicas consume again.
func TestNodeKilledUnderLoad(t *testing.T) {
	e := newEnv(t)
	a, b := e.replicas(t)
	routes := len(bins.Routes(t))
	db := e.DB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	leader, err := cluster.Leader(ctx, nodes, e.vhost, "example-item.store")
	if err != nil {
		t.Fatal(err)
	}
	rpcLeader, err := cluster.Leader(ctx, nodes, e.vhost, "hello_world")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("replicas on %s and %s; example-item.store led by %s, hello_world by %s", nodeOf(a), nodeOf(b), leader.Name, rpcLeader.Name)

	// RPC load: 32 callers, each call with a 5 s deadline.
	const callTimeout = 5 * time.Second
	rpcCtx, stopRPC := context.WithCancel(context.Background())
	var (
		rpcWG                  sync.WaitGroup
		calls, answered, hung  atomic.Int64
		lastAnswer, longestGap atomic.Int64 // unix nanoseconds, nanoseconds
		errMu                  sync.Mutex
		errKinds               = map[string]int{}
	)
	lastAnswer.Store(time.Now().UnixNano())
	for range 32 {
		rpcWG.Go(func() {
			for rpcCtx.Err() == nil {
				calls.Add(1)
				start := time.Now()
				cctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				var reply string
				err := e.client.Call(cctx, "hello_world", nil, &reply)
				cancel()
				took := time.Since(start)
				if took > callTimeout+2*time.Second {
					hung.Add(1)
				}
				if err == nil {
					answered.Add(1)
					now := time.Now().UnixNano()
					if prev := lastAnswer.Swap(now); now-prev > longestGap.Load() {
						longestGap.Store(now - prev)
					}
					continue
				}
				kind := err.Error()
				var remote *worker.RemoteError
				switch {
				case errors.Is(err, context.DeadlineExceeded):
					kind = "deadline exceeded"
				case errors.As(err, &remote):
					kind = "error reply " + remote.Type
				}
				errMu.Lock()
				errKinds[firstWords(kind, 8)]++
				errMu.Unlock()
				time.Sleep(50 * time.Millisecond)
			}
		})
	}

	const n = 20000
	tag := testenv.Name("cluster-kill-")
	queueStall := watchStall(t, db, tag)
	var resumeNote string
	var resume time.Duration
	fault := func() {
		offA, offB := len(a.Logs()), len(b.Logs())
		onA, onB := nodeOf(a) == leader.Addr(), nodeOf(b) == leader.Addr()
		killed := time.Now()
		if err := leader.Kill(); err != nil {
			t.Error(err)
			return
		}
		t.Logf("killed %s (kill -9) after %d confirmed messages", leader.Name, n/3)
		var rwg sync.WaitGroup
		var ra, rb time.Duration
		var okA, okB bool
		rwg.Go(func() { ra, okA = resumed(a, offA, killed, onA, routes, 90*time.Second) })
		rwg.Go(func() { rb, okB = resumed(b, offB, killed, onB, routes, 90*time.Second) })
		time.Sleep(5 * time.Second) // down for 5 s, then brought back
		if err := leader.Start(ctx); err != nil {
			t.Error(err)
		}
		rwg.Wait()
		if !okA || !okB {
			t.Errorf("a replica did not consume again within 90 s of the kill (replica A %v, B %v)", okA, okB)
		}
		resume = max(ra, rb)
		resumeNote = fmt.Sprintf("replicas consuming again after %s s (on the killed node: %v) and %s s (%v)", seconds(ra), onA, seconds(rb), onB)
	}
	confirmed := stack.PublishTagged(t, e.client, tag, n, 16, n/3, fault)
	time.Sleep(2 * time.Second) // calls on the healed cluster
	stopRPC()
	rpcWG.Wait()
	rows, distinct := stack.WaitStored(t, db, tag, confirmed, 60*time.Second)
	stalled := queueStall.Longest()
	dead := stack.DeadLetters(t, e.channel(t, nodes[0]), "example-item.store")
	lost := confirmed - distinct - len(dead)
	record(t, row{
		fault: fmt.Sprintf("kill -9 of the node leading example-item.store (%s), 5 s down, under load", leader.Name),
		sent:  confirmed, stored: distinct, lost: lost, duplicated: rows - distinct, deadLetter: len(dead),
		resume: seconds(resume),
		note:   fmt.Sprintf("%d published, %d confirmed; longest pause in storing %s s; %s", n, confirmed, seconds(stalled), resumeNote),
	})
	if confirmed != n {
		t.Errorf("%d of %d publishes were not confirmed", n-confirmed, n)
	}
	if lost != 0 {
		t.Errorf("lost %d confirmed messages", lost)
	}

	var kinds []string
	for k, v := range errKinds {
		kinds = append(kinds, fmt.Sprintf("%d %s", v, k))
	}
	sort.Strings(kinds)
	failed := calls.Load() - answered.Load()
	record(t, row{
		fault: fmt.Sprintf("RPC hello_world at concurrency 32 across the same kill (led by %s)", rpcLeader.Name),
		sent:  int(calls.Load()), stored: int(answered.Load()), lost: int(hung.Load()),
		resume: seconds(time.Duration(longestGap.Load())),
		note:   fmt.Sprintf("%d calls failed within their 5 s deadline (%s); none hung; longest time without a reply %s s", failed, strings.Join(kinds, ", "), seconds(time.Duration(longestGap.Load()))),
	})
	if hung.Load() != 0 {
		t.Errorf("%d calls took longer than their deadline plus 2 s", hung.Load())
	}
	if answered.Load() == 0 {
		t.Error("no RPC call was answered")
	}
}

func firstWords(s string, n int) string {
	f := strings.Fields(s)
	if len(f) > n {
		f = f[:n]
	}
	return strings.Join(f, " ")
}

// 2. A rolling restart of all three nodes (each stopped, started and its
// queues back in quorum before the next) while messages flow: none lost.
func TestRollingRestart(t *testing.T) {
	e := newEnv(t)
	e.replicas(t)
	db := e.DB(t)
	tag := testenv.Name("cluster-rolling-")
	stall := watchStall(t, db, tag)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	loadCtx, stopLoad := context.WithCancel(context.Background())
	var next, confirmed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for loadCtx.Err() == nil {
				i := next.Add(1)
				pctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				err := e.client.Publish(pctx, "example-item.store", map[string]any{"string": fmt.Sprintf("%s-%d", tag, i), "integer": 1})
				cancel()
				if err != nil {
					t.Errorf("publish %s-%d: %v", tag, i, err)
					continue
				}
				confirmed.Add(1)
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	time.Sleep(2 * time.Second)
	start := time.Now()
	for _, n := range nodes {
		if err := n.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if err := n.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := cluster.AwaitQuorum(ctx, nodes); err != nil {
			t.Fatal(err)
		}
		t.Logf("restarted %s (%s since the first stop)", n.Name, time.Since(start).Round(100*time.Millisecond))
	}
	took := time.Since(start)
	time.Sleep(2 * time.Second)
	stopLoad()
	wg.Wait()
	sent := int(confirmed.Load())
	rows, distinct := stack.WaitStored(t, db, tag, sent, 60*time.Second)
	stalled := stall.Longest()
	dead := stack.DeadLetters(t, e.channel(t, nodes[0]), "example-item.store")
	lost := sent - distinct - len(dead)
	record(t, row{
		fault: "rolling restart of all 3 nodes under queue load",
		sent:  sent, stored: distinct, lost: lost, duplicated: rows - distinct, deadLetter: len(dead),
		resume: seconds(stalled),
		note:   fmt.Sprintf("%s s for the three restarts; longest pause in storing %s s", seconds(took), seconds(stalled)),
	})
	if lost != 0 {
		t.Errorf("lost %d confirmed messages", lost)
	}
}

// 3. A message that is redelivered over and over (its consumer rejects it
// back to the queue each time, as a consumer that crashes on it would) is
// dead-lettered by the broker after the quorum queue's delivery limit.
func TestPoisonMessageDeadLettered(t *testing.T) {
	e := newEnv(t)
	p := e.replica(t) // declares the route's queues, then makes way
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := p.Wait(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("replica did not stop on SIGTERM: exit %d, %v", code, err)
	}
	marker := testenv.Name("poison-")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.client.WithEncoding(worker.JSON).Publish(ctx, "example-item.store", map[string]any{"string": marker}); err != nil {
		t.Fatal(err)
	}
	ch := e.channel(t, nodes[1])
	deliveries, err := ch.Consume("example-item.store", "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	dlq := e.channel(t, nodes[2])
	count := 0
	for {
		select {
		case d := <-deliveries:
			if strings.Contains(string(d.Body), marker) {
				count++
			}
			_ = d.Nack(false, true) // back to the queue, as a crash would
			continue
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("the poison message was not dead-lettered within a minute (%d deliveries)", count)
		}
		m, ok, err := dlq.Get("example-item.store"+worker.DeadLetterSuffix, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			continue
		}
		reason := deathReason(m.Headers)
		record(t, row{
			fault: "poison message on a quorum route (rejected back to the queue on every delivery)",
			sent:  1, deadLetter: 1, resume: "-",
			note: fmt.Sprintf("dead-lettered by the broker after %d deliveries (x-delivery-limit %d), reason %s", count, worker.DefaultDeliveryLimit, reason),
		})
		if !strings.Contains(string(m.Body), marker) || reason != "delivery_limit" || count < worker.DefaultDeliveryLimit {
			t.Errorf("dead letter %q after %d deliveries, reason %q: want the poison message after at least %d deliveries, reason delivery_limit",
				m.Body, count, reason, worker.DefaultDeliveryLimit)
		}
		return
	}
}

// deathReason is the reason of the first x-death entry of a dead letter.
func deathReason(h amqp.Table) string {
	deaths, _ := h["x-death"].([]any)
	if len(deaths) == 0 {
		return ""
	}
	d, _ := deaths[0].(amqp.Table)
	r, _ := d["reason"].(string)
	return r
}
