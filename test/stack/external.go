package stack

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"example.com/service/src/testenv"
)

// E2E_SERVICE=running points the e2e suite at a service that is already
// running (in a container, say) instead of the binary it builds: the
// suite's env is then the running service's vhost and database (BROKER_VHOST,
// DB_NAME, whose schema must be synced), and the service's log is what the
// shell command E2E_SERVICE_LOGS prints (e.g. `docker compose logs app`).
// Tests that start the service with settings of their own, signal it or
// watch it exit are skipped: a running service takes none of that. The
// container tests (test/containers) use it against compose.yaml's app.
const externalVar = "E2E_SERVICE"

// External reports whether the suite drives an already running service.
func External() bool { return os.Getenv(externalVar) == "running" }

func externalEnv(t testing.TB) Env {
	t.Helper()
	testenv.RequireBroker(t)
	vhost, db := os.Getenv("BROKER_VHOST"), os.Getenv("DB_NAME")
	if vhost == "" || db == "" {
		t.Fatalf("%s=running needs BROKER_VHOST and DB_NAME: the vhost and database of the running service", externalVar)
	}
	return Env{VHost: vhost, Database: db}
}

// attach returns a Process standing for the running service once it
// answers hello_world.
func attach(t testing.TB, env Env, extra []string) *Process {
	t.Helper()
	if len(extra) > 0 {
		t.Skipf("starts the service with %v, which a running service (%s=running) cannot take", extra, externalVar)
	}
	p := &Process{external: true, logs: &testenv.Buffer{}, done: make(chan struct{})}
	if err := awaitHello(env.Client(t), nil, nil); err != nil {
		t.Fatalf("the running service (%s=running) does not answer hello_world on vhost %s: %v", externalVar, env.VHost, err)
	}
	return p
}

// externalLogs runs E2E_SERVICE_LOGS and returns what it printed.
func externalLogs() string {
	command := os.Getenv("E2E_SERVICE_LOGS")
	if command == "" {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sh", "-c", command).CombinedOutput()
	if err != nil {
		return string(out) + "\nE2E_SERVICE_LOGS failed: " + err.Error()
	}
	return string(out)
}
