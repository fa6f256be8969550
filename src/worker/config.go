package worker

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"

	amqp "github.com/rabbitmq/amqp091-go"
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
	// (scheme amqps). It may be combined with URL.
	TLS *tls.Config
}

// ConfigFromEnv reads a Config from BROKER_HOST (default "localhost"),
// BROKER_PORT (5672), BROKER_USER ("guest"), BROKER_PASS ("guest"),
// BROKER_VHOST ("/") and BROKER_URL (optional; overrides the others).
// An invalid value is an error naming the variable and its value.
func ConfigFromEnv() (Config, error) {
	cfg := Config{
		Host:     env("BROKER_HOST", "localhost"),
		User:     env("BROKER_USER", "guest"),
		Password: env("BROKER_PASS", "guest"),
		VHost:    env("BROKER_VHOST", "/"),
		URL:      os.Getenv("BROKER_URL"),
	}
	port := env("BROKER_PORT", "5672")
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return Config{}, fmt.Errorf("BROKER_PORT=%q: not a port number (1-65535)", port)
	}
	cfg.Port = p
	if cfg.URL != "" {
		if _, err := amqp.ParseURI(cfg.URL); err != nil {
			return Config{}, fmt.Errorf("BROKER_URL=%q: %w", redactURL(cfg.URL), err)
		}
	}
	return cfg, nil
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// uri resolves the config to a parsed URI with every default applied.
func (c Config) uri() (amqp.URI, error) {
	if c.URL != "" {
		u, err := amqp.ParseURI(c.URL)
		if err != nil {
			return amqp.URI{}, fmt.Errorf("broker URL %q: %w", redactURL(c.URL), err)
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

// Addr is host:port of the broker, for messages.
func (c Config) addr() string {
	u, err := c.uri()
	if err != nil {
		return "(invalid address)"
	}
	return net.JoinHostPort(u.Host, strconv.Itoa(u.Port))
}

// redactURL replaces the password of an amqp URL by "xxxxx" so it can be
// shown in errors and logs.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
