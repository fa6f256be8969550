package main

import (
	"strings"
	"testing"
	"time"

	"example.com/service/src/outbox"
)

// The inbox and outbox settings: defaults, values taken, and invalid ones
// named with the rest.
func TestOutboxConfig(t *testing.T) {
	for _, key := range []string{"INBOX_RETENTION", "INBOX_PRUNE_EVERY", "OUTBOX_POLL"} {
		t.Setenv(key, "")
	}
	cfg, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Inbox.Retention != outbox.DefaultInboxRetention || cfg.Inbox.PruneEvery != time.Hour || cfg.Relay.Poll != 5*time.Second {
		t.Errorf("defaults: retention %s, prune every %s, poll %s", cfg.Inbox.Retention, cfg.Inbox.PruneEvery, cfg.Relay.Poll)
	}
	t.Setenv("INBOX_RETENTION", "48h")
	t.Setenv("INBOX_PRUNE_EVERY", "10m")
	t.Setenv("OUTBOX_POLL", "1s")
	if cfg, err = loadConfig(); err != nil || cfg.Inbox.Retention != 48*time.Hour || cfg.Inbox.PruneEvery != 10*time.Minute || cfg.Relay.Poll != time.Second {
		t.Errorf("set: %+v %+v, %v", cfg.Inbox, cfg.Relay, err)
	}
	t.Setenv("INBOX_RETENTION", "a week")
	t.Setenv("OUTBOX_POLL", "-1s")
	_, err = loadConfig()
	for _, want := range []string{`INBOX_RETENTION="a week"`, `OUTBOX_POLL="-1s"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}
