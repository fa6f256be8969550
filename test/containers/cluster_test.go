//go:build containers

package containers_test

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
)

// composeCluster brings compose.yaml's cluster profile up as the README
// says (`docker compose --profile cluster up -d rabbitmq-1 rabbitmq-2
// rabbitmq-3`), checks that the three nodes form one cluster that the dev
// user reaches on each node's port, with a quorum queue on all three, and
// takes it down again.
func composeCluster(t *testing.T, e *engine, p *project) {
	if t.Failed() || p == nil {
		return
	}
	ports := testenv.FreePorts(t, 3)
	s := &stack{
		e: e, p: p, profiles: []string{"cluster"},
		files: []string{"compose.yaml", filepath.Join(moduleRoot(t), "test", "containers", "machine.cluster.compose.yaml")},
	}
	for i, port := range ports {
		s.env = append(s.env, "CONTAINERS_CLUSTER_PORT_"+strconv.Itoa(i+1)+"="+strconv.Itoa(port))
	}
	s.env = append(s.env, "CONTAINERS_CA_BUNDLE="+p.caBundle)
	nodes := []string{"rabbitmq-1", "rabbitmq-2", "rabbitmq-3"}
	_, _ = s.compose(t, 3*time.Minute, "cluster", "down", "--volumes", "--remove-orphans", "--timeout", "5")
	t.Cleanup(func() {
		_, _ = s.compose(t, 3*time.Minute, "cluster", "down", "--volumes", "--remove-orphans", "--timeout", "5")
	})
	step(t, "compose: cluster profile up to healthy (three nodes, one after the other)", func() {
		s.mustCompose(t, 10*time.Minute, "cluster-up", append([]string{"up", "--detach", "--wait", "--wait-timeout", "300"}, nodes...)...)
	})
	if t.Failed() {
		t.Logf("docker compose logs:\n%s", tail(s.logs(t, ""), 60))
		return
	}
	step(t, "compose: the three nodes are one cluster", func() {
		out := s.mustCompose(t, time.Minute, "cluster-status", "exec", "-T", "rabbitmq-1", "rabbitmqctl", "-q", "eval", "rabbit_nodes:all_running().")
		for _, n := range nodes {
			if !strings.Contains(out, "rabbit@"+n) {
				t.Fatalf("rabbitmq-1's cluster runs %s, want all of %v", strings.TrimSpace(out), nodes)
			}
		}
	})
	step(t, "compose: a quorum queue on all three nodes, reached through each node's port", func() {
		for i, port := range ports {
			u := url.URL{Scheme: "amqp", User: url.UserPassword("service", "service"), Host: "127.0.0.1:" + strconv.Itoa(port), Path: "/service"}
			conn, err := amqp.DialConfig(u.String(), amqp.Config{Dial: amqp.DefaultDial(10 * time.Second)})
			if err != nil {
				t.Fatalf("dial %s through its port %d: %v", nodes[i], port, err)
			}
			ch, err := conn.Channel()
			if err == nil {
				err = ch.Confirm(false)
			}
			if err == nil {
				_, err = ch.QueueDeclare("cluster-check", true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
			}
			var confirm *amqp.DeferredConfirmation
			if err == nil {
				confirm, err = ch.PublishWithDeferredConfirmWithContext(context.Background(), "", "cluster-check", false, false, amqp.Publishing{Body: []byte(nodes[i])})
			}
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				var acked bool
				acked, err = confirm.WaitContext(ctx)
				cancel()
				if err == nil && !acked {
					err = errors.New("the broker nacked the publish")
				}
			}
			_ = conn.Close()
			if err != nil {
				t.Fatalf("quorum queue through %s: %v", nodes[i], err)
			}
		}
		// A quorum queue's message count in list_queues lags its confirms
		// by a few seconds: ask until it shows the three.
		line := ""
		for try := 0; try < 30; try++ {
			out := s.mustCompose(t, time.Minute, "cluster-queue", "exec", "-T", "rabbitmq-3", "rabbitmqctl", "-q", "list_queues", "-p", "service", "name", "messages", "members")
			for l := range strings.SplitSeq(out, "\n") {
				if strings.HasPrefix(l, "cluster-check") {
					line = l
				}
			}
			if strings.Contains(line, "\t3\t") {
				break
			}
			time.Sleep(time.Second)
		}
		if strings.Count(line, "rabbit@rabbitmq-") != 3 || !strings.Contains(line, "\t3\t") {
			t.Fatalf("cluster-check should hold 3 messages on 3 members; list_queues says %q", line)
		}
		note("compose cluster: 3 nodes in one cluster; a quorum queue with a member on each")
	})
	step(t, "compose: cluster profile down", func() {
		s.mustCompose(t, 3*time.Minute, "cluster-down", "down", "--volumes", "--timeout", "5")
	})
}
