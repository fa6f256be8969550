//go:build faults

// Package faults injects faults into a running service and counts what
// survives: RabbitMQ and PostgreSQL restarts under load, SIGTERM with calls
// in flight, two replicas sharing the queues, and hostile input. It restarts
// the local services, so it runs on its own (`go tool task test:faults`),
// never in parallel with other tests, and needs rabbitmqctl and pg_ctlcluster
// on this machine. It ends with a table: fault, sent, stored, lost,
// duplicated, dead-lettered.
package faults

import (
	"fmt"
	"os"
	"testing"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

var bins *stack.Binaries

func TestMain(m *testing.M) {
	if err := testenv.CheckServices(); err != nil {
		fmt.Fprintf(os.Stderr, "fault tests cannot run:\n%v\n", err)
		os.Exit(1)
	}
	// They restart the shared RabbitMQ and PostgreSQL: one such run at a time.
	release, err := testenv.LockRestarts(func(format string, args ...any) { fmt.Printf("test/faults: "+format+"\n", args...) })
	if err != nil {
		fmt.Fprintln(os.Stderr, "test/faults:", err)
		os.Exit(1)
	}
	b, err := stack.Build(false) // as deployed: memory and volume figures without the race detector's overhead
	if err != nil {
		fmt.Fprintf(os.Stderr, "fault tests cannot build the service: %v\n", err)
		os.Exit(1)
	}
	bins = b
	code := m.Run()
	b.Clean()
	printTable()
	release() // (os.Exit paths above exit the process, which drops the lock too)
	os.Exit(code)
}

// row is one line of the closing table.
type row struct {
	fault                                      string
	sent, stored, lost, duplicated, deadLetter int
	note                                       string
}

var (
	faultTable    = stack.NewTable("Fault table", "fault", "sent", "stored", "lost", "duplicated", "dead-lettered", "note")
	securityTable = stack.NewTable("Security table", "attack", "reconnects", "hello_world answered during it", "dead letters", "peak RSS MiB", "note")
)

func record(t *testing.T, r row) {
	t.Helper()
	t.Logf("%s: sent %d, stored %d, lost %d, duplicated %d, dead-lettered %d %s",
		r.fault, r.sent, r.stored, r.lost, r.duplicated, r.deadLetter, r.note)
	faultTable.Add(r.fault, r.sent, r.stored, r.lost, r.duplicated, r.deadLetter, r.note)
}

func printTable() {
	faultTable.Print(os.Stdout)
	securityTable.Print(os.Stdout)
}
