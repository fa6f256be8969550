package outbox_test

import (
	"context"
	"fmt"
	"time"

	"example.com/service/src/db"
	"example.com/service/src/outbox"
	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// A handler records a message in its transaction; the relay publishes it
// after the commit; the idempotent route it goes to stores its effect once,
// even when the same message (same id) arrives twice.
func ExampleInbox_Idempotent() {
	url, drop := scratchDB(`CREATE TABLE greeting (name text NOT NULL)`) // set-up: a database with the models' tables
	defer drop()
	route := testenv.Name("example-greet-")
	defer testenv.DeleteQueues(route, route+worker.DeadLetterSuffix)
	ctx := context.Background()
	database, _ := openDB(url)
	defer database.Close()
	conn, _ := dialBroker("outbox example")
	defer conn.Close()

	// The consumer: an idempotent queue route writing through the
	// transaction the inbox opened.
	inbox := outbox.NewInbox(database, outbox.InboxConfig{})
	queue := worker.NewQueue(conn)
	queue.Handle(route, worker.Job(func(ctx context.Context, name string) error {
		tx, _ := db.TxFrom(ctx)
		_, err := tx.Exec(ctx, `INSERT INTO greeting (name) VALUES ($1)`, name)
		return err
	}), inbox.Idempotent())
	_ = queue.Start(ctx)
	defer queue.Shutdown(ctx)

	// The producer: a message recorded in a transaction, published by the
	// relay once it commits.
	client := worker.NewClient(conn)
	defer client.Close()
	relay := outbox.NewRelay(database, client, outbox.RelayConfig{})
	_ = relay.Start(ctx)
	defer relay.Shutdown(ctx)
	var id string
	err := database.InTx(ctx, func(tx *db.Tx) error {
		var err error
		id, err = outbox.Publish(ctx, tx, route, "world")
		return err
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	// The same message again, as a redelivery would bring it.
	_ = client.PublishMessage(ctx, worker.Message{RoutingKey: route, MessageID: id, Data: []byte(`"world"`)})

	var n int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		_ = database.Get(ctx, &n, `SELECT count(*) FROM greeting`)
		if n > 0 && inbox.Skipped() == 1 {
			break
		}
	}
	fmt.Println("greetings stored:", n, "- copies skipped:", inbox.Skipped())
	// Output: greetings stored: 1 - copies skipped: 1
}
