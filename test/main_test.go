// Package e2e drives the service from the outside, like the Python seed's
// test/integration: it builds the binary, starts it as a separate process
// against the local RabbitMQ (a vhost of its own) and PostgreSQL (a database
// of its own, schema from src/models), and talks to it over AMQP only, with
// the project's client and with a plain amqp091-go client that speaks the
// seed's gzip format.
package e2e

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

// bins are the service and manage binaries, built once for every test.
var bins *stack.Binaries

func TestMain(m *testing.M) {
	// Say which service is missing before anything else, instead of
	// failing every test with a timeout. With -short every test that needs
	// one skips itself (testenv.RequireBroker) and says so.
	flag.Parse()
	if err := testenv.CheckServices(); err != nil && !testing.Short() {
		fmt.Fprintf(os.Stderr, "e2e tests cannot run:\n%v\n", err)
		os.Exit(1)
	}
	b, err := stack.Build(true)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e tests cannot build the service: %v\n", err)
		os.Exit(1)
	}
	bins = b
	code := m.Run()
	b.Clean()
	os.Exit(code)
}
