package workspace_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
)

// rabbitNode is a RabbitMQ node of its own, started by a test.
type rabbitNode struct {
	name string   // Erlang node name, name@localhost
	sbin string   // directory of rabbitmq-server, rabbitmqctl, rabbitmq-diagnostics
	env  []string // the node's environment, also for the CLI tools
	amqp int      // AMQP port
	mgmt int      // management HTTP port
	prom int      // Prometheus HTTP port
}

// ctl runs one of the node's CLI tools (rabbitmqctl, rabbitmq-diagnostics)
// against it.
func (n *rabbitNode) ctl(ctx context.Context, tool string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(n.sbin, tool), append([]string{"-n", n.name}, args...)...)
	cmd.Env = n.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s -n %s %s: %w: %s", tool, n.name, strings.Join(args, " "), err, out)
	}
	return out, nil
}

// TestRabbitMQConfigBootsANode starts a real RabbitMQ node from a copy of
// rabbitmq-configs/ (only its ports and file paths changed), then connects
// as the definitions' user: the files the compose stack mounts work.
func TestRabbitMQConfigBootsANode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a RabbitMQ node (about 10 s); skipped with -short")
	}
	sbin := rabbitSbin(t)
	dir := root(t)
	tmp := t.TempDir()

	// The running broker, if any, must be untouched by this test.
	mainBefore := brokerAnswers()

	n := &rabbitNode{
		name: testenv.Name("wstest-") + "@localhost",
		sbin: sbin,
	}
	ports := testenv.FreePorts(t, 4)
	n.amqp, n.mgmt, n.prom = ports[0], ports[1], ports[2]
	dist := ports[3]

	// A temporary copy of the configuration with its own ports and paths.
	configs := filepath.Join(dir, "rabbitmq-configs")
	conf, err := os.ReadFile(filepath.Join(configs, "rabbitmq.conf"))
	if err != nil {
		t.Fatal(err)
	}
	rewritten, err := rewriteRabbitConf(string(conf), map[string]string{
		"load_definitions":      filepath.Join(tmp, "definitions.json"),
		"listeners.tcp.default": "127.0.0.1:" + strconv.Itoa(n.amqp),
		"management.tcp.port":   strconv.Itoa(n.mgmt),
		"prometheus.tcp.port":   strconv.Itoa(n.prom),
	})
	if err != nil {
		t.Fatalf("rabbitmq-configs/rabbitmq.conf: %v", err)
	}
	rewritten += "management.tcp.ip = 127.0.0.1\nprometheus.tcp.ip = 127.0.0.1\n"
	writeFile(t, filepath.Join(tmp, "rabbitmq.conf"), rewritten)
	copyFile(t, filepath.Join(configs, "definitions.json"), filepath.Join(tmp, "definitions.json"))
	copyFile(t, filepath.Join(configs, "enabled_plugins"), filepath.Join(tmp, "enabled_plugins"))
	writeFile(t, filepath.Join(tmp, "rabbitmq-env.conf"), "") // not /etc/rabbitmq's
	for _, d := range []string{"home", "mnesia", "log", "conf.d"} {
		if err := os.MkdirAll(filepath.Join(tmp, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// Its own node name, ports, data and log directories, and HOME (the
	// Erlang cookie is created there, so the CLI tools below share it).
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RABBITMQ_") && !strings.HasPrefix(kv, "HOME=") {
			n.env = append(n.env, kv)
		}
	}
	n.env = append(n.env,
		"HOME="+filepath.Join(tmp, "home"),
		"RABBITMQ_NODENAME="+n.name,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(n.amqp),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(dist),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(tmp, "rabbitmq.conf"),
		"RABBITMQ_CONFIG_FILES="+filepath.Join(tmp, "conf.d"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(tmp, "advanced.config"),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(tmp, "rabbitmq-env.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(tmp, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(tmp, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(tmp, "log"),
		// Erlang distribution on loopback only.
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
	)

	output := &lockedWriter{w: new(bytes.Buffer)}
	server := exec.Command(filepath.Join(sbin, "rabbitmq-server"))
	server.Env = n.env
	server.Stdout, server.Stderr = output, output
	server.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := server.Start(); err != nil {
		t.Fatalf("start %s: %v", server.Path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- server.Wait() }()

	// Stop it however the test ends: rabbitmqctl stop, then SIGKILL to its
	// process group if it has not exited a minute later.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := n.ctl(ctx, "rabbitmqctl", "stop"); err != nil {
			t.Logf("stop node: %v", err)
		}
		select {
		case <-exited:
		case <-ctx.Done():
			t.Errorf("node %s did not exit after rabbitmqctl stop; killing its process group", n.name)
			_ = syscall.Kill(-server.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("node output:\n%s", output.String())
		}
		if mainBefore && !brokerAnswers() {
			t.Errorf("the broker at %s stopped answering during the test", testenv.BrokerAddr())
		}
	})

	// Booted, definitions imported.
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	// await_startup fails at once while the node has not registered with
	// epmd yet, so it is retried until the node is up, exits, or 2 min pass.
	booted := make(chan error, 1)
	go func() {
		for {
			_, err := n.ctl(ctx, "rabbitmqctl", "await_startup", "--timeout", "120")
			if err == nil || ctx.Err() != nil {
				booted <- err
				return
			}
			time.Sleep(time.Second)
		}
	}()
	select {
	case err := <-booted:
		if err != nil {
			t.Fatalf("node %s did not boot: %v", n.name, err)
		}
	case err := <-exited:
		exited <- err // for the cleanup
		cancel()
		<-booted
		t.Fatalf("rabbitmq-server exited during boot (%v); is the config valid?", err)
	}

	// compose.yaml's healthcheck command passes against this node.
	hc := service(t, loadCompose(t, "compose.yaml"), "rabbitmq").HealthCheck.Test
	if hc[0] != "CMD" {
		t.Fatalf("rabbitmq healthcheck %q is not in CMD form", hc)
	}
	if _, err := n.ctl(ctx, hc[1], hc[2:]...); err != nil {
		t.Errorf("compose.yaml's rabbitmq healthcheck fails on a node booted from rabbitmq-configs/: %v", err)
	}

	// The definitions' user works on its vhost: a message goes round trip.
	defs := readDefinitions(t)
	user, vhost := defs.Users[0].Name, defs.Vhosts[0].Name
	pass := env(service(t, loadCompose(t, "compose.yaml"), "app"), "BROKER_PASS")
	roundTrip(t, nodeURL(n.amqp, user, pass, vhost))

	// guest is not there, and neither is the default vhost.
	var amqpErr *amqp.Error
	if conn, err := amqp.Dial(nodeURL(n.amqp, "guest", "guest", "/")); err == nil {
		_ = conn.Close()
		t.Error("guest/guest logged in; the node should only know the definitions' user")
	} else if !errors.As(err, &amqpErr) || amqpErr.Code != amqp.AccessRefused {
		t.Errorf("guest login: err = %v, want ACCESS_REFUSED", err)
	}
	if conn, err := amqp.Dial(nodeURL(n.amqp, user, pass, "/")); err == nil {
		_ = conn.Close()
		t.Errorf("%s opened vhost /, which definitions.json does not grant", user)
	}

	// The plugins of enabled_plugins answer on their ports.
	get := func(u string, auth bool) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if auth {
			req.SetBasicAuth(user, pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("GET %s: %v", u, err)
			return 0, ""
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get(fmt.Sprintf("http://127.0.0.1:%d/api/whoami", n.mgmt), true); code != http.StatusOK || !strings.Contains(body, `"`+user+`"`) {
		t.Errorf("management API /api/whoami as %s: %d %s", user, code, body)
	}
	if code, body := get(fmt.Sprintf("http://127.0.0.1:%d/metrics", n.prom), false); code != http.StatusOK || !strings.Contains(body, "rabbitmq_") {
		t.Errorf("prometheus /metrics: %d, %d bytes", code, len(body))
	}
}

// roundTrip publishes a message to a fresh queue and reads it back.
func roundTrip(t *testing.T, u string) {
	t.Helper()
	conn, err := amqp.Dial(u)
	if err != nil {
		t.Fatalf("connect as the definitions' user: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("open a channel: %v", err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatalf("declare a queue: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	body := testenv.Name("ping-")
	if err := ch.PublishWithContext(ctx, "", q.Name, false, false, amqp.Publishing{Body: []byte(body)}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	for ctx.Err() == nil {
		msg, ok, err := ch.Get(q.Name, true)
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if ok {
			if string(msg.Body) != body {
				t.Fatalf("got %q back, published %q", msg.Body, body)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the published message never arrived in its queue")
}

func nodeURL(port int, user, pass, vhost string) string {
	u := url.URL{Scheme: "amqp", User: url.UserPassword(user, pass), Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Path: "/" + url.PathEscape(vhost)}
	return u.String()
}

// rewriteRabbitConf sets keys of a rabbitmq.conf; each must already be set
// in it, so the copy differs from the checked-in file only where intended.
func rewriteRabbitConf(conf string, set map[string]string) (string, error) {
	seen := map[string]bool{}
	lines := strings.Split(conf, "\n")
	for i, line := range lines {
		key, _, ok := strings.Cut(line, "=")
		key = strings.TrimSpace(key)
		if v, want := set[key]; ok && want && !strings.HasPrefix(key, "#") {
			lines[i] = key + " = " + v
			seen[key] = true
		}
	}
	for key := range set {
		if !seen[key] {
			return "", fmt.Errorf("no %s setting to override", key)
		}
	}
	return strings.Join(lines, "\n"), nil
}

// rabbitSbin finds RabbitMQ's scripts: $RABBITMQ_SBIN, Debian's
// /usr/lib/rabbitmq/bin (the /usr/sbin wrappers switch to the rabbitmq user,
// who cannot read the test's files), or the directory of rabbitmq-server on
// PATH. The test is skipped when RabbitMQ is not installed.
func rabbitSbin(t *testing.T) string {
	t.Helper()
	candidates := []string{os.Getenv("RABBITMQ_SBIN"), "/usr/lib/rabbitmq/bin"}
	if p, err := exec.LookPath("rabbitmq-server"); err == nil {
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, dir := range candidates {
		if dir == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, "rabbitmq-server")); err == nil {
			return dir
		}
	}
	t.Skip("RabbitMQ is not installed (no rabbitmq-server; set RABBITMQ_SBIN to its directory)")
	return ""
}

// brokerAnswers reports whether something accepts connections at the
// configured broker address.
func brokerAnswers() bool {
	c, err := net.DialTimeout("tcp", testenv.BrokerAddr(), 3*time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}
