//go:build containers

package containers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tools the run installs, pinned.
const (
	composeModule   = "github.com/docker/compose/v2"
	composeVersion  = "v2.35.1" // the first that has !reset and !override is 2.24
	devcontainerCLI = "@devcontainers/cli@0.89.0"
)

var runCtx, cancelAll = context.WithCancel(context.Background())

// engine is the Docker engine the run uses and how to reach it.
type engine struct {
	root    string   // CONTAINERS_ROOT: data root, tools, logs
	logs    string   // this run's log directory
	docker  string   // the docker client
	compose []string // the compose command: [docker compose] or [docker-compose]
	env     []string // DOCKER_HOST and friends, for every docker command
	own     bool     // started by this run (and stopped at its end)
	version string   // the engine's version
	major   int
}

// cmd runs one command with the engine's environment, bounded by timeout and
// by the run's budget, and returns its combined output. Its output also goes
// to the run's log file for the step (logName).
func (e *engine) cmd(t *testing.T, timeout time.Duration, logName string, name string, args ...string) (string, error) {
	t.Helper()
	return e.cmdIn(t, "", nil, timeout, logName, name, args...)
}

func (e *engine) cmdIn(t *testing.T, dir string, extraEnv []string, timeout time.Duration, logName string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(runCtx, timeout)
	defer cancel()
	c := exec.CommandContext(ctx, name, args...)
	c.Dir = dir
	c.Env = append(append(os.Environ(), e.env...), extraEnv...)
	c.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	var w io.Writer = &out
	if e.logs != "" && logName != "" {
		// The log grows as the command runs: `tail -f` shows a long build.
		if f, err := os.OpenFile(filepath.Join(e.logs, logName+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
			defer f.Close()
			fmt.Fprintf(f, "$ %s %s\n", name, strings.Join(args, " "))
			w = io.MultiWriter(&out, f)
		}
	}
	c.Stdout, c.Stderr = w, w
	err := c.Run()
	if ctx.Err() == context.DeadlineExceeded {
		return out.String(), fmt.Errorf("%s %s: still running after %s: %w", name, strings.Join(args, " "), timeout, ctx.Err())
	}
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(out.String(), 40))
	}
	return out.String(), nil
}

// must is cmd that fails the test on error.
func (e *engine) must(t *testing.T, timeout time.Duration, logName string, name string, args ...string) string {
	t.Helper()
	out, err := e.cmd(t, timeout, logName, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// dockerCmd runs the docker client.
func (e *engine) dockerCmd(t *testing.T, timeout time.Duration, logName string, args ...string) (string, error) {
	t.Helper()
	return e.cmd(t, timeout, logName, e.docker, args...)
}

func (e *engine) mustDocker(t *testing.T, timeout time.Duration, logName string, args ...string) string {
	t.Helper()
	return e.must(t, timeout, logName, e.docker, args...)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// setUpEngine finds a running engine or installs and starts one of its own,
// then makes sure compose v2 and the Dev Containers CLI are there.
func setUpEngine(t *testing.T) *engine {
	e := &engine{root: envOr("CONTAINERS_ROOT", "/var/lib/service-containers")}
	if err := os.MkdirAll(e.root, 0o755); err != nil {
		t.Fatalf("create %s (CONTAINERS_ROOT): %v; run as root, or set CONTAINERS_ROOT to a writable directory", e.root, err)
	}
	lockRun(t)
	e.logs = filepath.Join(e.root, "logs", time.Now().UTC().Format("20060102T150405Z"))
	if err := os.MkdirAll(e.logs, 0o755); err != nil {
		t.Fatal(err)
	}
	note("logs of this run: %s", e.logs)
	pruneOldLogs(filepath.Join(e.root, "logs"), 10)

	step(t, "engine: find or start a Docker engine", func() {
		if e.useRunning(t) {
			return
		}
		e.startOwn(t)
	})
	if t.Failed() {
		return e
	}
	note("engine: Docker %s (%s)", e.version, map[bool]string{true: "started by this run", false: "already running"}[e.own])
	step(t, "engine: compose v2 ("+composeVersion+")", func() { e.setUpCompose(t) })
	return e
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// runLock is one file per machine, whatever CONTAINERS_ROOT says: runs
// with different roots still share /run/service-containers (the own
// engine's socket and pid file), the user's engine, the image tags, the
// compose project and the published ports.
var runLock = filepath.Join(os.TempDir(), "service-containers.lock")

// lockRun keeps two runs on one machine apart (test:containers,
// containers:prepare, with any CONTAINERS_ROOT): one would adopt or stop
// the other's engine.
func lockRun(t *testing.T) {
	f, err := os.OpenFile(runLock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := 0; syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil; i++ {
		if i == 0 {
			fmt.Fprintf(os.Stderr, "[containers] another run (test:containers or containers:prepare) holds %s: waiting for it\n", f.Name())
		}
		if time.Since(start) > 30*time.Minute {
			t.Fatalf("another container test run holds %s for more than 30 min", f.Name())
		}
		select {
		case <-runCtx.Done():
			t.Fatalf("stopped while waiting for %s", f.Name())
		case <-time.After(5 * time.Second):
		}
	}
	if waited := time.Since(start); waited > time.Second {
		note("waited %.0f s for another run to release %s", waited.Seconds(), f.Name())
	}
	t.Cleanup(func() { _ = f.Close() })
}

func pruneOldLogs(dir string, keep int) {
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) <= keep {
		return
	}
	for _, en := range entries[:len(entries)-keep] {
		_ = os.RemoveAll(filepath.Join(dir, en.Name()))
	}
}

// useRunning adopts an engine that already answers: the user's
// (DOCKER_HOST or the default socket), or this harness's own left by a run
// that was killed.
func (e *engine) useRunning(t *testing.T) bool {
	own := "unix://" + ownSocket
	if _, err := os.Stat(ownSocket); err == nil && e.probe(t, "/usr/bin/docker", own) {
		e.own = true // a killed run's: stop it at the end like ours
		b, _ := os.ReadFile(filepath.Join(ownRun, "dockerd.pid"))
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		e.stopAtEnd(t, pid)
		return true
	}
	if os.Getenv("CONTAINERS_OWN_ENGINE") == "1" {
		return false
	}
	client, err := exec.LookPath("docker")
	if err != nil {
		return false
	}
	return e.probe(t, client, os.Getenv("DOCKER_HOST"))
}

// probe checks that the engine at host answers client and records both.
func (e *engine) probe(t *testing.T, client, host string) bool {
	env := []string{"DOCKER_BUILDKIT=1"}
	if host != "" {
		env = append(env, "DOCKER_HOST="+host)
	}
	saved := e.env
	e.env = env
	out, err := e.cmd(t, 20*time.Second, "engine", client, "version", "--format", "{{.Server.Version}}")
	if err != nil {
		e.env = saved
		return false
	}
	e.docker = client
	e.version = strings.TrimSpace(out)
	e.major, _ = strconv.Atoi(strings.SplitN(e.version, ".", 2)[0])
	return true
}

const (
	ownRun    = "/run/service-containers"
	ownSocket = ownRun + "/docker.sock"
)

// startOwn installs Debian's engine where it is missing and starts a daemon
// with its own data root, exec root and socket: no default bridge and no
// iptables rules (containers get the networks compose creates, which reach
// nothing beyond this machine); builds use the host's network.
func (e *engine) startOwn(t *testing.T) {
	if _, err := exec.LookPath("dockerd"); err != nil {
		if os.Geteuid() != 0 {
			t.Fatal("no Docker engine answers and dockerd is not installed; run as root (to install Docker from Debian's packages) or start Docker and set DOCKER_HOST")
		}
		aptInstall(t, e, "docker.io", "containerd", "runc")
	}
	// Debian's client: the one that matches the engine and uses BuildKit
	// with DOCKER_BUILDKIT=1 (a newer client without the buildx plugin
	// falls back to the legacy builder, which refuses RUN --mount).
	client := "/usr/bin/docker"
	if _, err := os.Stat(client); err != nil {
		t.Fatalf("dockerd is installed but %s is not: install Docker from Debian's packages", client)
	}
	if err := os.MkdirAll(ownRun, 0o755); err != nil {
		t.Fatal(err)
	}
	unmountNetns()
	logf, err := os.OpenFile(filepath.Join(e.logs, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	d := exec.Command("dockerd",
		"--data-root", filepath.Join(e.root, "docker"),
		"--exec-root", filepath.Join(ownRun, "exec"),
		"--pidfile", filepath.Join(ownRun, "dockerd.pid"),
		"--host", "unix://"+ownSocket,
		"--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false",
	)
	d.Stdout, d.Stderr = logf, logf
	d.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.Start(); err != nil {
		t.Fatalf("start dockerd: %v", err)
	}
	go func() { _ = d.Wait(); _ = logf.Close() }()
	e.own = true
	e.stopAtEnd(t, d.Process.Pid)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		if e.probe(t, client, "unix://"+ownSocket) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd did not answer on %s within 60 s; its log: %s\n%s", ownSocket, logf.Name(), tailFile(logf.Name(), 30))
		}
	}
}

// stopAtEnd stops the run's own daemon, process pid (the one it started or
// adopted), when the test ends, however it ends: SIGTERM, up to 60 s, then
// SIGKILL; then the mount it leaves behind. A pid of 0 (an adopted daemon
// without a pid file) is left running, with a note.
func (e *engine) stopAtEnd(t *testing.T, pid int) {
	t.Cleanup(func() {
		start := time.Now()
		if pid <= 0 {
			note("engine: the daemon on %s wrote no pid file to %s: left running", ownSocket, ownRun)
			return
		}
		_ = syscall.Kill(pid, syscall.SIGTERM)
		for deadline := time.Now().Add(60 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "[containers] dockerd (pid %d) still running 60 s after SIGTERM: killing it\n", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		unmountNetns()
		_ = os.RemoveAll(ownRun)
		fmt.Fprintf(os.Stderr, "[containers] %-58s %8.1f s  ok\n", "engine: stop dockerd", time.Since(start).Seconds())
	})
}

// unmountNetns removes the namespace mount a stopped dockerd leaves.
func unmountNetns() {
	_ = syscall.Unmount(filepath.Join(ownRun, "exec", "netns", "default"), syscall.MNT_DETACH)
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	return tail(string(b), n)
}

func aptInstall(t *testing.T, e *engine, pkgs ...string) {
	t.Helper()
	env := []string{"DEBIAN_FRONTEND=noninteractive"}
	if _, err := e.cmdIn(t, "", env, 10*time.Minute, "apt", "apt-get", "update", "-q"); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"install", "-y", "-q", "--no-install-recommends"}, pkgs...)
	if _, err := e.cmdIn(t, "", env, 15*time.Minute, "apt", "apt-get", args...); err != nil {
		t.Fatal(err)
	}
}

// setUpCompose finds compose v2 (2.24 or later: the devcontainer override
// uses !reset) or builds it from the Go module proxy into CONTAINERS_ROOT
// (Debian has only 1.29). `go install` refuses compose's module (its go.mod
// has exclude lines), so it is built inside its module directory.
func (e *engine) setUpCompose(t *testing.T) {
	if out, err := e.dockerCmd(t, 30*time.Second, "compose", "compose", "version", "--short"); err == nil && composeAtLeast(strings.TrimSpace(out), 2, 24) {
		e.compose = []string{e.docker, "compose"}
		note("compose: the engine's own plugin %s", strings.TrimSpace(out))
		return
	}
	bin := filepath.Join(e.root, "bin", "docker-compose-"+composeVersion)
	if _, err := os.Stat(bin); err != nil {
		out, err := e.cmdIn(t, "", []string{"GOFLAGS=-mod=mod"}, 10*time.Minute, "compose-build", "go", "mod", "download", "-json", composeModule+"@"+composeVersion)
		if err != nil {
			t.Fatal(err)
		}
		var mod struct{ Dir string }
		if err := json.Unmarshal([]byte(out), &mod); err != nil || mod.Dir == "" {
			t.Fatalf("go mod download %s@%s: no module directory in %q", composeModule, composeVersion, out)
		}
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			t.Fatal(err)
		}
		env := []string{"GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false", "CGO_ENABLED=0"}
		if _, err := e.cmdIn(t, mod.Dir, env, 30*time.Minute, "compose-build", "go", "build", "-trimpath",
			"-ldflags", "-s -w -X "+composeModule+"/internal.Version="+composeVersion,
			"-o", bin+".tmp", "./cmd"); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(bin+".tmp", bin); err != nil {
			t.Fatal(err)
		}
		note("compose: built %s from the module proxy", composeVersion)
	}
	e.compose = []string{bin}
}

// composeAtLeast reports whether a version like "2.29.1" or "v2.29.1-desktop.1"
// is at least major.minor.
func composeAtLeast(v string, major, minor int) bool {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

// composeCmd runs compose with the given files in dir.
func (e *engine) composeCmd(t *testing.T, dir string, env []string, timeout time.Duration, logName string, args ...string) (string, error) {
	t.Helper()
	full := append(append([]string{}, e.compose[1:]...), args...)
	return e.cmdIn(t, dir, env, timeout, logName, e.compose[0], full...)
}
