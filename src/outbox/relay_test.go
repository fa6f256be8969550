package outbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/db"
	"example.com/service/src/outbox"
	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// TestRelayPublishesAfterCommit: messages recorded in a committed
// transaction reach their queue with their message id, data, headers and
// the Client.Publish envelope; those of a rolled back one never leave; the
// published rows are deleted; an exchange publish goes to the exchange.
func TestRelayPublishesAfterCommit(t *testing.T) {
	_, c, conn := setUp(t, "outbox-relay-")
	client := worker.NewClient(conn, worker.WithEncoding(worker.JSON))
	t.Cleanup(func() { _ = client.Close() })

	ch := testenv.Channel(t)
	queue := testenv.Name("outbox-relay-q-")
	exchange := testenv.Name("outbox-relay-x-")
	t.Cleanup(func() { _ = testenv.DeleteQueues(queue); _ = rawExchangeDelete(exchange) })
	if _, err := ch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(exchange, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(queue, "item.*", exchange, false, nil); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	var stuck string
	err := c.InTx(ctx, func(tx *db.Tx) error {
		var err error
		stuck, err = outbox.Publish(ctx, tx, queue+"-missing", 1)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var queued, event string
	err = c.InTx(ctx, func(tx *db.Tx) error {
		var err error
		if queued, err = outbox.Publish(ctx, tx, queue, map[string]any{"n": 1}); err != nil {
			return err
		}
		event, err = outbox.Add(ctx, tx, worker.Message{
			Exchange: exchange, RoutingKey: "item.created", MessageID: "event-1",
			Headers: map[string]any{"x-source": "test", "x-attempt": 3, "x-meta": map[string]any{"a": "b"}}, Data: json.RawMessage(`{"id": "a"}`),
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.InTx(ctx, func(tx *db.Tx) error {
		if _, err := outbox.Publish(ctx, tx, queue, "rolled back"); err != nil {
			t.Fatal(err)
		}
		return errRollback
	})
	if _, err := outbox.Publish(ctx, nil, queue, 1); err == nil {
		t.Error("Publish without a transaction succeeded")
	}

	// An event on the event exchange (declared by a first PublishEvent, so
	// that a queue can be bound to it here).
	if err := client.PublishEvent(ctx, "outbox.test.declare", nil); err != nil {
		t.Fatal(err)
	}
	eventKey := "outbox.test." + strings.ReplaceAll(queue, "-", "")
	if err := ch.QueueBind(queue, eventKey, worker.DefaultEventExchange, false, nil); err != nil {
		t.Fatal(err)
	}
	var named string
	if err := c.InTx(ctx, func(tx *db.Tx) error {
		var err error
		named, err = outbox.Event(ctx, tx, eventKey, map[string]string{"id": "b"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := outbox.Event(ctx, nil, "item.*", 1); err == nil {
		t.Error("an event named with a pattern was recorded")
	}
	relay := outbox.NewRelay(c, client, outbox.RelayConfig{Poll: time.Hour, Batch: 1}) // only NOTIFY wakes it
	if err := relay.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = relay.Shutdown(context.Background()) })

	got := map[string]amqp.Delivery{}
	deadline := time.Now().Add(20 * time.Second)
	for len(got) < 3 && time.Now().Before(deadline) {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			got[d.MessageId] = d
			continue
		}
		time.Sleep(20 * time.Millisecond)
	}
	q, ok := got[queued]
	if !ok || string(q.Body) != `{"data":{"n":1}}` || q.DeliveryMode != amqp.Persistent || q.ContentType != worker.ContentJSON {
		t.Errorf("queue message %s: %+v (found %v), want body {\"data\":{\"n\":1}}, persistent, JSON", queued, q, ok)
	}
	e, ok := got[event]
	if !ok || string(e.Body) != `{"data":{"id":"a"}}` || e.RoutingKey != "item.created" || e.Exchange != exchange || e.Headers["x-source"] != "test" ||
		e.Headers["x-attempt"] != int64(3) || fmt.Sprint(e.Headers["x-meta"]) != "map[a:b]" {
		t.Errorf("event %s: %+v (found %v)", event, e, ok)
	}
	if n, ok := got[named]; !ok || string(n.Body) != `{"data":{"id":"b"}}` || n.Exchange != worker.DefaultEventExchange || n.RoutingKey != eventKey {
		t.Errorf("event %s on %s: %+v (found %v)", named, worker.DefaultEventExchange, n, ok)
	}
	// The rolled back message never comes; the sent rows are gone.
	time.Sleep(300 * time.Millisecond)
	if d, ok, _ := ch.Get(queue, true); ok {
		t.Errorf("an extra message arrived: %s", d.Body)
	}
	// Only the message to the missing queue is left, with its failure.
	var left []struct {
		MessageID string `db:"message_id"`
		Attempts  int    `db:"attempts"`
		LastError string `db:"last_error"`
		Later     bool   `db:"later"`
	}
	if err := c.Select(ctx, &left, `SELECT message_id, attempts, coalesce(last_error, '') AS last_error, publish_after > now() AS later FROM outbox`); err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].MessageID != stuck || left[0].Attempts < 1 || !strings.Contains(left[0].LastError, "no such queue") || !left[0].Later {
		t.Errorf("left in the outbox: %+v; want only %s, with an attempt, its error and a later publish_after", left, stuck)
	}
}
