//go:build containers

package containers_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// project is the copy of the repository the run works on, made like a
// user's clone: the files git knows (tracked, or untracked and not ignored,
// as they are in the work tree), committed into a fresh repository, so
// builds stamp VCS information as they would for a user and nothing the run
// does (Air's tmp/, a hot-reload edit) touches the real work tree.
type project struct {
	dir      string
	caBundle string // the host's CA bundle, passed to builds as a secret ("" when none)
	runtime  string // the runtime image built from it
	machine  string // machine.compose.yaml
	ports    string // machine.ports.compose.yaml
	uid, gid int    // the owner of dir: the "user" of this run
}

// The tags the run gives the images it builds from the project.
const (
	runtimeImage = "service-containers/runtime:test"
	devImage     = "service-containers/dev:test"
)

func copyProject(t *testing.T, e *engine) *project {
	if t.Failed() {
		return nil
	}
	root := moduleRoot(t)
	p := &project{
		machine: filepath.Join(root, "test", "containers", "machine.compose.yaml"),
		ports:   filepath.Join(root, "test", "containers", "machine.ports.compose.yaml"),
		// The uid of the Dockerfile's dev user: the checkout is the user's,
		// and the dev user must own it (Air writes tmp/, git reads .git).
		uid: 1000, gid: 1000,
	}
	for _, f := range []string{os.Getenv("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"} {
		if f != "" {
			if st, err := os.Stat(f); err == nil && st.Size() > 0 {
				p.caBundle = f
				break
			}
		}
	}
	step(t, "project: copy the work tree into a fresh git repository", func() {
		dir, err := os.MkdirTemp("", "service-containers-")
		if err != nil {
			t.Fatal(err)
		}
		// Containers mount it as another user: it must be reachable.
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		p.dir = dir
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		list := e.must(t, time.Minute, "project", "git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
		for _, rel := range strings.Split(strings.TrimRight(list, "\x00"), "\x00") {
			src := filepath.Join(root, rel)
			st, err := os.Lstat(src)
			if err != nil || !st.Mode().IsRegular() {
				continue // deleted in the work tree, or a link
			}
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(dir, rel)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, st.Mode().Perm()); err != nil {
				t.Fatal(err)
			}
		}
		git := []string{"-C", dir, "-c", "user.name=containers", "-c", "user.email=containers@example.com", "-c", "init.defaultBranch=main"}
		e.must(t, time.Minute, "project", "git", append(git, "init", "-q")...)
		e.must(t, time.Minute, "project", "git", append(git, "add", "-A")...)
		e.must(t, time.Minute, "project", "git", append(git, "commit", "-q", "-m", "snapshot for the container tests")...)
		chownTree(t, dir, p.uid, p.gid)
	})
	return p
}

// chownTree gives dir and everything in it to uid:gid.
func chownTree(t *testing.T, dir string, uid, gid int) {
	t.Helper()
	err := filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
	if err != nil {
		t.Fatalf("chown %s to %d:%d: %v", dir, uid, gid, err)
	}
}

// buildArgs are what this machine adds to a user's `docker build .`: the
// host's network and the CA bundle as the secret the Dockerfile accepts.
func (p *project) buildArgs() []string {
	args := []string{"build", "--network", "host"}
	if p.caBundle != "" {
		args = append(args, "--secret", "id=ca-certificates,src="+p.caBundle)
	}
	return args
}

// buildImages builds the Dockerfile as a user does: `docker build .` (the
// runtime stage, the last) and `docker build --target dev .`.
func buildImages(t *testing.T, e *engine, p *project) {
	if t.Failed() || p == nil {
		return
	}
	step(t, "build: docker build . (runtime stage)", func() {
		e.must(t, 20*time.Minute, "build-runtime", e.docker, append(p.buildArgs(), "-t", runtimeImage, p.dir)...)
		p.runtime = runtimeImage
	})
	if t.Failed() {
		return
	}
	var cfg struct {
		Size   int64
		Config struct {
			User        string
			Entrypoint  []string
			Healthcheck *struct{ Test []string }
			Env         []string
		}
	}
	out := e.mustDocker(t, 30*time.Second, "build-runtime", "image", "inspect", "--format", "{{json .}}", runtimeImage)
	if err := json.Unmarshal([]byte(out), &cfg); err != nil {
		t.Fatalf("docker image inspect %s: %v", runtimeImage, err)
	}
	var health []string
	if cfg.Config.Healthcheck != nil {
		health = cfg.Config.Healthcheck.Test
	}
	note("runtime image: %.1f MB (%d bytes), user %q, entrypoint %q, healthcheck %q",
		float64(cfg.Size)/1e6, cfg.Size, cfg.Config.User, cfg.Config.Entrypoint, health)
	if uid, _, _ := strings.Cut(cfg.Config.User, ":"); uid == "" || uid == "0" || uid == "root" {
		t.Errorf("the runtime image runs as %q: root", cfg.Config.User)
	}
	if cfg.Config.Healthcheck == nil || len(cfg.Config.Healthcheck.Test) == 0 {
		t.Error("the runtime image has no HEALTHCHECK")
	}
	if cfg.Size > 50e6 {
		t.Errorf("the runtime image is %d bytes; a static binary on scratch should be well under 50 MB", cfg.Size)
	}

	step(t, "build: docker build --target dev .", func() {
		e.must(t, 30*time.Minute, "build-dev", e.docker, append(p.buildArgs(), "--target", "dev", "-t", devImage, p.dir)...)
	})
	if t.Failed() {
		return
	}
	out = e.mustDocker(t, 30*time.Second, "build-dev", "image", "inspect", "--format", "{{.Size}} {{.Config.User}}", devImage)
	size, user, _ := strings.Cut(strings.TrimSpace(out), " ")
	n, _ := strconv.ParseInt(size, 10, 64)
	note("dev image: %.2f GB, user %q", float64(n)/1e9, user)
	// The tools are built into it: task and air answer at once, offline.
	out = e.mustDocker(t, 2*time.Minute, "build-dev", "run", "--rm", "--network", "none", devImage, "sh", "-c", "go tool task --version && go tool air -v")
	if !strings.Contains(out, "3.") {
		t.Errorf("go tool task --version in the dev image printed %q", out)
	}
}
