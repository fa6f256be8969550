//go:build containers

package containers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"example.com/service/src/testenv"
)

// dev is an open devcontainer.
type dev struct {
	e         *engine
	p         *project
	cli       string // the devcontainer command
	wrappers  string // directory of the docker and compose shims
	project   string // its compose project
	container string
}

// devArgs are the flags every devcontainer command of the run takes: the
// workspace, and this machine's shims for docker and compose.
func (d *dev) devArgs() []string {
	return []string{
		"--workspace-folder", d.p.dir,
		"--docker-path", filepath.Join(d.wrappers, "docker"),
		"--docker-compose-path", filepath.Join(d.wrappers, "docker-compose"),
	}
}

func (d *dev) run(t *testing.T, timeout time.Duration, logName string, args ...string) (string, error) {
	t.Helper()
	env := []string{"CONTAINERS_CA_BUNDLE=" + d.p.caBundle}
	return d.e.cmdIn(t, d.p.dir, env, timeout, logName, d.cli, args...)
}

// devcontainer opens the project's devcontainer with the Dev Containers CLI,
// as VS Code's "Reopen in Container" and Codespaces do (`devcontainer up`),
// runs the e2e suite inside it (`devcontainer exec ... go tool task
// test:e2e`) and times a hot reload under `go tool task dev` there.
func devcontainer(t *testing.T, e *engine, p *project) {
	if t.Failed() || p == nil {
		return
	}
	d := &dev{e: e, p: p}
	step(t, "devcontainer: install the CLI ("+devcontainerCLI+")", func() { d.cli = installCLI(t, e) })
	if t.Failed() {
		return
	}
	d.wrappers = writeShims(t, e, p)
	t.Cleanup(func() { d.down(t) })

	step(t, "devcontainer: up", func() {
		out, err := d.run(t, 30*time.Minute, "devcontainer-up", append([]string{"up", "--log-format", "text"}, d.devArgs()...)...)
		if err != nil {
			t.Fatal(err)
		}
		// The last line is the outcome as JSON.
		lines := strings.Split(strings.TrimSpace(out), "\n")
		var res struct {
			Outcome            string `json:"outcome"`
			ContainerID        string `json:"containerId"`
			ComposeProjectName string `json:"composeProjectName"`
			RemoteUser         string `json:"remoteUser"`
		}
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil || res.Outcome != "success" {
			t.Fatalf("devcontainer up: outcome %q (%v):\n%s", res.Outcome, err, tail(out, 30))
		}
		d.project, d.container = res.ComposeProjectName, res.ContainerID
		note("devcontainer: compose project %s, remote user %s", d.project, res.RemoteUser)
	})
	if t.Failed() {
		return
	}
	step(t, "devcontainer: the dev user owns the workspace", func() {
		out := d.exec(t, 2*time.Minute, "devcontainer-exec", "sh", "-c", "id -un; touch tmp-owner-check && rm tmp-owner-check && echo writable; git status --porcelain | wc -l")
		if !strings.Contains(out, "dev") || !strings.Contains(out, "writable") {
			t.Errorf("inside the devcontainer: %s", out)
		}
	})
	step(t, "devcontainer: exec go tool task test:e2e", func() {
		// As a user types it: the devcontainer's environment names the
		// administrators the tests create their vhosts, databases and
		// roles as (BROKER_ADMIN_*, DB_ADMIN_*).
		out := d.exec(t, 25*time.Minute, "devcontainer-e2e", "go", "tool", "task", "test:e2e")
		if !strings.Contains(out, "ok  \texample.com/service/test\t") {
			t.Errorf("go tool task test:e2e in the devcontainer did not pass the e2e package:\n%s", tail(out, 30))
		}
		note("devcontainer e2e: %s", strings.Join(regexp.MustCompile(`(?m)^ok\s+\S+\s+\S+`).FindAllString(out, -1), "; "))
	})
	if t.Failed() {
		return
	}
	d.hotReload(t)
}

func (d *dev) exec(t *testing.T, timeout time.Duration, logName string, cmd ...string) string {
	t.Helper()
	out, err := d.run(t, timeout, logName, append(append([]string{"exec"}, d.devArgs()...), cmd...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// hotReload runs `go tool task dev` inside the devcontainer, edits
// hello_world's reply in src/lib.go on the host (the bind mount carries the
// change in), and times from the save to the first call answered with the
// new text. The caller runs inside the container (test/containers/call):
// the devcontainer publishes no ports.
func (d *dev) hotReload(t *testing.T) {
	step(t, "devcontainer: build the caller (test/containers/call)", func() {
		d.exec(t, 5*time.Minute, "devcontainer-reload", "go", "build", "-o", "/tmp/call", "./test/containers/call")
	})
	if t.Failed() {
		return
	}
	ctx, cancel := context.WithCancel(runCtx)
	defer cancel()
	var out bytes.Buffer
	c := exec.CommandContext(ctx, d.cli, append(append([]string{"exec"}, d.devArgs()...), "go", "tool", "task", "dev")...)
	c.Dir = d.p.dir
	c.Env = append(append(os.Environ(), d.e.env...), "CONTAINERS_CA_BUNDLE="+d.p.caBundle)
	c.Stdout, c.Stderr = &out, &out
	c.WaitDelay = 5 * time.Second
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = c.Wait()
		writeLog(d.e, "devcontainer-task-dev", out.String())
	}()
	step(t, "devcontainer: go tool task dev answers", func() {
		d.exec(t, 6*time.Minute, "devcontainer-reload", "/tmp/call", "-want", "Hello world!", "-timeout", "5m")
	})
	if t.Failed() {
		return
	}
	want := "Hello reload " + testenv.Name("") + "!"
	lib := filepath.Join(d.p.dir, "src", "lib.go")
	src, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(src, []byte(`"Hello world!"`)) {
		t.Fatal(`src/lib.go no longer holds "Hello world!"; update the hot-reload step`)
	}
	step(t, "devcontainer: hot reload (edit src/lib.go to the new reply)", func() {
		saved := time.Now()
		if err := os.WriteFile(lib, bytes.Replace(src, []byte(`"Hello world!"`), []byte(strconv.Quote(want)), 1), 0o644); err != nil {
			t.Fatal(err)
		}
		res := d.exec(t, 3*time.Minute, "devcontainer-reload", "/tmp/call", "-want", want, "-since", strconv.FormatInt(saved.UnixMilli(), 10), "-timeout", "2m")
		m := regexp.MustCompile(`after ([0-9.]+) s`).FindStringSubmatch(res)
		if m == nil {
			t.Fatalf("the caller printed %q", res)
		}
		note("hot reload in the devcontainer: %s s from saving src/lib.go to the new reply", m[1])
	})
}

// down removes the devcontainer's compose project with its volumes, and
// checks that nothing of it is left.
func (d *dev) down(t *testing.T) {
	if d.project == "" {
		// up failed before it said: find the project by the CLI's label.
		out, _ := d.e.dockerCmd(t, time.Minute, "devcontainer-down", "ps", "--all", "--filter", "label=devcontainer.local_folder="+d.p.dir,
			"--format", `{{index .Labels "com.docker.compose.project"}}`)
		d.project = strings.TrimSpace(strings.Split(out, "\n")[0])
		if d.project == "" {
			return
		}
	}
	start := time.Now()
	_, err := d.e.composeCmd(t, d.p.dir, nil, 3*time.Minute, "devcontainer-down", "--project-name", d.project, "down", "--volumes", "--remove-orphans", "--timeout", "5")
	label := "label=com.docker.compose.project=" + d.project
	left := ""
	for _, what := range [][]string{{"ps", "--all", "--quiet"}, {"network", "ls", "--quiet"}, {"volume", "ls", "--quiet"}} {
		out, _ := d.e.dockerCmd(t, time.Minute, "devcontainer-down", append(what, "--filter", label)...)
		left += strings.TrimSpace(out)
	}
	if err != nil || left != "" {
		t.Errorf("devcontainer down: %v; left behind: %q", err, left)
	}
	fmt.Fprintf(os.Stderr, "[containers] %-58s %8.1f s  ok\n", "devcontainer: down --volumes", time.Since(start).Seconds())
}

// installCLI installs the Dev Containers CLI from npm into CONTAINERS_ROOT
// once and returns its path.
func installCLI(t *testing.T, e *engine) string {
	prefix := filepath.Join(e.root, "npm")
	bin := filepath.Join(prefix, "node_modules", ".bin", "devcontainer")
	if out, err := e.cmd(t, time.Minute, "devcontainer-cli", bin, "--version"); err == nil && "@devcontainers/cli@"+strings.TrimSpace(out) == devcontainerCLI {
		note("devcontainer CLI %s: cached", strings.TrimSpace(out))
		return bin
	}
	if _, err := exec.LookPath("npm"); err != nil {
		t.Fatal("npm is not installed: the Dev Containers CLI comes from the npm registry (apt-get install nodejs npm)")
	}
	e.must(t, 10*time.Minute, "devcontainer-cli", "npm", "install", "--prefix", prefix, "--no-audit", "--no-fund", "--loglevel=error", devcontainerCLI)
	return bin
}

// writeShims writes the docker and compose commands the CLI calls here:
// the same tools plus what only this machine needs. docker adds the host's
// network to builds (the engine has no default bridge; the CLI builds an
// image to give the dev user the host user's uid); compose adds
// machine.compose.yaml after the devcontainer's own files.
func writeShims(t *testing.T, e *engine, p *project) string {
	dir := filepath.Join(e.logs, "shims")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var env strings.Builder
	for _, kv := range e.env {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&env, "export %s=%s\n", k, shellQuote(v))
	}
	docker := fmt.Sprintf(`#!/bin/sh
# docker for the devcontainer CLI on this machine: builds on the host network.
%sif [ "$1" = build ]; then shift; exec %s build --network host "$@"; fi
exec %s "$@"
`, env.String(), shellQuote(e.docker), shellQuote(e.docker))
	var compose strings.Builder
	for _, a := range e.compose {
		compose.WriteString(shellQuote(a) + " ")
	}
	composeShim := fmt.Sprintf(`#!/bin/bash
# docker compose for the devcontainer CLI on this machine: the CLI's compose
# files, then machine.compose.yaml.
%sargs=("$@")
last=-1
for i in "${!args[@]}"; do
  if [ "${args[$i]}" = -f ]; then last=$((i + 1)); fi
done
if [ "$last" -ge 0 ]; then
  args=("${args[@]:0:$((last + 1))}" -f %s "${args[@]:$((last + 1))}")
fi
exec %s"${args[@]}"
`, env.String(), shellQuote(p.machine), compose.String())
	for name, body := range map[string]string{"docker": docker, "docker-compose": composeShim} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
