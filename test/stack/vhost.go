package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"example.com/service/src/testenv"
)

const vhostPrefix = "e2e_"

// NewVHost creates a RabbitMQ vhost of its own for the test, grants
// BROKER_USER every permission on it and deletes it (with its queues) when
// the test ends; through the management API it does so as
// BROKER_ADMIN_USER (default BROKER_USER). It uses rabbitmqctl where the broker runs on this machine,
// and the management HTTP API (port 15672, or BROKER_MANAGEMENT_URL)
// otherwise, as in the devcontainer. Vhosts that a killed run left behind
// are deleted first.
func NewVHost(t testing.TB) string {
	t.Helper()
	admin, err := newVHostAdmin()
	if err != nil {
		t.Fatal(err)
	}
	if names, err := admin.list(); err == nil {
		for _, name := range names {
			if testenv.Orphaned(name, vhostPrefix) {
				_ = admin.remove(name)
			}
		}
	}
	name := testenv.OwnedName(vhostPrefix)
	if err := admin.add(name); err != nil {
		t.Fatalf("create vhost %s: %v", name, err)
	}
	t.Cleanup(func() {
		// The broker may be restarting (a fault test of another run on
		// this machine): retry for a minute.
		var err error
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
			if err = admin.remove(name); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Errorf("delete vhost %s: %v", name, err)
		}
	})
	return name
}

type vhostAdmin interface {
	list() ([]string, error)
	add(name string) error
	remove(name string) error
}

func newVHostAdmin() (vhostAdmin, error) {
	user := testenv.Env("BROKER_USER", "guest")
	if path, err := exec.LookPath("rabbitmqctl"); err == nil && os.Getenv("BROKER_MANAGEMENT_URL") == "" {
		return rabbitmqctl{path: path, user: user}, nil
	}
	base := os.Getenv("BROKER_MANAGEMENT_URL")
	if base == "" {
		base = "http://" + net.JoinHostPort(testenv.Env("BROKER_HOST", "127.0.0.1"), "15672")
	}
	admin, pass := testenv.BrokerAdmin()
	api := managementAPI{base: strings.TrimSuffix(base, "/"), user: user, admin: admin, pass: pass}
	if _, err := api.list(); err != nil {
		return nil, fmt.Errorf("the e2e tests create a RabbitMQ vhost per run and found no way to: "+
			"rabbitmqctl is not installed here and the management API at %s does not answer (%w); "+
			"run them where rabbitmqctl is, or enable the management plugin (set BROKER_MANAGEMENT_URL if it is elsewhere)", api.base, err)
	}
	return api, nil
}

// rabbitmqctl administers the broker running on this machine.
type rabbitmqctl struct{ path, user string }

func (r rabbitmqctl) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, r.path, append([]string{"-q"}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (r rabbitmqctl) list() ([]string, error) {
	out, err := r.run("list_vhosts", "name")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if line = strings.TrimSpace(line); line != "" && line != "name" {
			names = append(names, line)
		}
	}
	return names, nil
}

func (r rabbitmqctl) add(name string) error {
	if _, err := r.run("add_vhost", name); err != nil {
		return err
	}
	_, err := r.run("set_permissions", "-p", name, r.user, ".*", ".*", ".*")
	return err
}

func (r rabbitmqctl) remove(name string) error {
	_, err := r.run("delete_vhost", name)
	return err
}

// managementAPI administers a broker through its management plugin.
// managementAPI administers vhosts through the management HTTP API as
// admin, granting user every permission on the vhosts it adds.
type managementAPI struct{ base, user, admin, pass string }

func (m managementAPI) do(method, path, body string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, m.base+path, strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(m.admin, m.pass)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		return "", fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, out)
	}
	return string(out), nil
}

func (m managementAPI) list() ([]string, error) {
	out, err := m.do(http.MethodGet, "/api/vhosts?columns=name", "")
	if err != nil {
		return nil, err
	}
	var vhosts []struct{ Name string }
	if err := json.Unmarshal([]byte(out), &vhosts); err != nil {
		return nil, fmt.Errorf("GET /api/vhosts: %w", err)
	}
	names := make([]string, len(vhosts))
	for i, v := range vhosts {
		names[i] = v.Name
	}
	return names, nil
}

func (m managementAPI) add(name string) error {
	if _, err := m.do(http.MethodPut, "/api/vhosts/"+url.PathEscape(name), ""); err != nil {
		return err
	}
	_, err := m.do(http.MethodPut, "/api/permissions/"+url.PathEscape(name)+"/"+url.PathEscape(m.user),
		`{"configure":".*","write":".*","read":".*"}`)
	return err
}

func (m managementAPI) remove(name string) error {
	_, err := m.do(http.MethodDelete, "/api/vhosts/"+url.PathEscape(name), "")
	return err
}
