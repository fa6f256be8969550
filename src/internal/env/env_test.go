package env_test

import (
	"testing"
	"time"

	"example.com/service/src/internal/env"
)

func TestReaders(t *testing.T) {
	for k, v := range map[string]string{
		"E_EMPTY": "", "E_PORT": "5671", "E_BADPORT": "70000",
		"E_DUR": "1m", "E_BADDUR": "-1s", "E_MODE": "staging",
	} {
		t.Setenv(k, v)
	}
	if env.Get("E_EMPTY", "def") != "def" || env.Get("E_PORT", "x") != "5671" {
		t.Error("Get")
	}
	if p, err := env.Port("E_PORT", 1); p != 5671 || err != nil {
		t.Errorf("Port = %d, %v", p, err)
	}
	if _, err := env.Port("E_BADPORT", 1); err == nil || err.Error() != `E_BADPORT="70000": not a port number (1-65535)` {
		t.Errorf("bad port: %v", err)
	}
	if d, err := env.Duration("E_DUR", 0); d != time.Minute || err != nil {
		t.Errorf("Duration = %v, %v", d, err)
	}
	if _, err := env.Duration("E_BADDUR", 0); err == nil {
		t.Error("a negative duration was taken")
	}
	if _, err := env.OneOf("E_MODE", "development", "development", "production"); err == nil || err.Error() != `E_MODE="staging": want one of [development production]` {
		t.Errorf("OneOf: %v", err)
	}
}
