package workspace_test

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"mvdan.cc/sh/v3/syntax"
)

// dockerfile is a Dockerfile as BuildKit reads it: its stages and the ARGs
// before the first FROM.
type dockerfile struct {
	stages   []instructions.Stage
	metaArgs map[string]string
}

func parseDockerfile(tb testing.TB, path string) dockerfile {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatalf("open Dockerfile: %v", err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		tb.Fatalf("parse %s with BuildKit: %v", path, err)
	}
	for _, w := range res.Warnings {
		tb.Errorf("%s: BuildKit parser warning: %s", path, w.Short)
	}
	stages, metaArgs, err := instructions.Parse(res.AST, &linter.Linter{})
	if err != nil {
		tb.Fatalf("parse the instructions of %s: %v", path, err)
	}
	d := dockerfile{stages: stages, metaArgs: map[string]string{}}
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			if kv.Value != nil {
				d.metaArgs[kv.Key] = *kv.Value
			}
		}
	}
	return d
}

func stagesByName(d dockerfile) map[string]instructions.Stage {
	m := map[string]instructions.Stage{}
	for _, s := range d.stages {
		m[s.Name] = s
	}
	return m
}

// commands returns the stage's commands of type T, RUN mounts expanded.
func commands[T instructions.Command](tb testing.TB, s instructions.Stage) []T {
	tb.Helper()
	var out []T
	for _, c := range s.Commands {
		if run, ok := c.(*instructions.RunCommand); ok {
			if err := run.Expand(func(w string) (string, error) { return w, nil }); err != nil {
				tb.Fatalf("stage %s: expand %q: %v", s.Name, run.String(), err)
			}
		}
		if t, ok := c.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

func TestDockerfileStages(t *testing.T) {
	dir := root(t)
	d := parseDockerfile(t, filepath.Join(dir, "Dockerfile"))
	var names []string
	for _, s := range d.stages {
		names = append(names, s.Name)
	}
	// runtime last: a plain `docker build .` builds the production image.
	if want := []string{"dev", "build", "runtime"}; !slices.Equal(names, want) {
		t.Fatalf("Dockerfile stages = %v, want %v", names, want)
	}

	// The Go image matches go.mod's go directive.
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var goDirective string
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "go "); ok {
			goDirective = strings.TrimSpace(v)
		}
	}
	if goDirective == "" {
		t.Fatal("go.mod has no go directive")
	}
	goVersion := d.metaArgs["GO_VERSION"]
	if goVersion == "" || !strings.HasPrefix(goDirective+".", goVersion+".") {
		t.Errorf("ARG GO_VERSION = %q, want a prefix of go.mod's go %s", goVersion, goDirective)
	}
	for _, name := range []string{"dev", "build"} {
		if base := stagesByName(d)[name].BaseName; base != "golang:${GO_VERSION}" {
			t.Errorf("stage %s is FROM %q, want golang:${GO_VERSION}", name, base)
		}
	}
}

func TestDockerfileDevStage(t *testing.T) {
	d := parseDockerfile(t, filepath.Join(root(t), "Dockerfile"))
	dev := stagesByName(d)["dev"]
	var script string
	for _, run := range commands[*instructions.RunCommand](t, dev) {
		script += strings.Join(run.CmdLine, " ") + "\n"
	}
	// The tools of go.mod are built into the image.
	for _, want := range []string{"go mod download", "go install tool", "go tool task", "go tool air"} {
		if !strings.Contains(script, want) {
			t.Errorf("dev stage does not run %q; its RUN lines:\n%s", want, script)
		}
	}
	users := commands[*instructions.UserCommand](t, dev)
	if len(users) == 0 || isRoot(users[len(users)-1].User) {
		t.Errorf("dev stage runs as root; want a user matching the devcontainer's remoteUser")
	}
}

func TestDockerfileBuildStage(t *testing.T) {
	d := parseDockerfile(t, filepath.Join(root(t), "Dockerfile"))
	build := stagesByName(d)["build"]
	var gobuild *goBuild
	var mounts []string
	for _, run := range commands[*instructions.RunCommand](t, build) {
		if g := parseGoBuild(t, strings.Join(run.CmdLine, " ")); g != nil {
			gobuild = g
			for _, m := range instructions.GetMounts(run) {
				mounts = append(mounts, string(m.Type)+":"+m.Target)
			}
		}
	}
	if gobuild == nil {
		t.Fatal("build stage has no RUN go build")
	}
	if gobuild.env["CGO_ENABLED"] != "0" {
		t.Errorf("go build runs with CGO_ENABLED=%q, want 0 (a static binary for scratch)", gobuild.env["CGO_ENABLED"])
	}
	if !slices.Contains(gobuild.args, "-trimpath") {
		t.Errorf("go build %q lacks -trimpath", gobuild.args)
	}
	if i := slices.Index(gobuild.args, "-ldflags"); i < 0 || i+1 >= len(gobuild.args) || gobuild.args[i+1] != "-s -w" {
		t.Errorf(`go build %q lacks -ldflags "-s -w"`, gobuild.args)
	}
	if gobuild.args[len(gobuild.args)-1] != "./src" {
		t.Errorf("go build %q does not build ./src", gobuild.args)
	}
	for _, want := range []string{"cache:/go/pkg/mod", "cache:/root/.cache/go-build"} {
		if !slices.Contains(mounts, want) {
			t.Errorf("go build RUN mounts %v, want %s", mounts, want)
		}
	}
}

func TestDockerfileRuntimeStage(t *testing.T) {
	d := parseDockerfile(t, filepath.Join(root(t), "Dockerfile"))
	rt := d.stages[len(d.stages)-1]
	if rt.BaseName != "scratch" && !strings.Contains(rt.BaseName, "distroless/static") {
		t.Errorf("runtime stage is FROM %q, want scratch or distroless static", rt.BaseName)
	}

	// The binary of the build stage, run as the entrypoint.
	var binary string
	for _, c := range commands[*instructions.CopyCommand](t, rt) {
		if c.From == "build" && slices.Contains(c.SourcePaths, "/out/service") {
			binary = c.DestPath
		}
	}
	if binary == "" {
		t.Fatal("runtime stage does not COPY --from=build /out/service")
	}
	eps := commands[*instructions.EntrypointCommand](t, rt)
	if len(eps) != 1 || eps[0].PrependShell || !slices.Equal(eps[0].CmdLine, []string{binary}) {
		t.Errorf("runtime ENTRYPOINT = %+v, want exec form [%q]", eps, binary)
	}

	// Not root.
	users := commands[*instructions.UserCommand](t, rt)
	if len(users) == 0 {
		t.Fatal("runtime stage has no USER: it would run as root")
	}
	if u := users[len(users)-1].User; isRoot(u) {
		t.Errorf("runtime USER %q is root", u)
	}

	// HEALTHCHECK with the binary's own healthcheck mode, exec form (scratch
	// has no shell).
	hcs := commands[*instructions.HealthCheckCommand](t, rt)
	if len(hcs) != 1 {
		t.Fatalf("runtime stage has %d HEALTHCHECK instructions, want 1", len(hcs))
	}
	hc := hcs[0].Health
	if want := []string{"CMD", binary, "healthcheck"}; !slices.Equal(hc.Test, want) {
		t.Errorf("runtime HEALTHCHECK test = %q, want %q", hc.Test, want)
	}
	if hc.Interval <= 0 || hc.Timeout <= 0 || hc.Retries <= 0 {
		t.Errorf("runtime HEALTHCHECK interval/timeout/retries = %v/%v/%d, want all set", hc.Interval, hc.Timeout, hc.Retries)
	}
}

// isRoot reports whether a USER value (name or uid, optionally :group)
// means root.
func isRoot(user string) bool {
	name, _, _ := strings.Cut(user, ":")
	if uid, err := strconv.Atoi(name); err == nil {
		return uid == 0
	}
	return name == "" || name == "root"
}

// goBuild is one `go build` command line: its environment assignments and
// arguments after "build".
type goBuild struct {
	env  map[string]string
	args []string
}

// parseGoBuild finds a `[VAR=x ...] go build ...` call in a shell command.
func parseGoBuild(tb testing.TB, script string) *goBuild {
	tb.Helper()
	f, err := syntax.NewParser().Parse(strings.NewReader(script), "")
	if err != nil {
		tb.Fatalf("parse RUN %q as shell: %v", script, err)
	}
	var found *goBuild
	syntax.Walk(f, func(n syntax.Node) bool {
		call, ok := n.(*syntax.CallExpr)
		if !ok || len(call.Args) < 2 {
			return true
		}
		words := make([]string, len(call.Args))
		for i, w := range call.Args {
			words[i] = unquote(w)
		}
		if words[0] != "go" || words[1] != "build" {
			return true
		}
		g := &goBuild{env: map[string]string{}, args: words[2:]}
		for _, a := range call.Assigns {
			g.env[a.Name.Value] = unquote(a.Value)
		}
		found = g
		return false
	})
	return found
}

// unquote returns a shell word's literal value with quotes removed.
func unquote(w *syntax.Word) string {
	if w == nil {
		return ""
	}
	var b strings.Builder
	for _, part := range w.Parts {
		switch p := part.(type) {
		case *syntax.Lit:
			b.WriteString(p.Value)
		case *syntax.SglQuoted:
			b.WriteString(p.Value)
		case *syntax.DblQuoted:
			for _, q := range p.Parts {
				if lit, ok := q.(*syntax.Lit); ok {
					b.WriteString(lit.Value)
				}
			}
		}
	}
	return b.String()
}

// TestDockerfileBuildsBehindAProxy: no `# syntax=` directive (BuildKit would
// fetch that frontend from a registry before building anything; the
// built-in one has every feature used here), and each RUN that downloads
// modules mounts the optional ca-certificates secret and trusts it, so
// `docker build --secret id=ca-certificates,src=...` works behind a proxy
// that re-signs TLS.
func TestDockerfileBuildsBehindAProxy(t *testing.T) {
	path := filepath.Join(root(t), "Dockerfile")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "#") {
			break // directives only come before the first instruction
		}
		if k, _, ok := strings.Cut(strings.TrimSpace(strings.TrimPrefix(line, "#")), "="); ok && strings.EqualFold(strings.TrimSpace(k), "syntax") {
			t.Errorf("Dockerfile has the parser directive %q: every build would fetch that frontend from a registry", line)
		}
	}
	d := parseDockerfile(t, path)
	for _, name := range []string{"dev", "build"} {
		found := false
		for _, run := range commands[*instructions.RunCommand](t, stagesByName(d)[name]) {
			script := strings.Join(run.CmdLine, " ")
			if !strings.Contains(script, "go mod download") && !strings.Contains(script, "go build") {
				continue
			}
			found = true
			secret := false
			for _, m := range instructions.GetMounts(run) {
				// BuildKit's parser keeps a secret's id in CacheID.
				if m.Type == instructions.MountTypeSecret && (m.CacheID == "ca-certificates" || m.Target == "/run/secrets/ca-certificates") {
					secret = true
				}
			}
			if !secret || !strings.Contains(script, "SSL_CERT_FILE=/run/secrets/ca-certificates") {
				t.Errorf("stage %s: %q does not mount the ca-certificates secret and trust it (SSL_CERT_FILE)", name, script)
			}
		}
		if !found {
			t.Errorf("stage %s downloads no modules; update this test", name)
		}
	}
}
