// Package env reads configuration from environment variables, each error
// naming the variable, its value and what it accepts, so one look at a
// failed start says what to fix.
package env

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

// Get returns the value of key, or def when it is unset or empty.
func Get(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// Port returns key as a TCP port (1-65535), def when unset.
func Port(key string, def int) (int, error) {
	v := os.Getenv(key)
	if v == "" {
		return def, nil
	}
	p, err := strconv.Atoi(v)
	if err != nil || p < 1 || p > 65535 {
		return def, fmt.Errorf("%s=%q: not a port number (1-65535)", key, v)
	}
	return p, nil
}

// Duration returns key as a positive duration such as 10s or 1m, def when
// unset.
func Duration(key string, def time.Duration) (time.Duration, error) {
	v := os.Getenv(key)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return def, fmt.Errorf("%s=%q: want a positive duration such as 10s or 1m", key, v)
	}
	return d, nil
}

// OneOf returns key if it is one of allowed, def when unset.
func OneOf(key, def string, allowed ...string) (string, error) {
	v := os.Getenv(key)
	if v == "" {
		return def, nil
	}
	for _, a := range allowed {
		if v == a {
			return v, nil
		}
	}
	return def, fmt.Errorf("%s=%q: want one of %v", key, v, allowed)
}
