//go:build cluster

package cluster_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
	"example.com/service/test/cluster"
	"example.com/service/test/stack"
)

// env is a vhost of its own on the cluster (the service's queues), a
// database of its own (stack.NewEnv) and a client connected to the
// cluster.
type env struct {
	stack.Env
	vhost  string
	client *worker.Client
}

const vhostPrefix = "cl_"

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{Env: stack.NewEnv(t, bins), vhost: testenv.OwnedName(vhostPrefix)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := cluster.Any(ctx, nodes)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := n.Ctl(ctx, "list_vhosts", "name"); err == nil {
		for name := range strings.FieldsSeq(out) {
			if testenv.Orphaned(name, vhostPrefix) {
				_, _ = n.Ctl(ctx, "delete_vhost", name)
			}
		}
	}
	for _, args := range [][]string{{"add_vhost", e.vhost}, {"set_permissions", "-p", e.vhost, "guest", ".*", ".*", ".*"}} {
		if _, err := n.Ctl(ctx, args...); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		n, err := cluster.Any(ctx, nodes)
		if err == nil {
			_, err = n.Ctl(ctx, "delete_vhost", e.vhost)
		}
		if err != nil {
			t.Errorf("delete vhost %s on the cluster: %v", e.vhost, err)
		}
	})
	conn, err := worker.Dial(ctx, e.broker(), worker.WithName("cluster test client"))
	if err != nil {
		t.Fatal(err)
	}
	e.client = worker.NewClient(conn)
	t.Cleanup(func() { _ = e.client.Close(); _ = conn.Close() })
	return e
}

// broker is the cluster as a worker.Config, in env's vhost.
func (e *env) broker() worker.Config {
	cfg := worker.Config{User: "guest", Password: "guest", VHost: e.vhost}
	for _, n := range nodes {
		cfg.Hosts = append(cfg.Hosts, n.Addr())
	}
	return cfg
}

// settings are the service's settings for the cluster: every node, and
// RPC routes on quorum queues so that they survive the loss of a node.
func (e *env) settings() []string {
	return []string{
		"BROKER_HOSTS=" + cluster.Hosts(nodes), "BROKER_VHOST=" + e.vhost,
		"BROKER_USER=guest", "BROKER_PASS=guest", "BROKER_RPC_QUEUE_TYPE=quorum",
	}
}

// channel is a plain amqp091-go channel on node n in env's vhost.
func (e *env) channel(t *testing.T, n *cluster.Node) *amqp.Channel {
	t.Helper()
	u := url.URL{Scheme: "amqp", User: url.UserPassword("guest", "guest"), Host: n.Addr(), Path: "/" + e.vhost}
	conn, err := amqp.Dial(u.String())
	if err != nil {
		t.Fatalf("dial %s: %v", n.Name, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// replica starts the service on the cluster and waits until it runs.
func (e *env) replica(t *testing.T) *stack.Process {
	t.Helper()
	p := stack.Launch(t, bins, e.Env, e.settings()...)
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.Logs(), "service running") {
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("replica not running after 60 s; the end of its log:\n%s", p.Tail(15))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return p
}

// replicas starts two replicas whose consuming connections are on
// different nodes (each picks its first node at random: a replica that
// lands on the first one's node is started again).
func (e *env) replicas(t *testing.T) (a, b *stack.Process) {
	t.Helper()
	a = e.replica(t)
	for range 10 {
		b = e.replica(t)
		if nodeOf(b) != nodeOf(a) {
			return a, b
		}
		_ = b.Signal(syscall.SIGKILL)
		_, _ = b.Wait(10 * time.Second)
	}
	t.Fatalf("ten replicas in a row started on %s", nodeOf(a))
	return nil, nil
}

var consumeAddr = regexp.MustCompile(`connection=consume addr=(\S+)`)

// nodeOf is the address of the node the replica's consuming connection
// is on, from its log.
func nodeOf(p *stack.Process) string {
	m := consumeAddr.FindAllStringSubmatch(p.Logs(), -1)
	if len(m) == 0 {
		return ""
	}
	return m[len(m)-1][1]
}

// resumed waits until replica p consumes again after a node was killed at
// killed (offset: the length of its log then) and returns how long that
// took. A replica whose consuming connection was on the killed node
// (onKilled) is back when it reconnected and all its routes resumed; one on
// another node when the consumers it lost (if any) resumed, 0 when none
// stopped within 10 s.
func resumed(p *stack.Process, offset int, killed time.Time, onKilled bool, routes int, timeout time.Duration) (time.Duration, bool) {
	deadline := killed.Add(timeout)
	for time.Now().Before(deadline) {
		logs := p.Logs()[offset:]
		stopped := strings.Count(logs, "consumer stopped")
		back := strings.Count(logs, "consumer resumed")
		switch {
		case onKilled && strings.Contains(logs, "RabbitMQ connection restored") && strings.Contains(logs, "connection=consume") && back >= routes:
			return time.Since(killed), true
		case !onKilled && stopped > 0 && back >= stopped:
			return time.Since(killed), true
		case !onKilled && stopped == 0 && time.Since(killed) > 10*time.Second:
			return 0, true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(killed), false
}

// stall tracks the longest time stored rows did not grow while load ran.
type stall struct {
	mu      sync.Mutex
	longest time.Duration
	stop    chan struct{}
	done    chan struct{}
}

func watchStall(t *testing.T, db *sql.DB, tag string) *stall {
	s := &stall{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		last, since := -1, time.Now()
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			var rows int
			if err := db.QueryRowContext(context.Background(),
				`SELECT count(*) FROM example_item WHERE starts_with("string", $1)`, tag).Scan(&rows); err != nil {
				continue
			}
			if rows != last {
				last, since = rows, time.Now()
				continue
			}
			s.mu.Lock()
			s.longest = max(s.longest, time.Since(since))
			s.mu.Unlock()
		}
	}()
	t.Cleanup(s.end)
	return s
}

func (s *stall) end() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// Longest stops watching and returns the longest stall.
func (s *stall) Longest() time.Duration {
	s.end()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.longest
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.1f", d.Seconds()) }
