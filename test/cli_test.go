package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
	"example.com/service/test/stack"
)

// cli runs the service binary's command with env's broker settings, as a
// user would from the shell, and returns its output and exit code.
func cli(t *testing.T, env stack.Env, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.Service, args...)
	cmd.Env = append(os.Environ(), "BROKER_URL=", "DB_URL=", "BROKER_VHOST="+env.VHost)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("run %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// The shell commands a newcomer uses first: call and publish any route, and
// list them.
func TestCommands(t *testing.T) {
	env := stack.NewEnv(t, bins)
	stack.Start(t, bins, env)

	out, errOut, code := cli(t, env, "", "call", "hello_world")
	if code != 0 || !jsonEqual(json.RawMessage(out), `{"success": true, "data": "Hello world!"}`) {
		t.Errorf("call hello_world: exit %d, %q %q", code, out, errOut)
	}
	out, _, code = cli(t, env, "", "call", "test", `"cli"`)
	if code != 0 || !strings.Contains(out, "cli that took forever") {
		t.Errorf("call test \"cli\": exit %d, %q", code, out)
	}
	out, _, code = cli(t, env, `{"foo": 1}`, "call", "dictionary", "-")
	if code != 0 || !strings.Contains(out, `"bar": "baz"`) {
		t.Errorf("call dictionary with data from stdin: exit %d, %q", code, out)
	}

	// An error reply is printed as the envelope, and the exit code says so.
	out, _, code = cli(t, env, "", "call", "will-error", `"oops"`)
	var failure struct {
		Success bool
		Error   struct{ Type, Message string }
	}
	if err := json.Unmarshal([]byte(out), &failure); err != nil || code != 1 || failure.Success || failure.Error.Type != "Exception" {
		t.Errorf("call will-error: exit %d, %q (%v), want exit 1 and the failure envelope", code, out, err)
	}
	// A misspelled field is a BadRequest naming it (strict payloads).
	out, _, code = cli(t, env, "", "call", "example-item.create", `{"string": "typo-test", "integr": 5}`)
	if code != 1 || !strings.Contains(out, "BadRequest") || !strings.Contains(out, `unknown field \"integr\"`) {
		t.Errorf("create with a misspelled field: exit %d, %q, want a BadRequest naming \"integr\"", code, out)
	}
	_, errOut, code = cli(t, env, "", "call", "no-such-route")
	if code != 1 || !strings.Contains(errOut, `no queue named "no-such-route"`) {
		t.Errorf("call no-such-route: exit %d, %q", code, errOut)
	}
	_, errOut, code = cli(t, env, "", "call", "test", "not json")
	if code != 2 || !strings.Contains(errOut, "is not JSON") {
		t.Errorf("call with data that is not JSON: exit %d, %q", code, errOut)
	}

	// publish waits for the confirm; the message's effect is a stored row.
	tag := testenv.Name("cli-")
	out, errOut, code = cli(t, env, "", "publish", "example-item.store", `{"string": "`+tag+`", "integer": 3}`)
	if code != 0 || !strings.Contains(out, "confirmed") {
		t.Fatalf("publish: exit %d, %q %q", code, out, errOut)
	}
	waitForItems(t, env.Client(t), tag, 1)
}

// `service routes` lists every route registered in server.go, and `service
// asyncapi` documents them; neither needs RabbitMQ or PostgreSQL.
func TestRouteCatalog(t *testing.T) {
	routes := bins.Routes(t)
	var names []string
	for _, r := range routes {
		names = append(names, r.Kind+" "+r.Name)
		if r.RequestSchema == nil || (r.Kind == worker.KindRPC) != (r.ResponseSchema != nil) {
			t.Errorf("route %s (%s): request schema %v, reply schema %v", r.Name, r.Kind, r.RequestSchema, r.ResponseSchema)
		}
	}
	for _, want := range []string{"rpc hello_world", "rpc example-item.create", "queue example-item.store"} {
		if !strings.Contains(strings.Join(names, ","), want) {
			t.Errorf("routes %v lack %s", names, want)
		}
	}
	cmd := exec.Command(bins.Service, "asyncapi")
	cmd.Env = append(os.Environ(), "BROKER_PORT=1", "DB_PORT=1") // nothing to reach: it must not try
	doc, err := cmd.Output()
	if err != nil {
		t.Fatalf("service asyncapi: %v", err)
	}
	var parsed struct {
		AsyncAPI   string                     `json:"asyncapi"`
		Operations map[string]json.RawMessage `json:"operations"`
	}
	if err := json.Unmarshal(doc, &parsed); err != nil || parsed.AsyncAPI != "3.0.0" || len(parsed.Operations) != len(routes) {
		t.Fatalf("asyncapi document: version %q, %d operations for %d routes (%v)", parsed.AsyncAPI, len(parsed.Operations), len(routes), err)
	}
	validateAsyncAPI(t, doc)
}

// validateAsyncAPI checks doc with the AsyncAPI initiative's own parser
// (@asyncapi/parser, from npm, cached under the user's cache directory),
// where Node.js is installed.
func validateAsyncAPI(t *testing.T, doc []byte) {
	t.Helper()
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Log("npm is not installed: the AsyncAPI document is not checked with @asyncapi/parser")
		return
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "service-tests", "asyncapi-parser")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@asyncapi", "parser")); err != nil {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{"name": "asyncapi-check", "private": true}`), 0o644)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		install := exec.CommandContext(ctx, npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "@asyncapi/parser@3")
		install.Dir = dir
		if out, err := install.CombinedOutput(); err != nil {
			t.Logf("npm install @asyncapi/parser failed (%v), the document is not checked with it:\n%s", err, out)
			return
		}
	}
	script := `import { Parser } from '@asyncapi/parser';
import fs from 'fs';
const { document, diagnostics } = await new Parser().parse(fs.readFileSync(0, 'utf8'));
for (const d of diagnostics.filter(d => d.severity <= 1)) console.log(d.message, JSON.stringify(d.path));
process.exit(document && !diagnostics.some(d => d.severity === 0) ? 0 : 1);`
	if err := os.WriteFile(filepath.Join(dir, "check.mjs"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	check := exec.Command("node", "check.mjs")
	check.Dir = dir
	check.Stdin = bytes.NewReader(doc)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("@asyncapi/parser refuses the document (%v):\n%s", err, out)
	}
}
