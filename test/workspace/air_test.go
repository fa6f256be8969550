package workspace_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/air-verse/air/runner"
	"github.com/pelletier/go-toml"
)

// readAirConfig decodes .air.toml into Air's own Config with the TOML library
// Air itself uses, so a key Air would not understand is caught here.
func readAirConfig(tb testing.TB) runner.Config {
	tb.Helper()
	path := filepath.Join(root(tb), ".air.toml")
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("read Air config: %v", err)
	}
	tree, err := toml.LoadBytes(b)
	if err != nil {
		tb.Fatalf("parse %s: %v", path, err)
	}
	var c runner.Config
	if err := tree.Unmarshal(&c); err != nil {
		tb.Fatalf("decode %s into Air's config: %v", path, err)
	}
	return c
}

func TestAirConfig(t *testing.T) {
	c := readAirConfig(t)
	b := c.Build

	if !slices.Contains(b.IncludeDir, "src") || len(b.IncludeDir) != 1 {
		t.Errorf("include_dir = %v, want [src]", b.IncludeDir)
	}
	for _, ext := range []string{"go", "sql"} {
		if !slices.Contains(b.IncludeExt, ext) {
			t.Errorf("include_ext = %v, want %s in it", b.IncludeExt, ext)
		}
	}
	// Builds the service where it runs it from.
	fields := strings.Fields(b.Cmd)
	i := slices.Index(fields, "-o")
	if len(fields) < 4 || fields[0] != "go" || fields[1] != "build" || i < 0 || i+1 >= len(fields) || fields[len(fields)-1] != "./src" {
		t.Fatalf("build cmd = %q, want go build -o <binary> ./src", b.Cmd)
	}
	if out := fields[i+1]; len(b.Entrypoint) == 0 || filepath.Clean(b.Entrypoint[0]) != filepath.Clean(out) {
		t.Errorf("entrypoint = %q, want the binary the build writes, %s", b.Entrypoint, out)
	}
	if !strings.HasPrefix(filepath.Clean(fields[i+1]), filepath.Clean(c.TmpDir)+string(filepath.Separator)) {
		t.Errorf("the binary %s is outside tmp_dir %q (which .gitignore covers)", fields[i+1], c.TmpDir)
	}

	// Graceful restart: interrupt, and SIGKILL only after the drain.
	if !b.SendInterrupt {
		t.Error("send_interrupt = false: Air would SIGKILL the service mid-request")
	}
	if b.KillDelay <= drainTimeout {
		t.Errorf("kill_delay = %v, want more than the service's drain timeout %v", b.KillDelay, drainTimeout)
	}
	if b.Poll {
		t.Error("poll = true by default; keep file events, document polling for bind mounts")
	}
	raw, _ := os.ReadFile(filepath.Join(root(t), ".air.toml"))
	if !strings.Contains(string(raw), "macOS") || !strings.Contains(string(raw), "poll = true") {
		t.Error(".air.toml does not document polling for macOS bind mounts")
	}
}
