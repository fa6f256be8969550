package workspace_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
)

const devcontainerOverride = ".devcontainer/compose.devcontainer.yaml"

func TestComposeServices(t *testing.T) {
	p := loadCompose(t, "compose.yaml")
	names := p.ServiceNames()
	sort.Strings(names)
	if want := []string{"app", "postgres", "rabbitmq"}; !slices.Equal(names, want) {
		t.Fatalf("compose.yaml services = %v, want %v", names, want)
	}
}

func TestComposeApp(t *testing.T) {
	dir := root(t)
	p := loadCompose(t, "compose.yaml")
	app := service(t, p, "app")

	// Built from the Dockerfile's dev stage, which must exist.
	if app.Build == nil || app.Build.Context != dir || app.Build.Target != "dev" {
		t.Fatalf("app.build = %+v, want context %s and target dev", app.Build, dir)
	}
	dockerfile := app.Build.Dockerfile
	if !filepath.IsAbs(dockerfile) {
		dockerfile = filepath.Join(app.Build.Context, dockerfile)
	}
	if _, ok := stagesByName(parseDockerfile(t, dockerfile))["dev"]; !ok {
		t.Errorf("app builds target dev, but %s has no stage named dev", dockerfile)
	}

	// Runs Air in the mounted source.
	if !slices.Equal([]string(app.Command), []string{"go", "tool", "air"}) {
		t.Errorf("app.command = %q, want go tool air", app.Command)
	}
	if !hasMount(app, "bind", dir, app.WorkingDir) || app.WorkingDir == "" {
		t.Errorf("app does not bind-mount the repository %s at its working_dir %q: %+v", dir, app.WorkingDir, app.Volumes)
	}

	// Waits for healthy services.
	for _, dep := range []string{"rabbitmq", "postgres"} {
		d, ok := app.DependsOn[dep]
		if !ok || d.Condition != types.ServiceConditionHealthy {
			t.Errorf("app.depends_on[%s] = %+v, want condition %s", dep, d, types.ServiceConditionHealthy)
		}
	}

	// Stops gracefully: Docker sends stop_signal to Air, Air interrupts the
	// service, which drains; Docker kills only after stop_grace_period.
	if app.StopSignal != "SIGINT" && app.StopSignal != "SIGTERM" {
		t.Errorf("app.stop_signal = %q, want SIGINT or SIGTERM (the service drains on both)", app.StopSignal)
	}
	air := readAirConfig(t)
	if app.StopGracePeriod == nil || time.Duration(*app.StopGracePeriod) <= air.Build.KillDelay {
		t.Errorf("app.stop_grace_period = %v, want more than .air.toml kill_delay %v (itself more than the %v drain)",
			app.StopGracePeriod, air.Build.KillDelay, drainTimeout)
	}
}

// TestComposeAppEnvironment checks that the app's environment reaches the
// other two services with the credentials they are configured with.
func TestComposeAppEnvironment(t *testing.T) {
	p := loadCompose(t, "compose.yaml")
	app, pg := service(t, p, "app"), service(t, p, "postgres")
	defs := readDefinitions(t)

	for key, want := range map[string]string{
		"MODE":        "development",
		"BROKER_HOST": "rabbitmq",
		"BROKER_PORT": "5672",
		"DB_HOST":     "postgres",
		"DB_PORT":     "5432",
		// The roles postgres creates at first boot (migrations/roles.sql):
		// the service as the DML-only app role, manage as the owner.
		"DB_USER":       env(pg, "SERVICE_DB_APP"),
		"DB_PASS":       env(pg, "SERVICE_DB_APP_PASSWORD"),
		"DB_OWNER_USER": env(pg, "SERVICE_DB_OWNER"),
		"DB_OWNER_PASS": env(pg, "SERVICE_DB_OWNER_PASSWORD"),
		"DB_NAME":       env(pg, "POSTGRES_DB"),
	} {
		if got := env(app, key); got != want || want == "" {
			t.Errorf("app environment %s = %q, want %q", key, got, want)
		}
	}

	user, pass, vhost := env(app, "BROKER_USER"), env(app, "BROKER_PASS"), env(app, "BROKER_VHOST")
	if user == "" || user == "guest" {
		t.Fatalf("app BROKER_USER = %q, want the dev user of definitions.json", user)
	}
	found := false
	for _, u := range defs.Users {
		if u.Name != user {
			continue
		}
		found = true
		if u.Algorithm != "rabbit_password_hashing_sha256" || !passwordMatches(u.PasswordHash, pass) {
			t.Errorf("definitions.json: the password hash of %q (%s) does not match app BROKER_PASS %q", user, u.Algorithm, pass)
		}
		if slices.Contains(u.Tags, "administrator") {
			t.Errorf("definitions.json tags the service's broker user %q administrator; it needs no more than management", user)
		}
	}
	if !found {
		t.Errorf("app BROKER_USER %q is not a user of definitions.json", user)
	}
	granted := false
	for _, perm := range defs.Permissions {
		if perm.User == user && perm.Vhost == vhost && perm.Configure == ".*" && perm.Write == ".*" && perm.Read == ".*" {
			granted = true
		}
	}
	if !granted {
		t.Errorf("definitions.json does not grant %q full permissions on app BROKER_VHOST %q", user, vhost)
	}
}

func TestComposeRabbitMQ(t *testing.T) {
	dir := root(t)
	p := loadCompose(t, "compose.yaml")
	rmq := service(t, p, "rabbitmq")

	if !strings.HasPrefix(rmq.Image, "rabbitmq:") || !strings.Contains(rmq.Image, "management") {
		t.Errorf("rabbitmq.image = %q, want the official rabbitmq image with the management plugin", rmq.Image)
	}
	configs := filepath.Join(dir, "rabbitmq-configs")
	if !hasMount(rmq, "bind", configs, "/etc/rabbitmq") {
		t.Fatalf("rabbitmq does not mount %s at /etc/rabbitmq: %+v", configs, rmq.Volumes)
	}
	// Every file the config names must be in the mounted folder.
	conf := readRabbitConf(t, filepath.Join(configs, "rabbitmq.conf"))
	defsPath := conf["load_definitions"]
	if !strings.HasPrefix(defsPath, "/etc/rabbitmq/") {
		t.Errorf("rabbitmq.conf load_definitions = %q, want a file under the mount /etc/rabbitmq", defsPath)
	} else if _, err := os.Stat(filepath.Join(configs, strings.TrimPrefix(defsPath, "/etc/rabbitmq/"))); err != nil {
		t.Errorf("rabbitmq.conf loads %s, which the mounted folder lacks: %v", defsPath, err)
	}
	plugins, err := os.ReadFile(filepath.Join(configs, "enabled_plugins"))
	if err != nil {
		t.Fatalf("read enabled_plugins: %v", err)
	}
	for _, plugin := range []string{"rabbitmq_management", "rabbitmq_prometheus"} {
		if !strings.Contains(string(plugins), plugin) {
			t.Errorf("enabled_plugins = %q, want %s in it", plugins, plugin)
		}
	}

	requireHealthcheck(t, rmq, "rabbitmq-diagnostics")
	requirePublished(t, rmq, 5672, 15672)
}

// The cluster profile: three nodes that find each other by the names
// rabbitmq-configs/cluster/rabbitmq.conf lists, with one cookie, the dev
// broker's definitions, and a host port each; nothing of it starts by
// default.
func TestComposeClusterProfile(t *testing.T) {
	dir := root(t)
	p, err := loadComposeProfiles(dir, []string{"cluster"}, "compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(dir, "rabbitmq-configs", "cluster", "rabbitmq.conf")
	conf := readRabbitConf(t, confPath)
	var cookie string
	ports := map[uint32]string{}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("rabbitmq-%d", i)
		n := service(t, p, name)
		if !slices.Equal(n.Profiles, []string{"cluster"}) {
			t.Errorf("%s.profiles = %v, want [cluster]: it must not start with a plain `docker compose up`", name, n.Profiles)
		}
		if n.Hostname != name {
			t.Errorf("%s.hostname = %q, want %q (its node name is rabbit@<hostname>)", name, n.Hostname, name)
		}
		if got := conf[fmt.Sprintf("cluster_formation.classic_config.nodes.%d", i)]; got != "rabbit@"+name {
			t.Errorf("%s lists node %d as %q, want rabbit@%s", confPath, i, got, name)
		}
		c := n.Environment["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
		if c == nil || !strings.Contains(*c, "-setcookie") || (cookie != "" && *c != cookie) {
			t.Errorf("%s sets no Erlang cookie, or another than the other nodes: %v", name, c)
		} else {
			cookie = *c
		}
		if ctl := n.Environment["RABBITMQ_CTL_ERL_ARGS"]; ctl == nil || *ctl != cookie {
			t.Errorf("%s: its CLI tools do not get the node's cookie: %v", name, ctl)
		}
		for _, m := range []struct{ src, target string }{
			{confPath, "/etc/rabbitmq/rabbitmq.conf"},
			{filepath.Join(dir, "rabbitmq-configs", "definitions.json"), conf["load_definitions"]},
			{filepath.Join(dir, "rabbitmq-configs", "enabled_plugins"), "/etc/rabbitmq/enabled_plugins"},
		} {
			if !hasMount(n, "bind", m.src, m.target) {
				t.Errorf("%s does not mount %s at %s", name, m.src, m.target)
			}
		}
		requireHealthcheck(t, n, "rabbitmq-diagnostics")
		for _, port := range n.Ports {
			if port.Target == 5672 {
				host, _ := strconv.Atoi(port.Published)
				ports[uint32(host)] = name
			}
		}
	}
	if len(ports) != 3 {
		t.Errorf("the three nodes publish AMQP on %v, want a host port each", ports)
	}
	plain := loadCompose(t, "compose.yaml")
	for _, name := range plain.ServiceNames() {
		if strings.HasPrefix(name, "rabbitmq-") {
			t.Errorf("%s starts without --profile cluster", name)
		}
	}
}

func TestComposePostgres(t *testing.T) {
	p := loadCompose(t, "compose.yaml")
	pg := service(t, p, "postgres")

	if !strings.HasPrefix(pg.Image, "postgres:") {
		t.Errorf("postgres.image = %q, want the official postgres image", pg.Image)
	}
	var data *types.ServiceVolumeConfig
	for i, v := range pg.Volumes {
		if v.Type == types.VolumeTypeVolume && v.Target == "/var/lib/postgresql/data" {
			data = &pg.Volumes[i]
		}
	}
	if data == nil {
		t.Fatalf("postgres has no named volume at /var/lib/postgresql/data: %+v", pg.Volumes)
	}
	if _, ok := p.Volumes[data.Source]; !ok {
		t.Errorf("postgres uses volume %q, which the top-level volumes section does not declare", data.Source)
	}
	for _, key := range []string{"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} {
		if env(pg, key) == "" {
			t.Errorf("postgres environment %s is empty", key)
		}
	}
	if env(app(t, p), "DB_USER") == env(pg, "POSTGRES_USER") {
		t.Errorf("the app connects as the superuser %q; want the DML-only role of migrations/roles.sql", env(pg, "POSTGRES_USER"))
	}
	requireRolesInit(t, pg)
	hc := requireHealthcheck(t, pg, "pg_isready")
	// pg_isready over TCP, checking the service's database as its user.
	joined := strings.Join(hc.Test, " ")
	for _, want := range []string{"-h 127.0.0.1", "-U " + env(pg, "POSTGRES_USER"), "-d " + env(pg, "POSTGRES_DB")} {
		if !strings.Contains(joined, want) {
			t.Errorf("postgres healthcheck %q lacks %q", joined, want)
		}
	}
	requirePublished(t, pg, 5432)
}

// TestDevcontainerOverride merges the devcontainer's override onto
// compose.yaml as `docker compose -f compose.yaml -f <override>` does.
func TestDevcontainerOverride(t *testing.T) {
	base := loadCompose(t, "compose.yaml")
	p := loadCompose(t, "compose.yaml", devcontainerOverride)

	// One network namespace, owned by postgres; localhost reaches everything.
	for _, name := range []string{"app", "rabbitmq"} {
		if s := service(t, p, name); s.NetworkMode != "service:postgres" {
			t.Errorf("%s.network_mode = %q, want service:postgres", name, s.NetworkMode)
		}
	}
	app := service(t, p, "app")
	if env(app, "BROKER_HOST") != "localhost" || env(app, "DB_HOST") != "localhost" {
		t.Errorf("devcontainer app BROKER_HOST/DB_HOST = %q/%q, want localhost/localhost",
			env(app, "BROKER_HOST"), env(app, "DB_HOST"))
	}
	// The rest of the environment is compose.yaml's, merged.
	baseApp := service(t, base, "app")
	for key := range baseApp.Environment {
		if key == "BROKER_HOST" || key == "DB_HOST" {
			continue
		}
		if env(app, key) != env(baseApp, key) {
			t.Errorf("devcontainer app %s = %q, compose.yaml has %q", key, env(app, key), env(baseApp, key))
		}
	}
	// The healthy-wait survives: no cycle, both still service_healthy.
	for _, dep := range []string{"rabbitmq", "postgres"} {
		if d := app.DependsOn[dep]; d.Condition != types.ServiceConditionHealthy {
			t.Errorf("devcontainer app.depends_on[%s].condition = %q, want %s", dep, d.Condition, types.ServiceConditionHealthy)
		}
	}
	// The container stays up for the editor; `task dev` runs the service.
	if !slices.Equal([]string(app.Command), []string{"sleep", "infinity"}) {
		t.Errorf("devcontainer app.command = %q, want sleep infinity", app.Command)
	}
	// Docker refuses ports or a hostname on a service in another's
	// namespace; the devcontainer forwards ports instead of publishing them.
	for _, s := range p.Services {
		if len(s.Ports) > 0 {
			t.Errorf("devcontainer %s publishes %+v; forwardPorts does that, and host ports could clash", s.Name, s.Ports)
		}
		if strings.HasPrefix(s.NetworkMode, "service:") && s.Hostname != "" {
			t.Errorf("devcontainer %s sets hostname %q in another service's network namespace", s.Name, s.Hostname)
		}
	}
}

// TestDevcontainerOverrideAlternative shows why postgres, not app, owns the
// shared namespace: putting the services in app's namespace makes them
// depend on app, which depends on them, and compose refuses the cycle.
func TestDevcontainerOverrideAlternative(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"compose.yaml", "Dockerfile"} {
		copyFile(t, filepath.Join(root(t), f), filepath.Join(dir, f))
	}
	if err := os.MkdirAll(filepath.Join(dir, "rabbitmq-configs"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "alt.yaml"), `
services:
  rabbitmq:
    network_mode: service:app
    ports: !reset []
  postgres:
    network_mode: service:app
    ports: !reset []
`)
	_, err := loadComposeErr(dir, "compose.yaml", "alt.yaml")
	if err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("loading services in app's namespace: err = %v, want a dependency cycle", err)
	}
}

// Example_devcontainerStack prints what "Reopen in Container" starts.
func Example_devcontainerStack() {
	dir, _ := filepath.Abs(filepath.Join("..", ".."))
	p, err := loadComposeErr(dir, "compose.yaml", devcontainerOverride)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, name := range []string{"postgres", "rabbitmq", "app"} {
		s, _ := p.GetService(name)
		var deps []string
		for dep, d := range s.DependsOn {
			deps = append(deps, dep+"("+d.Condition+")")
		}
		sort.Strings(deps)
		fmt.Printf("%s network=%q depends_on=%v\n", name, s.NetworkMode, deps)
	}
	// Output:
	// postgres network="" depends_on=[]
	// rabbitmq network="service:postgres" depends_on=[postgres(service_started)]
	// app network="service:postgres" depends_on=[postgres(service_healthy) rabbitmq(service_healthy)]
}

func app(t *testing.T, p *types.Project) types.ServiceConfig { return service(t, p, "app") }

// requireRolesInit checks that postgres runs migrations/roles.initdb.sh at
// first boot (from /docker-entrypoint-initdb.d) with roles.sql mounted where
// the script reads it, and has every variable the script uses.
func requireRolesInit(t *testing.T, pg types.ServiceConfig) {
	t.Helper()
	dir := root(t)
	script := filepath.Join(dir, "migrations", "roles.initdb.sh")
	var scriptTarget string
	for _, v := range pg.Volumes {
		if v.Type == "bind" && v.Source == script {
			scriptTarget = v.Target
		}
	}
	if filepath.Dir(scriptTarget) != "/docker-entrypoint-initdb.d" || filepath.Ext(scriptTarget) != ".sh" {
		t.Fatalf("postgres does not mount %s as a .sh in /docker-entrypoint-initdb.d: %+v", script, pg.Volumes)
	}
	b, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	sqlTarget := ""
	for _, v := range pg.Volumes {
		if v.Type == "bind" && v.Source == filepath.Join(dir, "migrations", "roles.sql") {
			sqlTarget = v.Target
		}
	}
	if sqlTarget == "" || !strings.Contains(string(b), "-f "+sqlTarget) {
		t.Errorf("roles.initdb.sh does not run roles.sql where postgres mounts it (%q)", sqlTarget)
	}
	for _, m := range regexp.MustCompile(`\$(\w+)`).FindAllStringSubmatch(string(b), -1) {
		if env(pg, m[1]) == "" {
			t.Errorf("roles.initdb.sh uses $%s, which the postgres service does not set", m[1])
		}
	}
}

func hasMount(s types.ServiceConfig, typ, source, target string) bool {
	for _, v := range s.Volumes {
		if v.Type == typ && v.Source == source && v.Target == target {
			return true
		}
	}
	return false
}

func requireHealthcheck(t *testing.T, s types.ServiceConfig, command string) *types.HealthCheckConfig {
	t.Helper()
	hc := s.HealthCheck
	if hc == nil || hc.Disable || len(hc.Test) < 2 {
		t.Fatalf("%s has no healthcheck: %+v", s.Name, hc)
	}
	if hc.Test[0] != "CMD" && hc.Test[0] != "CMD-SHELL" {
		t.Errorf("%s healthcheck test %q, want CMD or CMD-SHELL form", s.Name, hc.Test)
	}
	if !strings.Contains(strings.Join(hc.Test[1:], " "), command) {
		t.Errorf("%s healthcheck test %q does not run %s", s.Name, hc.Test, command)
	}
	if hc.Interval == nil || hc.Retries == nil || *hc.Retries == 0 {
		t.Errorf("%s healthcheck has no interval or retries: %+v", s.Name, hc)
	}
	return hc
}

// requirePublished checks that each container port is published on the
// same host port, on the loopback interface.
func requirePublished(t *testing.T, s types.ServiceConfig, ports ...uint32) {
	t.Helper()
	for _, port := range ports {
		ok := false
		for _, p := range s.Ports {
			if p.Target == port && p.Published == fmt.Sprint(port) && p.HostIP == "127.0.0.1" {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s does not publish %d on 127.0.0.1:%d: %+v", s.Name, port, port, s.Ports)
		}
	}
}

// readRabbitConf reads a rabbitmq.conf (sysctl-like "key = value" lines,
// # comments) into a map.
func readRabbitConf(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read RabbitMQ config: %v", err)
	}
	conf := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s:%d: %q is not key = value", path, i+1, line)
		}
		conf[strings.TrimSpace(key)] = strings.TrimSpace(value)
	}
	return conf
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatalf("copy: %v", err)
	}
	writeFile(t, to, string(b))
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatalf("create %s: %v", filepath.Dir(path), err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}
