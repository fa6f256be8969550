//go:build cluster

// The cluster tests run the real service binary, two replicas, on the
// three-node cluster of this package and inject node failures: a kill -9
// of the node leading the queues under load, a rolling restart of every
// node, and a poison message. They end with a table: fault, sent, stored,
// lost, duplicated, dead-lettered, seconds to resume. Run them with
// `go tool task test:cluster`; they start the cluster when it does not run
// (and stop it at the end), or use the one `go tool task cluster:up`
// started (and leave it running).
package cluster_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"example.com/service/test/cluster"
	"example.com/service/test/stack"
)

var (
	bins  *stack.Binaries
	nodes []*cluster.Node
)

func TestMain(m *testing.M) {
	if why := cluster.Installed(); why != "" {
		fmt.Println("test/cluster: skipped:", why)
		os.Exit(0)
	}
	// Killing nodes is harmless to others, but the load would make
	// timing-sensitive tests of a parallel run flaky, and a restart of the
	// shared node by one would fail this one's clean-up (Restarts).
	stack.Main(m, stack.Suite{
		Name:     "test/cluster",
		Restarts: true,
		Setup:    upCluster,
		Report:   func() { table.Print(os.Stdout) },
	}, &bins)
}

// upCluster starts the cluster unless all its nodes run already; the
// teardown stops it again only when it started it.
func upCluster() (teardown func() error, err error) {
	logf := func(format string, args ...any) { fmt.Printf("test/cluster: "+format+"\n", args...) }
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ours := !allRunning(ctx)
	start := time.Now()
	if nodes, err = cluster.Up(ctx, logf); err != nil {
		return nil, err
	}
	logf("%d nodes up in %s", len(nodes), time.Since(start).Round(100*time.Millisecond))
	if !ours {
		return nil, nil
	}
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := cluster.Down(ctx); err != nil {
			return fmt.Errorf("stop the cluster: %w", err)
		}
		return nil
	}, nil
}

// allRunning reports whether the cluster runs already (cluster:up).
func allRunning(ctx context.Context) bool {
	for _, n := range cluster.Nodes() {
		if n.PID() == 0 || !n.Running(ctx) {
			return false
		}
	}
	return true
}

// row is one line of the closing table.
type row struct {
	fault                                      string
	sent, stored, lost, duplicated, deadLetter int
	resume                                     string // seconds until the service consumes again
	note                                       string
}

var table = stack.NewTable("Cluster fault table",
	"fault", "sent", "stored", "lost", "duplicated", "dead-lettered", "seconds to resume", "note")

func record(t *testing.T, r row) {
	t.Helper()
	t.Logf("%s: sent %d, stored %d, lost %d, duplicated %d, dead-lettered %d, resumed %s; %s",
		r.fault, r.sent, r.stored, r.lost, r.duplicated, r.deadLetter, r.resume, r.note)
	table.Add(r.fault, r.sent, r.stored, r.lost, r.duplicated, r.deadLetter, r.resume, r.note)
}
