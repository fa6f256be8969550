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
	// Builds the service (the last good binary is kept when a save does not
	// compile) where it runs it from, inside tmp_dir.
	if !strings.Contains(b.Cmd, "go build -o ") || !strings.Contains(b.Cmd, " ./src") {
		t.Fatalf("build cmd = %q, want go build -o <binary> ./src", b.Cmd)
	}
	if len(b.Entrypoint) == 0 {
		t.Fatal("no entrypoint")
	}
	bin := b.Entrypoint[len(b.Entrypoint)-1]
	if !strings.Contains(b.Cmd, bin) {
		t.Errorf("entrypoint %q runs %s, which the build cmd %q does not write", b.Entrypoint, bin, b.Cmd)
	}
	if !strings.HasPrefix(filepath.Clean(bin), filepath.Clean(c.TmpDir)+string(filepath.Separator)) {
		t.Errorf("the binary %s is outside tmp_dir %q (which .gitignore covers)", bin, c.TmpDir)
	}
	if !slices.Contains(b.Entrypoint, "DEV_BUILD_ERRORS=./tmp/build-errors.log") || !strings.Contains(b.Cmd, "2> ./tmp/build-errors.log") {
		t.Errorf("entrypoint %q and cmd %q do not hand the compiler's errors to the service (DEV_BUILD_ERRORS)", b.Entrypoint, b.Cmd)
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
