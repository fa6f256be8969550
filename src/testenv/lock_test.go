package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A lock held by another process is waited for, then refused with an error
// that names the holder; once that process ends, the lock is taken, and a
// process the holder starts does not inherit it.
func TestLockFileWaitsNamesHolderAndIsNotInherited(t *testing.T) {
	path := filepath.Join(t.TempDir(), "restarts.lock")
	holder := exec.Command("sh", "-c", `exec 9>"$0" && flock 9 && exec sleep 30`, path)
	if err := holder.Start(); err != nil {
		t.Skipf("flock(1) is needed to hold the lock from another process: %v", err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	// Wait until flock(1) has locked it: a lock of our own is refused.
	held := func() bool {
		f, err := os.Open(path)
		if err != nil {
			return false
		}
		defer f.Close()
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
			return false
		}
		return true
	}
	deadline := time.Now().Add(10 * time.Second)
	for !held() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}

	var logged []string
	logf := func(format string, args ...any) { logged = append(logged, format) }
	_, err := lockFile(path, 2*time.Second, logf)
	if err == nil || !strings.Contains(err.Error(), "still held") || !strings.Contains(err.Error(), "sleep 30") {
		t.Fatalf("lockFile while another process holds it = %v, want an error naming the holder (sleep 30)", err)
	}
	if len(logged) != 1 {
		t.Errorf("logged %d lines while waiting, want 1", len(logged))
	}

	_ = holder.Process.Kill()
	_ = holder.Wait()
	release, err := lockFile(path, 10*time.Second, t.Logf)
	if err != nil {
		t.Fatalf("lockFile after the holder ended: %v", err)
	}
	defer release()
	// A child started while the lock is held (a restarted broker) must not
	// keep it: its fd is close-on-exec.
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	if h := lockHolders(path); strings.Contains(h, "sleep") {
		t.Errorf("a child of the lock holder has the lock open: %s", h)
	}
}
