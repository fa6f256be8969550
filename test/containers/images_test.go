//go:build containers

package containers_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
)

// recipeLabel marks a stand-in image with the hash of what it was made from;
// an image whose label differs from the current recipe is made again.
const recipeLabel = "example.com.service.containers.recipe"

// baseImage is the Debian the stand-ins are made from (mmdebstrap, minbase).
const baseImage = "debian:bookworm"

// makeBaseImages makes the images the project's files name, where the engine
// cannot pull them: on the run's own engine (no registry), from Debian's
// packages. An engine that was running already is the user's: it pulls the
// official images itself, and nothing is tagged over them.
func makeBaseImages(t *testing.T, e *engine) {
	if t.Failed() {
		return
	}
	if !e.own {
		note("base images: the engine pulls the official ones (not this run's engine)")
		return
	}
	root := moduleRoot(t)
	goTag := goImageTag(t, root)
	rabbitTag, postgresTag := composeImages(t, root)
	images := filepath.Join(root, "test", "containers", "images")

	step(t, "base image "+baseImage+" (mmdebstrap)", func() { makeDebian(t, e) })
	if t.Failed() {
		return
	}
	goroot := strings.TrimSpace(e.must(t, time.Minute, "images", "go", "env", "GOROOT"))
	goversion := strings.TrimSpace(e.must(t, time.Minute, "images", "go", "env", "GOVERSION"))
	for _, img := range []struct {
		tag, dockerfile, context, extra string
	}{
		{goTag, "go.Dockerfile", goroot, goversion},
		{rabbitTag, "rabbitmq.Dockerfile", images, ""},
		{postgresTag, "postgres.Dockerfile", images, ""},
	} {
		step(t, "base image "+img.tag, func() {
			inputs := []string{filepath.Join(images, img.dockerfile)}
			if img.context == images {
				inputs = append(inputs, filepath.Join(images, "postgres-entrypoint.sh"))
			}
			recipe := hashFiles(t, inputs...) + imageID(t, e, baseImage) + img.extra
			if labelOf(t, e, img.tag) == recipe {
				note("%s: cached", img.tag)
				return
			}
			e.mustDocker(t, 20*time.Minute, "images", "build", "--network", "host",
				"--label", recipeLabel+"="+recipe,
				"-f", filepath.Join(images, img.dockerfile), "-t", img.tag, img.context)
		})
		if t.Failed() {
			return
		}
	}
}

// makeDebian imports a minimal bookworm, made by mmdebstrap with dpkg's
// unsafe-io (as Debian's official images have it: apt steps in builds are
// ten times faster on this disk).
func makeDebian(t *testing.T, e *engine) {
	const recipe = "mmdebstrap --variant=minbase --include=ca-certificates --dpkgopt=force-unsafe-io bookworm v1"
	sum := sha256.Sum256([]byte(recipe))
	want := hex.EncodeToString(sum[:])
	if labelOf(t, e, baseImage) == want {
		note("%s: cached", baseImage)
		return
	}
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		aptInstall(t, e, "mmdebstrap")
	}
	// mmdebstrap writes a tarball to stdout; docker import reads it.
	ctx, cancel := context.WithTimeout(runCtx, 20*time.Minute)
	defer cancel()
	tmp := os.TempDir()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		tmp = "/dev/shm" // dpkg's many small writes, in memory
	}
	script := fmt.Sprintf(`set -o pipefail; mmdebstrap --quiet --variant=minbase --include=ca-certificates --dpkgopt=force-unsafe-io bookworm - | %s import --change 'CMD ["bash"]' --change 'LABEL %s=%s' - %s`,
		e.docker, recipeLabel, want, baseImage)
	c := exec.CommandContext(ctx, "bash", "-c", script)
	c.Env = append(append(os.Environ(), e.env...), "TMPDIR="+tmp)
	out, err := c.CombinedOutput()
	writeLog(e, "images", "$ "+script+"\n"+string(out))
	if err != nil {
		t.Fatalf("make %s with mmdebstrap: %v\n%s", baseImage, err, tail(string(out), 30))
	}
}

func writeLog(e *engine, name, text string) {
	f, err := os.OpenFile(filepath.Join(e.logs, name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, text)
}

// labelOf returns an image's recipe label, "" when the image is absent.
func labelOf(t *testing.T, e *engine, image string) string {
	out, err := e.dockerCmd(t, 30*time.Second, "", "image", "inspect", "--format", `{{index .Config.Labels "`+recipeLabel+`"}}`, image)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

func imageID(t *testing.T, e *engine, image string) string {
	return strings.TrimSpace(e.mustDocker(t, 30*time.Second, "", "image", "inspect", "--format", "{{.Id}}", image))
}

func hashFiles(t *testing.T, paths ...string) string {
	h := sha256.New()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(p), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// goImageTag is the Go image the Dockerfile builds from: golang:<the
// default of its GO_VERSION argument>.
func goImageTag(t *testing.T, root string) string {
	b, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ARG GO_VERSION=(\S+)`).FindSubmatch(b)
	if m == nil || !strings.Contains(string(b), "FROM golang:${GO_VERSION}") {
		t.Fatal("the Dockerfile has no ARG GO_VERSION=... and FROM golang:${GO_VERSION}; update makeBaseImages")
	}
	return "golang:" + string(m[1])
}

// composeImages returns the images compose.yaml's rabbitmq and postgres run.
func composeImages(t *testing.T, root string) (rabbitmq, postgres string) {
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "compose.yaml")},
		cli.WithWorkingDirectory(root), cli.WithName("containers"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("load compose.yaml: %v", err)
	}
	for _, s := range p.Services {
		switch s.Name {
		case "rabbitmq":
			rabbitmq = s.Image
		case "postgres":
			postgres = s.Image
		}
	}
	if rabbitmq == "" || postgres == "" {
		t.Fatalf("compose.yaml names no image for rabbitmq (%q) or postgres (%q)", rabbitmq, postgres)
	}
	return rabbitmq, postgres
}

func moduleRoot(t *testing.T) string {
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("no go.mod in %s: run from the repository (go tool task test:containers)", dir)
	}
	return dir
}
