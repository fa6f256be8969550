// Package workspace_test checks the dev workspace as the tools that consume
// it read it: compose.yaml (and the devcontainer override merged on top) with
// compose-go, the loader of Docker Compose v2; the Dockerfile with BuildKit's
// parser; devcontainer.json as JSONC; .air.toml with Air's own config type.
// Where something can run for real without a Docker engine it does: a second
// RabbitMQ node boots from rabbitmq-configs/, and `go tool task dev` runs the
// service under Air while a test edits its source.
package workspace_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// drainTimeout is the service's default DRAIN_TIMEOUT: how long it finishes
// in-flight work after SIGINT/SIGTERM before it exits.
const drainTimeout = 10 * time.Second

// root is the absolute path of the repository (the directory of go.mod).
func root(tb testing.TB) string {
	tb.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		tb.Fatalf("resolve the repository root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		tb.Fatalf("no go.mod in %s, the expected repository root: %v", dir, err)
	}
	return dir
}

// loadCompose loads the compose files (relative to the repository root) the
// way `docker compose -f a -f b config` does: project directory = the
// repository, OS environment and .env applied, paths resolved, the model
// validated (services referenced by depends_on and network_mode exist, no
// dependency cycle).
func loadCompose(tb testing.TB, files ...string) *types.Project {
	tb.Helper()
	project, err := loadComposeErr(root(tb), files...)
	if err != nil {
		tb.Fatalf("load %v with compose-go: %v", files, err)
	}
	return project
}

func loadComposeErr(dir string, files ...string) (*types.Project, error) {
	return loadComposeProfiles(dir, nil, files...)
}

// loadComposeProfiles loads files with the given profiles active.
func loadComposeProfiles(dir string, profiles []string, files ...string) (*types.Project, error) {
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = filepath.Join(dir, f)
	}
	opts, err := cli.NewProjectOptions(paths,
		cli.WithWorkingDirectory(dir),
		cli.WithOsEnv,
		cli.WithDotEnv,
		cli.WithName("workspace-test"),
		cli.WithResolvedPaths(true),
		cli.WithProfiles(profiles),
	)
	if err != nil {
		return nil, err
	}
	return opts.LoadProject(context.Background())
}

func service(tb testing.TB, p *types.Project, name string) types.ServiceConfig {
	tb.Helper()
	s, err := p.GetService(name)
	if err != nil {
		tb.Fatalf("compose project %s: %v", p.Name, err)
	}
	return s
}

// env returns the value of key in the service's environment, "" when unset.
func env(s types.ServiceConfig, key string) string {
	if v, ok := s.Environment[key]; ok && v != nil {
		return *v
	}
	return ""
}

// definitions is the part of rabbitmq-configs/definitions.json the tests read.
type definitions struct {
	Users []struct {
		Name         string   `json:"name"`
		PasswordHash string   `json:"password_hash"`
		Algorithm    string   `json:"hashing_algorithm"`
		Tags         []string `json:"tags"`
	} `json:"users"`
	Vhosts []struct {
		Name string `json:"name"`
	} `json:"vhosts"`
	Permissions []struct {
		User      string `json:"user"`
		Vhost     string `json:"vhost"`
		Configure string `json:"configure"`
		Write     string `json:"write"`
		Read      string `json:"read"`
	} `json:"permissions"`
}

func readDefinitions(tb testing.TB) definitions {
	tb.Helper()
	path := filepath.Join(root(tb), "rabbitmq-configs", "definitions.json")
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("read RabbitMQ definitions: %v", err)
	}
	var d definitions
	if err := json.Unmarshal(b, &d); err != nil {
		tb.Fatalf("parse %s: %v", path, err)
	}
	return d
}

// passwordMatches reports whether password hashes to hash under RabbitMQ's
// rabbit_password_hashing_sha256: base64(salt ++ sha256(salt ++ password))
// with a 4-byte salt.
func passwordMatches(hash, password string) bool {
	b, err := base64.StdEncoding.DecodeString(hash)
	if err != nil || len(b) != 4+sha256.Size {
		return false
	}
	sum := sha256.Sum256(append(slices.Clone(b[:4]), password...))
	return string(b[4:]) == string(sum[:])
}

// lockedWriter is an io.Writer safe for the concurrent writes of a child
// process's stdout and stderr copiers and for reading while they run. It
// notes when each write arrived, to time the phases of a restart.
type lockedWriter struct {
	mu     sync.Mutex
	w      *bytes.Buffer
	writes []timedWrite
}

type timedWrite struct {
	at   time.Time
	text string
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes = append(l.writes, timedWrite{time.Now(), string(p)})
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// firstAfter returns when text first appeared in a write at or after since.
func (l *lockedWriter) firstAfter(since time.Time, text string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, w := range l.writes {
		if !w.at.Before(since) && strings.Contains(w.text, text) {
			return w.at, true
		}
	}
	return time.Time{}, false
}
