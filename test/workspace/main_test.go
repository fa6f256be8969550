package workspace_test

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"example.com/service/src/testenv"
)

// TestMain stops at once, naming the unreachable service, when RabbitMQ or
// PostgreSQL is down: the hot-reload test needs both, and a clear line beats
// a minute of other tests first. Under -short only the file checks run, and
// they need neither.
func TestMain(m *testing.M) {
	flag.Parse()
	if !testing.Short() {
		if err := testenv.CheckServices(); err != nil {
			fmt.Fprintf(os.Stderr, "workspace tests cannot run (use -short for the file checks alone):\n%v\n", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}
