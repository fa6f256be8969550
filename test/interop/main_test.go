//go:build interop

// Package interop checks the Go service and the Go client against the
// Python fleet they must run beside: real processes built with
// cheese-drawer's lib-python-amqp-worker (the library the Python seed's
// services use), on the local RabbitMQ, each run in vhosts and databases of
// its own.
//
// It needs the library's checkout in INTEROP_PY_LIB, and a Python with
// aio-pika 8 and pika (INTEROP_PYTHON, default /usr/bin/python3; on Debian
// `apt-get install python3-aio-pika python3-pika`). Without INTEROP_PY_LIB it
// skips with one line. Run it with `go tool task test:interop`; it ends
// with the interop matrix, each cell works or fails with the reason.
//
// What it covers (issue 15, item 7):
//   - Python clients (the library's JSONGzipRPC and JSONGzipMaster, aio-pika's
//     plain-JSON JsonRPC and JsonMaster, the seed's pika helpers in gzip and
//     plain JSON) against every route of the Go service, success and error;
//   - the Go client against a Python RPC worker and a Python queue worker
//     (success, a Python exception, no such route);
//   - a Go and a Python replica sharing one RPC and one queue route under
//     1,000 calls, either starting first;
//   - the error envelopes of both, field by field;
//   - numbers (2^53+1, int64 limits, 10^30, decimals) and dates both ways.
package interop

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

var (
	bins   *stack.Binaries
	pyLib  string // INTEROP_PY_LIB
	python string // INTEROP_PYTHON
)

func TestMain(m *testing.M) {
	pyLib = os.Getenv("INTEROP_PY_LIB")
	if pyLib == "" {
		fmt.Println("test/interop: skipped: INTEROP_PY_LIB is not set; set it to a checkout of cheese-drawer/lib-python-amqp-worker " +
			"(e.g. INTEROP_PY_LIB=/work/shared/peers/lib-python-amqp-worker) to run the Go service against the Python library")
		os.Exit(0)
	}
	python = testenv.Env("INTEROP_PYTHON", "/usr/bin/python3")
	root, err := stack.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "test/interop:", err)
		os.Exit(1)
	}
	pyDir = filepath.Join(root, "test", "interop", "py")
	stack.Main(m, stack.Suite{
		Name:   "test/interop",
		Race:   true,
		Setup:  func() (func() error, error) { return nil, checkPython() },
		Report: func() { printMatrix(os.Stdout) },
	}, &bins)
}
