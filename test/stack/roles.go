package stack

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"example.com/service/src/testenv"
)

// Roles are the two PostgreSQL roles of an Env, made by
// migrations/roles.sql exactly as a deployment makes them: the service runs
// as App (rows only), manage as Owner (the schema). So every e2e run checks
// that the service needs no more than those grants.
type Roles struct {
	Owner, OwnerPass string
	App, AppPass     string
}

const (
	ownerPrefix = "e2e_owner_"
	appPrefix   = "e2e_app_"
)

// newRoles creates the roles of database with migrations/roles.sql (run by
// psql, as the tests' superuser). They are dropped when the test ends,
// after the database; roles a killed run left behind are dropped first.
// Call it before the database exists (it only registers the cleanup then)
// and apply the returned function once it does.
func newRoles(t testing.TB, root string) (Roles, func(database string)) {
	t.Helper()
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatal("the e2e tests make the database roles with psql (migrations/roles.sql), and psql is not installed: install postgresql-client")
	}
	admin := testenv.Admin(t)
	dropStaleRoles(t, admin)
	r := Roles{
		Owner: testenv.OwnedName(ownerPrefix), OwnerPass: testenv.Name("pw"),
		App: testenv.OwnedName(appPrefix), AppPass: testenv.Name("pw"),
	}
	// Registered before the database's own cleanup, so it runs after it:
	// a role that still owns a database cannot be dropped.
	t.Cleanup(func() {
		for _, role := range []string{r.App, r.Owner} {
			if _, err := admin.ExecContext(context.Background(), "DROP ROLE IF EXISTS "+quoteIdent(role)); err != nil {
				t.Errorf("drop role %s: %v", role, err)
			}
		}
	})
	apply := func(database string) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, adminPass := testenv.DBAdmin()
		cmd := exec.CommandContext(ctx, psql, "-X", "-q",
			"-h", testenv.Env("DB_HOST", "127.0.0.1"), "-p", testenv.Env("DB_PORT", "5432"),
			"-U", admin, "-d", "postgres",
			"-v", "database="+database,
			"-v", "owner="+r.Owner, "-v", "owner_password="+r.OwnerPass,
			"-v", "app="+r.App, "-v", "app_password="+r.AppPass,
			"-f", filepath.Join(root, "migrations", "roles.sql"))
		cmd.Env = append(os.Environ(), "PGPASSWORD="+adminPass)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("migrations/roles.sql for database %s: %v\n%s", database, err, out)
		}
	}
	return r, apply
}

// dropStaleRoles drops the roles of runs whose process has exited and that
// own nothing any more (their databases are dropped first by
// testenv.CreateDatabase).
func dropStaleRoles(t testing.TB, admin *sql.DB) {
	t.Helper()
	var stale []string
	for _, name := range testenv.Strings(t, admin,
		`SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) OR starts_with(rolname, $2)`, ownerPrefix, appPrefix) {
		if testenv.Orphaned(name, ownerPrefix) || testenv.Orphaned(name, appPrefix) {
			stale = append(stale, name)
		}
	}
	for _, name := range stale {
		// Fails while the role still owns a database nobody has reaped
		// yet; the next run tries again.
		_, _ = admin.ExecContext(context.Background(), "DROP ROLE IF EXISTS "+quoteIdent(name))
	}
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// dbEnv is the environment that points a process at database as role, for
// manage too (DB_OWNER_USER, which a devcontainer sets to its own owner
// role, names the same role).
func dbEnv(database, role, password string) []string {
	return []string{
		"DB_NAME=" + database, "DB_USER=" + role, "DB_PASS=" + password,
		"DB_OWNER_USER=" + role, "DB_OWNER_PASS=" + password, fmt.Sprintf("DB_SSLMODE=%s", "disable"),
	}
}
