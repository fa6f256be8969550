package db

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"example.com/service/src/internal/env"
	"example.com/service/src/internal/redact"
)

// Config says where the PostgreSQL server is and how large the pool may grow.
// The zero value is usable: every empty field takes the default written in
// its comment.
type Config struct {
	Host     string // default "localhost"; a path (/var/run/postgresql) is a Unix socket directory
	Port     int    // default 5432
	User     string // default "postgres"
	Password string // default "" (no password)
	Database string // default "postgres"

	// URL, a postgres:// or postgresql:// URL, overrides Host, Port, User,
	// Password and Database when set. Query parameters (sslmode, ...) are
	// passed to the driver.
	URL string

	// SSLMode is libpq's sslmode: disable, allow, prefer, require, verify-ca
	// or verify-full. Empty: the URL's, else the driver's default (prefer,
	// which falls back to plaintext silently; the service sets verify-full
	// in production). SSLRootCert names a PEM file of the CAs to trust for
	// verify-ca and verify-full; SSLCert and SSLKey a client certificate.
	SSLMode     string
	SSLRootCert string
	SSLCert     string
	SSLKey      string

	// MaxOpenConns caps the connections in the pool; default 16.
	MaxOpenConns int
	// MaxIdleConns is how many idle connections are kept; default MaxOpenConns.
	MaxIdleConns int
	// ConnMaxLifetime closes connections older than this; default 30 minutes.
	ConnMaxLifetime time.Duration
	// ConnMaxIdleTime closes connections idle for longer than this; default 5 minutes.
	ConnMaxIdleTime time.Duration

	// QueryExecMode is pgx's default_query_exec_mode: cache_statement (the
	// driver's default: each statement is prepared once per connection),
	// cache_describe, describe_exec, exec or simple_protocol. Behind
	// PgBouncer in transaction pooling mode, whose server connections
	// change between transactions, prepared statements break: use exec
	// (one round trip more per query) or simple_protocol. Empty: the URL's,
	// else the driver's default.
	QueryExecMode string

	// QueryTracer, when set, is told of every statement (pgx's tracer
	// hook); [NewTracer] makes OpenTelemetry spans of them. Default none.
	QueryTracer pgx.QueryTracer

	// Logger receives the client's few log lines (connection retries, a
	// failed rollback); nil means slog.Default().
	Logger *slog.Logger
}

// Defaults of Config and of ConfigFromEnv.
const (
	DefaultHost            = "localhost"
	DefaultPort            = 5432
	DefaultUser            = "postgres"
	DefaultDatabase        = "postgres"
	DefaultMaxOpenConns    = 16
	DefaultConnMaxLifetime = 30 * time.Minute
	DefaultConnMaxIdleTime = 5 * time.Minute
)

// SSL modes, as libpq names them.
var sslModes = []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}

// ConfigFromEnv reads the connection parameters the service is deployed with:
// DB_HOST (default localhost), DB_PORT (5432), DB_USER (postgres), DB_PASS
// (postgres), DB_NAME (postgres), DB_URL (optional; overrides the five),
// DB_SSLMODE, DB_SSLROOTCERT, DB_SSLCERT and DB_SSLKEY (see [Config]).
// An empty variable counts as unset. An invalid value is an error naming the
// variable and the value (a URL with its password masked).
func ConfigFromEnv() (Config, error) {
	return configFromEnv("DB_USER", "DB_PASS")
}

// OwnerConfigFromEnv is ConfigFromEnv for the role that owns the schema
// (see migrations/roles.sql), which manage connects as: DB_OWNER_USER and
// DB_OWNER_PASS, when set, take the place of DB_USER and DB_PASS.
func OwnerConfigFromEnv() (Config, error) {
	if os.Getenv("DB_OWNER_USER") == "" {
		return ConfigFromEnv()
	}
	return configFromEnv("DB_OWNER_USER", "DB_OWNER_PASS")
}

func configFromEnv(userVar, passVar string) (Config, error) {
	c := Config{
		Host:        env.Get("DB_HOST", DefaultHost),
		User:        env.Get(userVar, DefaultUser),
		Password:    env.Get(passVar, "postgres"),
		Database:    env.Get("DB_NAME", DefaultDatabase),
		URL:         os.Getenv("DB_URL"),
		SSLMode:     os.Getenv("DB_SSLMODE"),
		SSLRootCert: os.Getenv("DB_SSLROOTCERT"),
		SSLCert:     os.Getenv("DB_SSLCERT"),
		SSLKey:      os.Getenv("DB_SSLKEY"),
	}
	var errs []error
	var err error
	if c.QueryExecMode, err = env.OneOf("DB_QUERY_EXEC_MODE", "", execModes...); err != nil {
		errs = append(errs, err)
	}
	if c.SSLMode != "" && !slices.Contains(sslModes, c.SSLMode) {
		errs = append(errs, fmt.Errorf("DB_SSLMODE=%q: want one of %s", c.SSLMode, strings.Join(sslModes, ", ")))
	}
	for name, path := range map[string]string{"DB_SSLROOTCERT": c.SSLRootCert, "DB_SSLCERT": c.SSLCert, "DB_SSLKEY": c.SSLKey} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", name, path, err))
		}
	}
	if (c.SSLCert == "") != (c.SSLKey == "") {
		errs = append(errs, errors.New("DB_SSLCERT and DB_SSLKEY go together: set both (a client certificate and its key) or neither"))
	}
	if c.Port, err = env.Port("DB_PORT", DefaultPort); err != nil {
		errs = append(errs, err)
	}
	if strings.ContainsAny(c.Host, " ") || (strings.Contains(c.Host, "/") && !strings.HasPrefix(c.Host, "/")) {
		errs = append(errs, fmt.Errorf("DB_HOST=%q: not a host name, address or socket directory", c.Host))
	}
	if c.URL != "" {
		if _, err := parseURL(c.URL); err != nil {
			errs = append(errs, fmt.Errorf("DB_URL=%q: %w", redact.URL(c.URL), err))
		}
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return c, nil
}

// ConnString returns the postgres:// URL the driver connects with: URL when
// set, otherwise one built from the fields and their defaults; the SSL
// fields and QueryExecMode are added as its parameters (a URL's own take
// precedence). It
// contains the password: do not log it (log String instead).
func (c Config) ConnString() string {
	if c.URL != "" {
		u, err := parseURL(c.URL)
		if err != nil {
			return c.URL // Open reports the error
		}
		q := u.Query()
		c.params(q)
		u.RawQuery = q.Encode()
		return u.String()
	}
	u := url.URL{Scheme: "postgres", Host: net.JoinHostPort(c.host(), strconv.Itoa(c.port())), Path: "/" + c.database()}
	q := url.Values{}
	if strings.HasPrefix(c.host(), "/") { // Unix socket directory: passed as a parameter
		u.Host = ""
		q.Set("host", c.host())
		q.Set("port", strconv.Itoa(c.port()))
	}
	c.params(q)
	u.RawQuery = q.Encode()
	if c.Password != "" {
		u.User = url.UserPassword(c.user(), c.Password)
	} else {
		u.User = url.User(c.user())
	}
	return u.String()
}

// execModes are the values of QueryExecMode.
var execModes = []string{"cache_statement", "cache_describe", "describe_exec", "exec", "simple_protocol"}

// params adds the SSL fields and the query exec mode to q where q does
// not set them already.
func (c Config) params(q url.Values) {
	for k, v := range map[string]string{
		"sslmode": c.SSLMode, "sslrootcert": c.SSLRootCert, "sslcert": c.SSLCert, "sslkey": c.SSLKey,
		"default_query_exec_mode": c.QueryExecMode,
	} {
		if v != "" && q.Get(k) == "" {
			q.Set(k, v)
		}
	}
}

// WithDatabase returns a copy of c that points at database name on the same
// server, with the same credentials (in the URL form too).
func (c Config) WithDatabase(name string) Config {
	if c.URL != "" {
		if u, err := parseURL(c.URL); err == nil {
			u.Path = "/" + name
			u.RawPath = ""
			c.URL = u.String()
			return c
		}
	}
	c.Database = name
	return c
}

// Target returns the host, port, database and user that c connects to,
// taking URL into account. For a URL that does not parse, it returns the
// error Open would fail with.
func (c Config) Target() (host string, port int, database, user string, err error) {
	if c.URL == "" {
		return c.host(), c.port(), c.database(), c.user(), nil
	}
	u, err := parseURL(c.URL)
	if err != nil {
		return "", 0, "", "", fmt.Errorf("database URL %q: %w", redact.URL(c.URL), err)
	}
	host, port = u.Hostname(), DefaultPort
	if host == "" {
		host = DefaultHost
	}
	if p := u.Port(); p != "" {
		port, _ = strconv.Atoi(p) // parseURL checked it
	}
	database = strings.TrimPrefix(u.Path, "/")
	if database == "" {
		database = DefaultDatabase
	}
	user = u.User.Username()
	if user == "" {
		user = DefaultUser
	}
	return host, port, database, user, nil
}

// String names the server, database and user, never the password:
// `127.0.0.1:5432 (database "app", user "postgres")`.
func (c Config) String() string {
	host, port, database, user, err := c.Target()
	if err != nil {
		return "invalid database URL " + strconv.Quote(redact.URL(c.URL))
	}
	return fmt.Sprintf("%s (database %q, user %q)", net.JoinHostPort(host, strconv.Itoa(port)), database, user)
}

func (c Config) host() string     { return or(c.Host, DefaultHost) }
func (c Config) user() string     { return or(c.User, DefaultUser) }
func (c Config) database() string { return or(c.Database, DefaultDatabase) }
func (c Config) port() int {
	if c.Port == 0 {
		return DefaultPort
	}
	return c.Port
}

func (c Config) maxOpen() int {
	if c.MaxOpenConns <= 0 {
		return DefaultMaxOpenConns
	}
	return c.MaxOpenConns
}

func (c Config) maxIdle() int {
	if c.MaxIdleConns <= 0 {
		return c.maxOpen()
	}
	return c.MaxIdleConns
}

func (c Config) connMaxLifetime() time.Duration {
	if c.ConnMaxLifetime <= 0 {
		return DefaultConnMaxLifetime
	}
	return c.ConnMaxLifetime
}

func (c Config) connMaxIdleTime() time.Duration {
	if c.ConnMaxIdleTime <= 0 {
		return DefaultConnMaxIdleTime
	}
	return c.ConnMaxIdleTime
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// parseURL accepts postgres:// and postgresql:// URLs with a valid port.
func parseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		// url.Error repeats the URL with its password: keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("not a URL: %w", err)
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return nil, errors.New("not a postgres:// URL")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("port %q is not a port number (1-65535)", p)
		}
	}
	return u, nil
}
