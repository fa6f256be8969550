package worker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/internal/env"
	"example.com/service/src/internal/redact"
)

// Config holds the parameters of a RabbitMQ connection. The zero value means
// guest:guest@localhost:5672 on vhost "/".
type Config struct {
	Host     string // default "localhost"
	Port     int    // default 5672 (5671 when TLS is set)
	User     string // default "guest"
	Password string // default "guest"
	VHost    string // default "/"

	// Hosts lists the nodes of a RabbitMQ cluster, each "host" or
	// "host:port" (the port defaults to Port); when set, it replaces Host.
	// Dial and every reconnect try the nodes in turn, starting at a random
	// one so that replicas spread over the cluster.
	Hosts []string

	// URL, when set, overrides Host, Hosts, Port, User, Password and VHost.
	// It is an amqp:// or amqps:// URL (amqps implies TLS).
	URL string

	// URLs, when set, overrides URL: one URL per cluster node, tried as
	// Hosts are.
	URLs []string

	// TLS, when set, makes the connection use TLS with this configuration
	// (scheme amqps). It may be combined with URL. An empty ServerName is
	// the broker's host name.
	TLS *tls.Config
}

// ConfigFromEnv reads a Config from the environment:
//
//	BROKER_HOST             default localhost
//	BROKER_PORT             default 5672, or 5671 with TLS
//	BROKER_USER, BROKER_PASS  default guest, guest
//	BROKER_VHOST            default /
//	BROKER_HOSTS            cluster nodes, comma-separated host or host:port; replaces BROKER_HOST
//	BROKER_URL              an amqp:// or amqps:// URL; overrides the six above
//	BROKER_URLS             one URL per cluster node, comma-separated; overrides BROKER_URL
//	BROKER_TLS              true: connect with TLS (set by any BROKER_TLS_* below, or amqps)
//	BROKER_TLS_CA           PEM file of the CAs to trust (default: the system's)
//	BROKER_TLS_CERT, BROKER_TLS_KEY  PEM files of a client certificate and its key
//	BROKER_TLS_SERVER_NAME  the name the broker's certificate must carry (default: the host)
//
// An invalid value is an error naming the variable and what is wrong with
// it, never showing a password.
func ConfigFromEnv() (Config, error) {
	cfg := Config{
		Host:     env.Get("BROKER_HOST", "localhost"),
		User:     env.Get("BROKER_USER", "guest"),
		Password: env.Get("BROKER_PASS", "guest"),
		VHost:    env.Get("BROKER_VHOST", "/"),
		URL:      os.Getenv("BROKER_URL"),
		Hosts:    list(os.Getenv("BROKER_HOSTS")),
		URLs:     list(os.Getenv("BROKER_URLS")),
	}
	var errs []error
	tlsCfg, err := tlsFromEnv()
	if err != nil {
		errs = append(errs, err)
	}
	cfg.TLS = tlsCfg
	defPort := 5672
	if cfg.TLS != nil {
		defPort = 5671
	}
	if cfg.Port, err = env.Port("BROKER_PORT", defPort); err != nil {
		errs = append(errs, err)
	}
	if cfg.URL != "" {
		if _, err := parseURL(cfg.URL); err != nil {
			errs = append(errs, fmt.Errorf("BROKER_URL=%q: %w", redact.URL(cfg.URL), err))
		}
	}
	for i, u := range cfg.URLs {
		if _, err := parseURL(u); err != nil {
			errs = append(errs, fmt.Errorf("BROKER_URLS: URL %d (%q): %w", i+1, redact.URL(u), err))
		}
	}
	for _, h := range cfg.Hosts {
		if _, _, err := splitHost(h, cfg.Port); err != nil {
			errs = append(errs, fmt.Errorf("BROKER_HOSTS: %w", err))
		}
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return cfg, nil
}

// list splits a comma-separated list, dropping blanks; nil when empty.
func list(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// splitHost splits "host" or "host:port" ("[::1]:5672" for IPv6), the
// port defaulting to def.
func splitHost(h string, def int) (string, int, error) {
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		if strings.Contains(strings.Trim(h, "[]"), ":") && !strings.HasPrefix(h, "[") {
			return "", 0, fmt.Errorf("node %q: write an IPv6 address in brackets, [::1]:5672", h)
		}
		if strings.ContainsAny(h, "/@ ") {
			return "", 0, fmt.Errorf("node %q: want host or host:port", h)
		}
		return strings.Trim(h, "[]"), def, nil
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("node %q: port %q is not a port number (1-65535)", h, port)
	}
	if host == "" {
		return "", 0, fmt.Errorf("node %q: no host", h)
	}
	return host, n, nil
}

// tlsFromEnv builds the TLS configuration of the BROKER_TLS* variables, nil
// when none is set.
func tlsFromEnv() (*tls.Config, error) {
	on := os.Getenv("BROKER_TLS")
	ca, cert, key := os.Getenv("BROKER_TLS_CA"), os.Getenv("BROKER_TLS_CERT"), os.Getenv("BROKER_TLS_KEY")
	name := os.Getenv("BROKER_TLS_SERVER_NAME")
	switch strings.ToLower(on) {
	case "", "false", "0", "no":
		if ca == "" && cert == "" && key == "" && name == "" {
			return nil, nil
		}
		if on != "" {
			return nil, fmt.Errorf("BROKER_TLS=%q, but BROKER_TLS_CA, _CERT, _KEY or _SERVER_NAME is set: unset them or set BROKER_TLS=true", on)
		}
	case "true", "1", "yes":
	default:
		return nil, fmt.Errorf("BROKER_TLS=%q: want true or false", on)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: name}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("BROKER_TLS_CA=%q: %w", ca, err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("BROKER_TLS_CA=%q: no PEM certificate in the file", ca)
		}
	}
	if (cert == "") != (key == "") {
		return nil, errors.New("BROKER_TLS_CERT and BROKER_TLS_KEY go together: set both (a client certificate and its key) or neither")
	}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("BROKER_TLS_CERT=%q, BROKER_TLS_KEY=%q: %w", cert, key, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// parseURL parses an amqp:// or amqps:// URL. Its errors never repeat the
// URL or a part of it, since it may carry a password.
func parseURL(s string) (amqp.URI, error) {
	u, err := url.Parse(s)
	if err != nil {
		var esc url.EscapeError
		if errors.As(err, &esc) {
			return amqp.URI{}, errors.New("a % in it is not followed by two hex digits: percent-encode reserved characters of the user and password (% is %25, @ is %40, : is %3A, / is %2F)")
		}
		return amqp.URI{}, errors.New("not a valid URL (check the host and that the user and password are percent-encoded)")
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return amqp.URI{}, errors.New("not an amqp:// or amqps:// URL")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return amqp.URI{}, fmt.Errorf("port %q is not a port number (1-65535)", p)
		}
	}
	uri, err := amqp.ParseURI(s)
	if err != nil {
		return amqp.URI{}, errors.New("not a valid AMQP URL (see https://www.rabbitmq.com/docs/uri-spec)")
	}
	return uri, nil
}

// nodes resolves the config to the URI of each node, with every default
// applied: URLs, else URL, else Hosts (or Host) with the other fields.
func (c Config) nodes() ([]amqp.URI, error) {
	switch {
	case len(c.URLs) > 0:
		out := make([]amqp.URI, len(c.URLs))
		for i, s := range c.URLs {
			u, err := c.parse(s)
			if err != nil {
				return nil, err
			}
			out[i] = u
		}
		return out, nil
	case c.URL != "" || len(c.Hosts) == 0:
		u, err := c.uri()
		if err != nil {
			return nil, err
		}
		return []amqp.URI{u}, nil
	}
	base, err := c.uri()
	if err != nil {
		return nil, err
	}
	out := make([]amqp.URI, len(c.Hosts))
	for i, h := range c.Hosts {
		host, port, err := splitHost(h, base.Port)
		if err != nil {
			return nil, fmt.Errorf("broker hosts: %w", err)
		}
		out[i] = base
		out[i].Host, out[i].Port = host, port
	}
	return out, nil
}

// parse parses one broker URL, amqps when TLS is configured.
func (c Config) parse(s string) (amqp.URI, error) {
	u, err := parseURL(s)
	if err != nil {
		return amqp.URI{}, fmt.Errorf("broker URL %q: %w", redact.URL(s), err)
	}
	if c.TLS != nil && u.Scheme == "amqp" {
		u.Scheme = "amqps"
		if u.Port == 5672 {
			u.Port = 5671
		}
	}
	return u, nil
}

// uri resolves the config to the URI of its one node (URL, or Host), with
// every default applied.
func (c Config) uri() (amqp.URI, error) {
	if c.URL != "" {
		return c.parse(c.URL)
	}
	u := amqp.URI{Scheme: "amqp", Host: c.Host, Port: c.Port, Username: c.User, Password: c.Password, Vhost: c.VHost}
	if c.TLS != nil {
		u.Scheme = "amqps"
	}
	if u.Host == "" {
		u.Host = "localhost"
	}
	if u.Port == 0 {
		u.Port = 5672
		if c.TLS != nil {
			u.Port = 5671
		}
	}
	if u.Port < 1 || u.Port > 65535 {
		return amqp.URI{}, fmt.Errorf("broker port %d: not a port number (1-65535)", u.Port)
	}
	if u.Username == "" {
		u.Username = "guest"
	}
	if u.Password == "" && c.User == "" {
		u.Password = "guest"
	}
	if u.Vhost == "" {
		u.Vhost = "/"
	}
	return u, nil
}

// tlsConfig is the TLS configuration for u, nil without TLS.
func (c Config) tlsConfig(u amqp.URI) *tls.Config {
	if u.Scheme != "amqps" {
		return nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.TLS != nil {
		cfg = c.TLS.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = u.Host
	}
	return cfg
}

// addr is host:port of u, for messages.
func addr(u amqp.URI) string {
	return net.JoinHostPort(u.Host, strconv.Itoa(u.Port))
}
