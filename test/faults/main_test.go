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
	"strings"
	"sync"
	"testing"
	"text/tabwriter"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

var bins *stack.Binaries

func TestMain(m *testing.M) {
	if err := testenv.CheckServices(); err != nil {
		fmt.Fprintf(os.Stderr, "fault tests cannot run:\n%v\n", err)
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
	os.Exit(code)
}

// row is one line of the closing table.
type row struct {
	fault                                      string
	sent, stored, lost, duplicated, deadLetter int
	note                                       string
}

var (
	tableMu sync.Mutex
	table   []row
)

func record(t *testing.T, r row) {
	t.Helper()
	t.Logf("%s: sent %d, stored %d, lost %d, duplicated %d, dead-lettered %d %s",
		r.fault, r.sent, r.stored, r.lost, r.duplicated, r.deadLetter, r.note)
	tableMu.Lock()
	defer tableMu.Unlock()
	table = append(table, r)
}

func printTable() {
	tableMu.Lock()
	defer tableMu.Unlock()
	if len(table) == 0 {
		printSecurityTable()
		return
	}
	var sb strings.Builder
	w := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "| fault\t| sent\t| stored\t| lost\t| duplicated\t| dead-lettered\t| note\t|")
	fmt.Fprintln(w, "|---\t|---\t|---\t|---\t|---\t|---\t|---\t|")
	for _, r := range table {
		fmt.Fprintf(w, "| %s\t| %d\t| %d\t| %d\t| %d\t| %d\t| %s\t|\n",
			r.fault, r.sent, r.stored, r.lost, r.duplicated, r.deadLetter, r.note)
	}
	_ = w.Flush()
	fmt.Print("\nFault table:\n" + sb.String())
	printSecurityTable()
}

func printSecurityTable() {
	if len(securityTable) == 0 {
		return
	}
	var sb strings.Builder
	w := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "| attack\t| reconnects\t| hello_world answered during it\t| dead letters\t| peak RSS MiB\t| note\t|")
	fmt.Fprintln(w, "|---\t|---\t|---\t|---\t|---\t|---\t|")
	for _, r := range securityTable {
		fmt.Fprintf(w, "| %s\t| %d\t| %d/%d\t| %d\t| %d\t| %s\t|\n",
			r.attack, r.reconnects, r.answered, r.probes, r.deadLetters, r.peakRSS, r.note)
	}
	_ = w.Flush()
	fmt.Print("\nSecurity table:\n" + sb.String())
}
