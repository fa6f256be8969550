package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"example.com/service/src/db"
	"example.com/service/src/worker"
)

func TestLoadConfigDefaults(t *testing.T) {
	for _, key := range []string{"MODE", "BROKER_HOST", "BROKER_PORT", "BROKER_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_URL", "START_TIMEOUT", "DRAIN_TIMEOUT"} {
		t.Setenv(key, "")
	}
	cfg, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Mode != "development" || cfg.StartTimeout != 30*time.Second || cfg.DrainTimeout != 10*time.Second {
		t.Errorf("defaults: mode %q, start %s, drain %s", cfg.Mode, cfg.StartTimeout, cfg.DrainTimeout)
	}
	if cfg.Broker.Host != "localhost" || cfg.Broker.Port != 5672 || cfg.Database.Port != 5432 {
		t.Errorf("defaults: broker %s:%d, database port %d", cfg.Broker.Host, cfg.Broker.Port, cfg.Database.Port)
	}
}

// Every invalid variable is named at once, so one restart fixes them all.
func TestLoadConfigNamesEveryInvalidVariable(t *testing.T) {
	t.Setenv("MODE", "staging")
	t.Setenv("BROKER_PORT", "amqp")
	t.Setenv("DB_PORT", "0")
	t.Setenv("START_TIMEOUT", "-1s")
	t.Setenv("DRAIN_TIMEOUT", "soon")
	_, err := loadConfig()
	if err == nil {
		t.Fatal("invalid configuration accepted")
	}
	for _, want := range []string{`MODE="staging"`, `BROKER_PORT="amqp"`, `DB_PORT="0"`, `START_TIMEOUT="-1s"`, `DRAIN_TIMEOUT="soon"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestProductionMode(t *testing.T) {
	t.Setenv("MODE", "production")
	for _, key := range []string{"BROKER_URL", "DB_URL", "DB_SSLMODE"} {
		t.Setenv(key, "")
	}
	// Explicit credentials are taken, even the development defaults.
	for key, v := range map[string]string{"BROKER_USER": "guest", "BROKER_PASS": "guest", "DB_USER": "app", "DB_PASS": "secret"} {
		t.Setenv(key, v)
	}
	cfg, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.development() {
		t.Error("MODE=production is treated as development")
	}
	if cfg.Database.SSLMode != "verify-full" {
		t.Errorf("production DB_SSLMODE defaults to %q, want verify-full (no silent plaintext)", cfg.Database.SSLMode)
	}
	if cfg.QueueType != "quorum" || cfg.RPCQueueType != "classic" {
		t.Errorf("queue types %q (queue routes), %q (RPC routes), want quorum and classic", cfg.QueueType, cfg.RPCQueueType)
	}
}

// Production mode takes no default credentials: each unset one is named.
func TestProductionRefusesDefaultCredentials(t *testing.T) {
	t.Setenv("MODE", "production")
	for _, key := range []string{"BROKER_URL", "DB_URL", "BROKER_PASS", "DB_USER", "DB_PASS"} {
		t.Setenv(key, "")
	}
	t.Setenv("BROKER_USER", "svc")
	_, err := loadConfig()
	if err == nil {
		t.Fatal("production mode started with default credentials")
	}
	for _, want := range []string{"BROKER_PASS not set", "DB_USER and DB_PASS not set", "or BROKER_URL", "or DB_URL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "BROKER_USER and BROKER_PASS not set") {
		t.Errorf("error %q says BROKER_USER is unset, and it is set", err)
	}
	// A URL carries its own credentials.
	t.Setenv("BROKER_URL", "amqp://svc:pw@broker:5672/")
	t.Setenv("DB_URL", "postgres://app:pw@db:5432/service")
	if _, err := loadConfig(); err != nil {
		t.Errorf("with BROKER_URL and DB_URL: %v", err)
	}
}

func TestQueueTypeFromEnv(t *testing.T) {
	t.Setenv("MODE", "")
	t.Setenv("BROKER_QUEUE_TYPE", "classic")
	t.Setenv("BROKER_RPC_QUEUE_TYPE", "quorum")
	cfg, err := loadConfig()
	if err != nil || cfg.QueueType != "classic" || cfg.RPCQueueType != "quorum" {
		t.Fatalf("queue types %q, %q (%v)", cfg.QueueType, cfg.RPCQueueType, err)
	}
	t.Setenv("BROKER_QUEUE_TYPE", "stream")
	if _, err := loadConfig(); err == nil || !strings.Contains(err.Error(), `BROKER_QUEUE_TYPE="stream"`) {
		t.Errorf("BROKER_QUEUE_TYPE=stream: %v", err)
	}
}

func TestRetryModeFromEnv(t *testing.T) {
	if cfg, err := loadConfig(); err != nil || cfg.RetryInBroker {
		t.Fatalf("default: RetryInBroker %v, %v; want the worker's waits", cfg.RetryInBroker, err)
	}
	t.Setenv("BROKER_RETRY", "broker")
	if cfg, err := loadConfig(); err != nil || !cfg.RetryInBroker {
		t.Fatalf("BROKER_RETRY=broker: RetryInBroker %v, %v", cfg.RetryInBroker, err)
	}
	t.Setenv("BROKER_RETRY", "later")
	if _, err := loadConfig(); err == nil || !strings.Contains(err.Error(), `BROKER_RETRY="later"`) {
		t.Errorf("BROKER_RETRY=later: %v", err)
	}
}

func TestPreview(t *testing.T) {
	long := []byte(`"` + strings.Repeat("é", 300) + `"`)
	p := preview(long, 200)
	if len(p) > 203 || !strings.HasSuffix(p, "...") || !utf8.ValidString(p) {
		t.Errorf("preview of %d bytes = %d bytes %q", len(long), len(p), p)
	}
	if preview([]byte(`{"a":1}`), 200) != `{"a":1}` {
		t.Error("a short payload is not shown whole")
	}
}

func TestTookForever(t *testing.T) {
	start := time.Now()
	got, err := tookForever(context.Background(), "foo")
	if err != nil || got != "foo that took forever" {
		t.Fatalf("tookForever = %q, %v", got, err)
	}
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("returned after %s, want about a second", took)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := tookForever(ctx, "foo"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("with an expired caller: %v, want DeadlineExceeded", err)
	}
}

func TestAddBarLeavesItsInputAlone(t *testing.T) {
	in := map[string]any{"foo": 1.0}
	out, err := addBar(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if out["bar"] != "baz" || out["foo"] != 1.0 || len(in) != 1 {
		t.Errorf("addBar(%v) = %v", in, out)
	}
	for _, data := range []any{nil, "x", []any{1.0}} {
		if _, err := addBar(context.Background(), data); errorType(err) != "TypeError" {
			t.Errorf("addBar(%v) = %v, want a TypeError, as the seed's route raised", data, err)
		}
	}
}

func TestNewItemRules(t *testing.T) {
	for _, tc := range []struct {
		json, wantErr string
	}{
		{`{"string": "ok", "integer": 3, "json": {"a": 1}}`, ""},
		{`{"string": ""}`, ""},
		{`{"integer": 3}`, `"string" is missing`},
		{`{"string": "` + strings.Repeat("é", 256) + `"}`, "256 characters, at most 255"},
	} {
		var in newItem
		if err := json.Unmarshal([]byte(tc.json), &in); err != nil {
			t.Fatal(err)
		}
		item, err := in.toItem()
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: %v", tc.json, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || errorType(err) != "BadRequest"):
			t.Errorf("%s: error %v, want a BadRequest saying %q", tc.json, err, tc.wantErr)
		case tc.wantErr == "" && in.String != nil && item.String != *in.String:
			t.Errorf("%s: item %+v", tc.json, item)
		}
	}
}

func TestItemChangesRules(t *testing.T) {
	id := uuid.New()
	for _, tc := range []struct {
		in      itemChanges
		wantErr string
	}{
		{itemChanges{ID: id, Changes: map[string]json.RawMessage{"integer": json.RawMessage("1")}}, ""},
		{itemChanges{Changes: map[string]json.RawMessage{"integer": json.RawMessage("1")}}, `"_id" is missing`},
		{itemChanges{ID: id}, "nothing to update"},
		{itemChanges{ID: id, Changes: map[string]json.RawMessage{"_id": json.RawMessage("null")}}, "cannot be changed"},
	} {
		err := tc.in.check()
		if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("check(%+v) = %v, want %q", tc.in, err, tc.wantErr)
		}
	}
	if _, err := wantString(nil); err == nil || errorType(err) != "Exception" || !strings.HasPrefix(err.Error(), "No Message") {
		t.Errorf("wantString(nil) = %v, want the seed's Exception", err)
	}
}

// Errors reach the wire named in one place, errorType: the database's
// errors as the seed named them, an error's own type first.
func TestErrorType(t *testing.T) {
	for err, want := range map[error]string{
		fmt.Errorf("read: %w", &db.NotFoundError{Table: "t", ID: 1}):   "NotFound",
		fmt.Errorf("create: %w", &db.ConflictError{Table: "t"}):        "Conflict",
		fmt.Errorf("update: %w", &db.InvalidError{Reason: "too long"}): "BadRequest",
		badRequest("no string"):                                       "BadRequest",
		fmt.Errorf("wrapped: %w", willErrorErr()):                     "Exception",
		errors.New("permission denied for table example_item"):        "Error",
		worker.Errorf("Unavailable", "down: %w", &db.NotFoundError{}): "Unavailable",
	} {
		if got := errorType(err); got != want {
			t.Errorf("errorType(%v) = %q, want %q", err, got, want)
		}
	}
}

func willErrorErr() error {
	_, err := willError(context.Background(), "x")
	return err
}
