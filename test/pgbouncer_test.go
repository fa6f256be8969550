package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

// TestServiceThroughPgBouncer runs every route with the service's database
// connections going through PgBouncer in transaction pooling mode (server
// connections change hands between transactions, so prepared statements
// do not survive), with DB_QUERY_EXEC_MODE=exec as the README says.
func TestServiceThroughPgBouncer(t *testing.T) {
	bouncer, err := exec.LookPath("pgbouncer")
	if err != nil {
		for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"} {
			if _, serr := os.Stat(p); serr == nil {
				bouncer, err = p, nil
			}
		}
	}
	if err != nil {
		t.Skip("pgbouncer is not installed (Debian: apt-get install pgbouncer); .ci/run installs it")
	}
	env := stack.NewEnv(t, bins)
	addr := startPgBouncer(t, bouncer, env)
	_, port, _ := net.SplitHostPort(addr)
	p := stack.Start(t, bins, env, "DB_HOST=127.0.0.1", "DB_PORT="+port, "DB_QUERY_EXEC_MODE=exec")

	admin := env.DB(t)
	call := callers(t, env)["client"]
	t.Run("routes", func(t *testing.T) { testRoutes(t, call, admin) })
	t.Run("queue routes", func(t *testing.T) { testQueueRoutes(t, env, p) })
	// Many client connections on one server connection: each statement
	// lands on whichever client connection the service's pool gives it
	// and PgBouncer's one server connection runs it; with prepared
	// statements (pgx's default) they collide ("prepared statement
	// already exists").
	t.Run("400 database calls at concurrency 32", func(t *testing.T) {
		client := env.Client(t)
		tag := testenv.Name("bouncer-")
		var wg sync.WaitGroup
		var failed atomic.Int32
		for w := range 32 {
			wg.Go(func() {
				for i := range 400 / 32 {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					var item map[string]any
					err := client.Call(ctx, "example-item.create", map[string]any{"string": fmt.Sprintf("%s%d-%d", tag, w, i), "integer": 1}, &item)
					if err == nil {
						err = client.Call(ctx, "example-item.read", item["_id"], &item)
					}
					cancel()
					if err != nil && failed.Add(1) <= 3 {
						t.Errorf("call through PgBouncer: %v", err)
					}
				}
			})
		}
		wg.Wait()
		if n := failed.Load(); n > 0 {
			t.Errorf("%d of %d create-and-read pairs failed", n, 32*(400/32))
		}
	})
}

// startPgBouncer runs PgBouncer (as the postgres user: it refuses root) in
// transaction pooling mode in front of the test database server, with one
// server connection per database and user, and returns its address.
func startPgBouncer(t *testing.T, bin string, env stack.Env) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgbouncer-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	pgHost, pgPort, _ := net.SplitHostPort(testenv.PostgresAddr())
	users := fmt.Sprintf("%q %q\n", env.Roles.App, env.Roles.AppPass)
	ini := fmt.Sprintf(`[databases]
%s = host=%s port=%s dbname=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %s
unix_socket_dir =
auth_type = md5
auth_file = %s
pool_mode = transaction
default_pool_size = 1
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
logfile = %s
pidfile = %s
`, env.Database, pgHost, pgPort, env.Database, port, filepath.Join(dir, "users.txt"),
		filepath.Join(dir, "pgbouncer.log"), filepath.Join(dir, "pgbouncer.pid"))
	for name, body := range map[string]string{"users.txt": users, "pgbouncer.ini": ini} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	cmd.SysProcAttr = stack.DieWithParent()
	if os.Geteuid() == 0 {
		pg, err := user.Lookup("postgres")
		if err != nil {
			t.Skip("pgbouncer refuses to run as root and there is no postgres user to run it as")
		}
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pgbouncer: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			t.Logf("pgbouncer's log:\n%s%s", log, out.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			t.Fatalf("pgbouncer does not listen on %s after 10 s: %v\n%s%s", addr, err, log, strings.TrimSpace(out.String()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
