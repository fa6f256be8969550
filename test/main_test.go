// Package e2e drives the service from the outside, like the Python seed's
// test/integration: it builds the binary, starts it as a separate process
// against the local RabbitMQ (a vhost of its own) and PostgreSQL (a database
// of its own, schema from src/models), and talks to it over AMQP only, with
// the project's client and with a plain amqp091-go client that speaks the
// seed's gzip format.
package e2e

import (
	"testing"

	"example.com/service/test/stack"
)

// bins are the service and manage binaries, built once for every test.
var bins *stack.Binaries

func TestMain(m *testing.M) {
	stack.Main(m, stack.Suite{Name: "test/e2e", Race: true}, &bins)
}
