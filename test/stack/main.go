package stack

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"example.com/service/src/testenv"
)

// Suite is how a package of black-box tests runs (the e2e tests in test/,
// test/faults, test/cluster, test/interop): its TestMain calls Main.
type Suite struct {
	// Name starts every line Main prints: "test/faults".
	Name string
	// Race builds the service with the race detector; without it the
	// binary is as deployed (memory and timing figures without the race
	// detector's overhead).
	Race bool
	// Restarts takes testenv.LockRestarts for the whole run: the suite
	// restarts or loads the shared RabbitMQ and PostgreSQL, so no other
	// such run may overlap it.
	Restarts bool
	// Setup, when set, runs after the checks and the lock and before the
	// build (start a cluster, find Python); teardown, when not nil, runs
	// after the tests and Report, and its error fails the run.
	Setup func() (teardown func() error, err error)
	// Report, when set, prints the suite's closing table after the tests.
	Report func()
}

// Main runs the tests of m and exits with their status. First it says
// which service is missing, instead of failing every test with a timeout
// (with -short it does not check: each test that needs a service skips
// itself, testenv.RequireBroker, and says so); then it takes the restart
// lock, runs Setup and builds the binaries into *bins. After the tests it
// removes the binaries, runs Report and teardown, and releases the lock.
func Main(m *testing.M, s Suite, bins **Binaries) {
	flag.Parse()
	fail := func(what string, err error) {
		fmt.Fprintf(os.Stderr, "%s: %s: %v\n", s.Name, what, err)
		os.Exit(1) // exiting drops the restart lock too
	}
	if err := testenv.CheckServices(); err != nil && !testing.Short() {
		fail("the tests cannot run", err)
	}
	release := func() {}
	if s.Restarts {
		var err error
		release, err = testenv.LockRestarts(func(format string, args ...any) { fmt.Printf(s.Name+": "+format+"\n", args...) })
		if err != nil {
			fail("take the restart lock", err)
		}
	}
	var teardown func() error
	if s.Setup != nil {
		var err error
		if teardown, err = s.Setup(); err != nil {
			fail("set up", err)
		}
	}
	b, err := Build(s.Race)
	if err != nil {
		if teardown != nil {
			_ = teardown()
		}
		fail("build the service", err)
	}
	*bins = b
	code := m.Run()
	b.Clean()
	if s.Report != nil {
		s.Report()
	}
	if teardown != nil {
		if err := teardown(); err != nil {
			fmt.Fprintf(os.Stderr, "%s: tear down: %v\n", s.Name, err)
			code = 1
		}
	}
	release()
	os.Exit(code)
}
