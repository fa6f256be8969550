//go:build faults

package faults

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver
	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
)

// command runs name with args and fails the test with its output on error.
func command(t *testing.T, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// requireTool skips the test where the fault cannot be injected (for
// example inside the devcontainer, where the services run in other
// containers).
func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s is not installed here: this fault needs the service running on this machine", name)
	}
}

// restartBroker stops the RabbitMQ application, waits down, and starts it
// again. If the test dies in between, cleanup starts it anyway.
func restartBroker(t *testing.T, down time.Duration) {
	t.Helper()
	t.Cleanup(func() { _ = exec.Command("rabbitmqctl", "-q", "start_app").Run() })
	t.Log("restarting RabbitMQ (rabbitmqctl stop_app / start_app)")
	command(t, "rabbitmqctl", "-q", "stop_app")
	time.Sleep(down)
	command(t, "rabbitmqctl", "-q", "start_app")
	command(t, "rabbitmqctl", "-q", "await_startup")
	t.Log("RabbitMQ is back")
}

// pgCluster returns the version of the local PostgreSQL cluster ("15").
func pgCluster(t *testing.T) string {
	t.Helper()
	requireTool(t, "pg_ctlcluster")
	dirs, err := filepath.Glob("/etc/postgresql/*/main")
	if err != nil || len(dirs) == 0 {
		t.Skip("no local PostgreSQL cluster under /etc/postgresql")
	}
	return filepath.Base(filepath.Dir(dirs[0]))
}

// stopPostgres stops the local cluster (fast: open connections are cut) and
// returns a function that starts it again; cleanup starts it in any case.
func stopPostgres(t *testing.T) (start func()) {
	t.Helper()
	version := pgCluster(t)
	pg := func(action string, extra ...string) *exec.Cmd {
		return exec.Command("pg_ctlcluster", append([]string{"--skip-systemctl-redirect", version, "main", action}, extra...)...)
	}
	started := false
	start = func() {
		if started {
			return
		}
		started = true
		if out, err := pg("start").CombinedOutput(); err != nil && !strings.Contains(string(out), "already running") {
			t.Errorf("start PostgreSQL: %v\n%s", err, out)
		}
		waitPostgres(t)
		t.Log("PostgreSQL is back")
	}
	t.Cleanup(start)
	t.Log("stopping PostgreSQL (pg_ctlcluster stop -m fast)")
	if out, err := pg("stop", "-m", "fast").CombinedOutput(); err != nil {
		t.Fatalf("stop PostgreSQL: %v\n%s", err, out)
	}
	return start
}

func waitPostgres(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if testenv.CheckServices() == nil {
			return
		}
	}
	t.Fatal("PostgreSQL did not come back within 60 s")
}

// queueDepth returns the ready messages in queue.
func queueDepth(t *testing.T, ch *amqp.Channel, queue string) int {
	t.Helper()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}

// rss returns the resident memory of process pid in MiB.
func rss(t *testing.T, pid int) int {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int
			_, _ = fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
			return kb / 1024
		}
	}
	t.Fatal("no VmRSS in /proc status")
	return 0
}
