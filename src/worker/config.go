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

	// URL, when set, overrides Host, Port, User, Password and VHost. It is an
	// amqp:// or amqps:// URL (amqps implies TLS).
	URL string

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
//	BROKER_URL              an amqp:// or amqps:// URL; overrides the five above
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
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return cfg, nil
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

// uri resolves the config to a parsed URI with every default applied.
func (c Config) uri() (amqp.URI, error) {
	if c.URL != "" {
		u, err := parseURL(c.URL)
		if err != nil {
			return amqp.URI{}, fmt.Errorf("broker URL %q: %w", redact.URL(c.URL), err)
		}
		if c.TLS != nil && u.Scheme == "amqp" {
			u.Scheme = "amqps"
			if u.Port == 5672 {
				u.Port = 5671
			}
		}
		return u, nil
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

// addr is host:port of the broker, for messages.
func (c Config) addr() string {
	u, err := c.uri()
	if err != nil {
		return "(invalid address)"
	}
	return net.JoinHostPort(u.Host, strconv.Itoa(u.Port))
}
