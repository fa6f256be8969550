package redact_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"example.com/service/src/internal/redact"
)

func TestURLs(t *testing.T) {
	for in, want := range map[string]string{
		`BROKER_URL="amqp://svc:s3cr3t@host:5672/v"`:          `BROKER_URL="amqp://svc:xxxxx@host:5672/v"`,
		"bad escape amqp://svc:s3cr3t%zz@127.0.0.1:5672/":     "bad escape amqp://svc:xxxxx@127.0.0.1:5672/",
		"two: postgres://a:b@h/db and amqps://c:d@h2/":        "two: postgres://a:xxxxx@h/db and amqps://c:xxxxx@h2/",
		"no password amqp://svc@host/ or http://example.com/": "no password amqp://svc@host/ or http://example.com/",
		"plain text, no URL":                                  "plain text, no URL",
	} {
		if got := redact.URLs(in); got != want {
			t.Errorf("URLs(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestURL(t *testing.T) {
	for in, want := range map[string]string{
		"amqp://svc:s3cr3t@host:5672/v": "amqp://svc:xxxxx@host:5672/v",
		"postgres://app@db/app":         "postgres://app@db/app",
		"://hunter2":                    redact.Unparsable,
		"amqp://svc:s3cr3t%zz@host/":    redact.Unparsable,
	} {
		if got := redact.URL(in); got != want {
			t.Errorf("URL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSecrets(t *testing.T) {
	got := redact.Secrets("user=app password=hunter22 host=db; pwd='a b'; token hunter22-x", "hunter22-x")
	if strings.Contains(got, "hunter22") || strings.Contains(got, "a b") {
		t.Errorf("Secrets left a password: %q", got)
	}
	if !strings.Contains(got, "user=app") || !strings.Contains(got, "host=db") {
		t.Errorf("Secrets masked more than passwords: %q", got)
	}
	// Short development defaults are not masked by value: "guest" is also
	// a user name.
	if got := redact.Secrets("cannot reach RabbitMQ as guest", "guest"); got != "cannot reach RabbitMQ as guest" {
		t.Errorf("Secrets = %q", got)
	}
}

func TestHandler(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(redact.Handler(slog.NewTextHandler(&buf, nil), "long-secret-value"))
	log.With("url", "amqp://u:p4ss@h/").Info("connecting to postgres://u:p4ss@db/x",
		"err", errors.New("dial amqp://u:p4ss@h/: refused"),
		slog.Group("g", "inner", "value long-secret-value"),
		"stringer", fmt.Stringer(stringer("postgres://u:p4ss@db/")))
	out := buf.String()
	if strings.Contains(out, "p4ss") || strings.Contains(out, "long-secret-value") {
		t.Errorf("a secret reached the log: %s", out)
	}
	if strings.Count(out, "xxxxx") != 5 {
		t.Errorf("want 5 masked secrets in %s", out)
	}
}

type stringer string

func (s stringer) String() string { return string(s) }
