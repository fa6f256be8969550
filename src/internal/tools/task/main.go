// Command task is what `go tool task` runs: it hands its arguments to Task
// (github.com/go-task/task), the project's task runner, pinned in task.mod
// next to this file.
//
// Task lives in a module graph of its own rather than in go.mod: its
// dependencies (some 450 packages) stay out of the service's go.mod, where
// minimal version selection would also raise them to versions Task was not
// built with, and the first `go tool task` compiles only those. The go
// command caches the built tool, so later runs start at once.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
)

func main() {
	gobin, err := exec.LookPath("go")
	if err != nil {
		fail("the go command is not on PATH: %v", err)
	}
	root, err := moduleRoot(gobin)
	if err != nil {
		fail("%v", err)
	}
	// --exit-code: a failing command's own exit code (`go tool task call`
	// exits 1 on an error reply), not Task's 201.
	args := append([]string{"go", "tool", "-modfile=" + filepath.Join(root, "src", "internal", "tools", "task", "task.mod"), "task", "--exit-code"}, os.Args[1:]...)
	if runtime.GOOS != "windows" {
		// Become the go command: signals reach Task as if run directly.
		err := syscall.Exec(gobin, args, os.Environ())
		fail("run %s: %v", strings.Join(args, " "), err)
	}
	cmd := exec.CommandContext(context.Background(), gobin, args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		os.Exit(exit.ExitCode())
	}
	if err != nil {
		fail("run %s: %v", strings.Join(args, " "), err)
	}
}

// moduleRoot is the directory of the project's go.mod.
func moduleRoot(gobin string) (string, error) {
	out, err := exec.CommandContext(context.Background(), gobin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("go tool task runs inside the project: cd into it first")
	}
	return filepath.Dir(gomod), nil
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "go tool task: "+format+"\n", args...)
	os.Exit(1)
}
