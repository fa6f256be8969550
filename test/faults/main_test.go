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
	"os"
	"testing"

	"example.com/service/test/stack"
)

var bins *stack.Binaries

func TestMain(m *testing.M) {
	// They restart the shared RabbitMQ and PostgreSQL: one such run at a
	// time (Restarts), and the binary as deployed, for memory and volume
	// figures without the race detector's overhead.
	stack.Main(m, stack.Suite{Name: "test/faults", Restarts: true, Report: printTable}, &bins)
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
