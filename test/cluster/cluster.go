// Package cluster runs a three-node RabbitMQ cluster of the server installed
// on this machine, for the cluster tests (`go tool task test:cluster`) and
// for `go tool task cluster:up` / `cluster:down`. The nodes have names,
// ports and data directories of their own (rabbit-c1@localhost on
// 127.0.0.1:5681, c2 on 5682, c3 on 5683) and share the installed server's
// Erlang cookie; the ordinary node (rabbit@localhost on 5672), which the
// other tests use, is never touched.
//
// Everything it runs is bounded in time. The nodes run as the rabbitmq user
// (the Debian wrapper scripts switch to it), so it needs root or that user.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Size is the number of nodes.
const Size = 3

// Node is one node of the cluster.
type Node struct {
	Name string // Erlang node name, rabbit-c1@localhost
	Port int    // AMQP port on 127.0.0.1
	dist int    // Erlang distribution port
	dir  string // data, logs, config and pid file
}

// Dir is where the nodes keep their data: CLUSTER_DIR, default
// /tmp/service-cluster.
func Dir() string {
	if d := os.Getenv("CLUSTER_DIR"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "service-cluster")
}

// Nodes returns the cluster's nodes (whether running or not).
func Nodes() []*Node {
	nodes := make([]*Node, Size)
	for i := range nodes {
		n := i + 1
		nodes[i] = &Node{
			Name: fmt.Sprintf("rabbit-c%d@localhost", n),
			Port: 5680 + n,
			dist: 25680 + n,
			dir:  filepath.Join(Dir(), fmt.Sprintf("c%d", n)),
		}
	}
	return nodes
}

// Addr is the node's AMQP address, 127.0.0.1:port.
func (n *Node) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.Port)) }

// Hosts is BROKER_HOSTS for the nodes: their addresses, comma-separated.
func Hosts(nodes []*Node) string {
	addrs := make([]string, len(nodes))
	for i, n := range nodes {
		addrs[i] = n.Addr()
	}
	return strings.Join(addrs, ",")
}

// Installed reports why the cluster cannot run here ("" when it can): the
// server is not installed, or this process may not run it.
func Installed() string {
	if _, err := exec.LookPath("rabbitmq-server"); err != nil {
		return "rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)"
	}
	if _, err := user.Lookup("rabbitmq"); err != nil {
		return "there is no rabbitmq user: install the server from Debian's rabbitmq-server package"
	}
	if u, err := user.Current(); err != nil || (u.Uid != "0" && u.Username != "rabbitmq") {
		return "the nodes run as the rabbitmq user: run as root (or rabbitmq)"
	}
	return ""
}

// env is the node's environment: its own name, ports, directories and
// configuration, nothing of the installed node's.
func (n *Node) env() []string {
	return append(os.Environ(),
		"RABBITMQ_NODENAME="+n.Name,
		"RABBITMQ_NODE_PORT="+strconv.Itoa(n.Port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(n.dist),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(n.dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(n.dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(n.dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(n.dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(n.dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(n.dir, "log"),
		"RABBITMQ_PID_FILE="+n.pidFile(),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}",
	)
}

func (n *Node) pidFile() string { return filepath.Join(n.dir, "pid") }

// files writes the node's configuration, owned by rabbitmq.
func (n *Node) files() error {
	files := map[string]string{
		// The node's own: the installed node's /etc/rabbitmq files are not read.
		"rabbitmq-env.conf": "",
		"rabbitmq.conf":     fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\n", n.Port),
		"advanced.config":   "[].\n",
		"enabled_plugins":   "[].\n",
	}
	for _, d := range []string{"mnesia", "log"} {
		if err := os.MkdirAll(filepath.Join(n.dir, d), 0o755); err != nil {
			return err
		}
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(n.dir, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return chownRabbitmq(n.dir)
}

func chownRabbitmq(dir string) error {
	u, err := user.Lookup("rabbitmq")
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
}

// run runs a RabbitMQ command line tool against the node, bounded by ctx.
func (n *Node) run(ctx context.Context, tool string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, tool, append([]string{"-q", "-n", n.Name}, args...)...)
	cmd.Env = n.env()
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s -n %s %s: %w: %s", tool, n.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Ctl runs rabbitmqctl against the node.
func (n *Node) Ctl(ctx context.Context, args ...string) (string, error) {
	return n.run(ctx, "rabbitmqctl", args...)
}

// Running reports whether the node's RabbitMQ application answers.
func (n *Node) Running(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	_, err := n.run(ctx, "rabbitmq-diagnostics", "check_running")
	return err == nil
}

// Start starts the node (its data directory keeps its cluster membership)
// and waits until it runs.
func (n *Node) Start(ctx context.Context) error {
	if err := n.files(); err != nil {
		return fmt.Errorf("node %s: write its configuration in %s: %w", n.Name, n.dir, err)
	}
	cmd := exec.CommandContext(ctx, "rabbitmq-server", "-detached")
	cmd.Env = n.env()
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("start node %s: %w: %s", n.Name, err, strings.TrimSpace(string(out)))
	}
	return n.Await(ctx)
}

// Await waits until the node's application runs.
func (n *Node) Await(ctx context.Context) error {
	for {
		if n.Running(ctx) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s did not start: %w; its log is in %s", n.Name, ctx.Err(), filepath.Join(n.dir, "log"))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// PID is the process id of the node's Erlang VM, 0 when it is not running.
func (n *Node) PID() int {
	b, err := os.ReadFile(n.pidFile())
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// Kill kills the node's VM with SIGKILL, as a crash or a power cut would,
// and waits until it is gone.
func (n *Node) Kill() error {
	pid := n.PID()
	if pid == 0 {
		return fmt.Errorf("kill node %s: not running (no live pid in %s)", n.Name, n.pidFile())
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill node %s (pid %d): %w", n.Name, pid, err)
	}
	for range 100 {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return nil // gone
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("node %s (pid %d) still runs 5 s after SIGKILL", n.Name, pid)
}

// Stop stops the node gracefully (rabbitmqctl stop), and kills it when
// that does not work within ctx.
func (n *Node) Stop(ctx context.Context) error {
	if n.PID() == 0 {
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := n.Ctl(sctx, "stop", n.pidFile()); err == nil && n.PID() == 0 {
		return nil
	}
	if n.PID() == 0 {
		return nil
	}
	return n.Kill()
}

// Up starts the cluster's nodes that do not run, joins them into one
// cluster (the first node's) and waits until every node runs in it. Nodes
// already clustered (a previous Up) keep their data.
func Up(ctx context.Context, logf func(format string, args ...any)) ([]*Node, error) {
	if why := Installed(); why != "" {
		return nil, errors.New("cannot run a RabbitMQ cluster here: " + why)
	}
	nodes := Nodes()
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		if n.PID() != 0 && n.Running(ctx) {
			continue
		}
		if n.PID() != 0 { // a VM whose application stopped: start afresh
			_ = n.Kill()
		}
		logf("starting %s on %s", n.Name, n.Addr())
		wg.Go(func() { errs[i] = n.Start(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	first := nodes[0]
	for _, n := range nodes[1:] {
		members, err := n.runningMembers(ctx)
		if err != nil {
			return nil, err
		}
		if slices.Contains(members, first.Name) {
			continue
		}
		logf("joining %s to %s", n.Name, first.Name)
		for _, step := range [][]string{{"stop_app"}, {"reset"}, {"join_cluster", first.Name}, {"start_app"}} {
			if _, err := n.Ctl(ctx, step...); err != nil {
				return nil, err
			}
		}
	}
	return nodes, waitMembers(ctx, first, Size)
}

// Down stops every node and deletes the cluster's data.
func Down(ctx context.Context) error {
	var errs []error
	for _, n := range Nodes() {
		if err := n.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.RemoveAll(Dir())
}

// runningMembers lists the nodes running in n's cluster.
func (n *Node) runningMembers(ctx context.Context) ([]string, error) {
	out, err := n.Ctl(ctx, "eval", "rabbit_nodes:all_running().")
	if err != nil {
		return nil, err
	}
	var names []string
	for f := range strings.FieldsFuncSeq(out, func(r rune) bool { return strings.ContainsRune("[],' \n", r) }) {
		names = append(names, f)
	}
	return names, nil
}

// waitMembers waits until want nodes run in n's cluster.
func waitMembers(ctx context.Context, n *Node, want int) error {
	for {
		members, err := n.runningMembers(ctx)
		if err == nil && len(members) == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster of %s: %d nodes running (%v), want %d: %w", n.Name, len(members), members, want, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Any returns a running node of nodes, to run a command on.
func Any(ctx context.Context, nodes []*Node) (*Node, error) {
	for _, n := range nodes {
		if n.PID() != 0 && n.Running(ctx) {
			return n, nil
		}
	}
	return nil, errors.New("no node of the cluster runs")
}

// Leader returns the node that leads quorum queue queue of vhost.
func Leader(ctx context.Context, nodes []*Node, vhost, queue string) (*Node, error) {
	n, err := Any(ctx, nodes)
	if err != nil {
		return nil, err
	}
	out, err := n.Ctl(ctx, "list_queues", "-p", vhost, "name", "leader")
	if err != nil {
		return nil, err
	}
	for line := range strings.SplitSeq(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == queue {
			for _, m := range nodes {
				if m.Name == f[1] {
					return m, nil
				}
			}
			return nil, fmt.Errorf("queue %s is led by %s, not a node of this cluster", queue, f[1])
		}
	}
	return nil, fmt.Errorf("no quorum queue %s in vhost %s (list_queues: %s)", queue, vhost, strings.TrimSpace(out))
}

// AwaitQuorum waits until no node is critical for the quorum of its
// queues: each quorum queue has a majority of its members online, so one
// more node may go down.
func AwaitQuorum(ctx context.Context, nodes []*Node) error {
	for _, n := range nodes {
		for {
			_, err := n.run(ctx, "rabbitmq-queues", "check_if_node_is_quorum_critical")
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("node %s stays critical for a quorum queue: %w (last: %w)", n.Name, ctx.Err(), err)
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	return nil
}
