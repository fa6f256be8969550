package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/db"
	"example.com/service/src/models"
	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// scratchDB creates a database with the models' schema (inbox and outbox
// among them) plus the extra statements, and returns its URL and a
// function that drops it. It panics on failure: the examples use it too.
func scratchDB(extra ...string) (url string, drop func()) {
	ctx := context.Background()
	name, dropDB, err := testenv.ScratchDatabase("outboxtest_")
	if err != nil {
		panic(err)
	}
	drop = func() { _ = dropDB() }
	url = testenv.PostgresURL(name)
	c, err := db.Open(ctx, db.Config{URL: url})
	if err != nil {
		drop()
		panic(err)
	}
	defer c.Close()
	files, _ := fs.Glob(models.Schema, "*.sql")
	slices.Sort(files)
	var stmts []string
	for _, f := range files {
		b, _ := fs.ReadFile(models.Schema, f)
		stmts = append(stmts, string(b))
	}
	for _, s := range append(stmts, extra...) {
		if _, err := c.Exec(ctx, s); err != nil {
			drop()
			panic(fmt.Sprintf("schema of %s: %v", name, err))
		}
	}
	return url, drop
}

// openDB opens url, retrying for 30 s.
func openDB(url string) (*db.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return db.Open(ctx, db.Config{URL: url})
}

// dialBroker connects to the test broker.
func dialBroker(name string) (*worker.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return worker.Dial(ctx, worker.Config{URL: testenv.BrokerURL()}, worker.WithName(name))
}

var errRollback = errors.New("roll back")

func rawExchangeDelete(name string) error {
	conn, err := amqp.Dial(testenv.BrokerURL())
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	return ch.ExchangeDelete(name, false, false)
}

// setUp makes what most tests here need: a scratch database with the
// models' schema plus extra statements, a client of it and a broker
// connection named after prefix, all closed or dropped at cleanup.
func setUp(tb testing.TB, prefix string, extra ...string) (url string, c *db.Client, conn *worker.Conn) {
	tb.Helper()
	testenv.RequireBroker(tb)
	url, drop := scratchDB(extra...)
	tb.Cleanup(drop)
	c, err := openDB(url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	if conn, err = dialBroker(testenv.Name(prefix)); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return url, c, conn
}
