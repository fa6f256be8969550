package workspace_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/tailscale/hujson"
)

// devcontainer is the part of devcontainer.json the tests read.
type devcontainer struct {
	DockerComposeFile []string `json:"dockerComposeFile"`
	Service           string   `json:"service"`
	RunServices       []string `json:"runServices"`
	WorkspaceFolder   string   `json:"workspaceFolder"`
	RemoteUser        string   `json:"remoteUser"`
	ForwardPorts      []any    `json:"forwardPorts"`
	PostCreateCommand string   `json:"postCreateCommand"`
	Customizations    struct {
		VSCode struct {
			Extensions []string       `json:"extensions"`
			Settings   map[string]any `json:"settings"`
		} `json:"vscode"`
	} `json:"customizations"`
}

func readDevcontainer(t *testing.T) devcontainer {
	t.Helper()
	path := filepath.Join(root(t), ".devcontainer", "devcontainer.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read devcontainer.json: %v", err)
	}
	std, err := hujson.Standardize(b) // JSONC: comments, trailing commas
	if err != nil {
		t.Fatalf("parse %s as JSONC: %v", path, err)
	}
	var dc devcontainer
	dec := json.NewDecoder(strings.NewReader(string(std)))
	if err := dec.Decode(&dc); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	return dc
}

func TestDevcontainer(t *testing.T) {
	dir := root(t)
	dc := readDevcontainer(t)

	// The compose files, relative to .devcontainer/: compose.yaml first (it
	// sets the project directory), the override after it.
	var files []string
	for _, f := range dc.DockerComposeFile {
		abs := filepath.Join(dir, ".devcontainer", f)
		rel, err := filepath.Rel(dir, abs)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(abs); err != nil {
			t.Errorf("devcontainer.json dockerComposeFile %q: %v", f, err)
		}
		files = append(files, filepath.ToSlash(rel))
	}
	if want := []string{"compose.yaml", devcontainerOverride}; !slices.Equal(files, want) {
		t.Fatalf("dockerComposeFile resolves to %v, want %v", files, want)
	}

	p := loadCompose(t, files...)
	if dc.Service != "app" {
		t.Errorf("devcontainer service = %q, want app", dc.Service)
	}
	app := service(t, p, dc.Service)
	runServices := slices.Clone(dc.RunServices)
	sort.Strings(runServices)
	names := p.ServiceNames()
	sort.Strings(names)
	if !slices.Equal(runServices, names) {
		t.Errorf("runServices = %v, want every compose service %v", dc.RunServices, names)
	}

	// The editor opens the folder where the source is mounted.
	if dc.WorkspaceFolder == "" || !hasMount(app, "bind", dir, dc.WorkspaceFolder) {
		t.Errorf("workspaceFolder %q is not where app mounts the repository: %+v", dc.WorkspaceFolder, app.Volumes)
	}

	// Plain numbers (Codespaces ignores "service:port"), one for every
	// port compose.yaml publishes for host tools: AMQP, management UI,
	// Postgres.
	var forwarded []int
	for _, fp := range dc.ForwardPorts {
		n, ok := fp.(float64)
		if !ok {
			t.Errorf("forwardPorts entry %v (%T) is not a plain port number; Codespaces ignores host:port entries", fp, fp)
			continue
		}
		forwarded = append(forwarded, int(n))
	}
	var published []int
	for _, s := range loadCompose(t, "compose.yaml").Services {
		for _, port := range s.Ports {
			published = append(published, int(port.Target))
		}
	}
	sort.Ints(forwarded)
	sort.Ints(published)
	if !slices.Equal(forwarded, published) || !slices.Equal(published, []int{5432, 5672, 9464, 15672, 15692}) {
		t.Errorf("forwardPorts = %v, compose.yaml publishes %v, want both [5432 5672 9464 15672 15692]", forwarded, published)
	}

	// Modules and tools ready after creation.
	for _, want := range []string{"go mod download", "go tool task", "go tool air"} {
		if !strings.Contains(dc.PostCreateCommand, want) {
			t.Errorf("postCreateCommand %q lacks %q", dc.PostCreateCommand, want)
		}
	}
	if !slices.Contains(dc.Customizations.VSCode.Extensions, "golang.go") {
		t.Errorf("vscode extensions = %v, want golang.go", dc.Customizations.VSCode.Extensions)
	}
	if len(dc.Customizations.VSCode.Settings) == 0 {
		t.Error("vscode settings are empty")
	}

	// remoteUser is the dev stage's user.
	d := parseDockerfile(t, filepath.Join(dir, "Dockerfile"))
	dev := stagesByName(d)["dev"]
	users := stageUsers(dev)
	if dc.RemoteUser == "" || !slices.Contains(users, dc.RemoteUser) {
		t.Errorf("remoteUser %q is not the dev stage's user (%v)", dc.RemoteUser, users)
	}
}

// stageUsers returns the dev stage's USER values with ${ARG}
// references replaced by the stage ARGs' defaults.
func stageUsers(s instructions.Stage) []string {
	args := map[string]string{}
	var users []string
	for _, c := range s.Commands {
		switch c := c.(type) {
		case *instructions.ArgCommand:
			for _, kv := range c.Args {
				if kv.Value != nil {
					args[kv.Key] = *kv.Value
				}
			}
		case *instructions.UserCommand:
			users = append(users, os.Expand(c.User, func(k string) string { return args[k] }))
		}
	}
	return users
}
