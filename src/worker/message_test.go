package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// TestPublishMessage: to a queue route it sends Publish's envelope with the
// given id and headers; to an exchange that routes it nowhere it is
// confirmed (an event without subscribers); to a missing queue it fails
// with ErrNoRoute; data that is not JSON is refused before sending. A
// traced Client adds its trace context to a copy of the caller's headers.
func TestPublishMessage(t *testing.T) {
	requireBroker(t)
	tp, _, prop := tracing(t)
	client := worker.NewClient(dial(t, ""), worker.WithEncoding(worker.JSON), worker.WithTracing(tp, prop))
	t.Cleanup(func() { _ = client.Close() })
	ch := raw(t)
	q := route(t, "pubmsg")
	if _, err := ch.QueueDeclare(q, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	ex := testenv.Name("wt-pubmsg-x-")
	if err := ch.ExchangeDeclare(ex, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = raw(t).ExchangeDelete(ex, false, false) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	headers := map[string]any{"x-k": "v"}
	err := client.PublishMessage(ctx, worker.Message{RoutingKey: q, MessageID: "m-1", Headers: headers, Data: json.RawMessage(`{"a": 1}`)})
	if err != nil {
		t.Fatal(err)
	}
	if len(headers) != 1 {
		t.Errorf("PublishMessage changed the caller's headers: %v", headers)
	}
	var d amqp.Delivery
	for ok := false; !ok; {
		if d, ok, err = ch.Get(q, true); err != nil {
			t.Fatal(err)
		}
	}
	if string(d.Body) != `{"data":{"a":1}}` || d.MessageId != "m-1" || d.Headers["x-k"] != "v" || d.Headers["traceparent"] == nil || d.DeliveryMode != amqp.Persistent {
		t.Errorf("got body %s id %q headers %v mode %d", d.Body, d.MessageId, d.Headers, d.DeliveryMode)
	}
	if err := client.PublishMessage(ctx, worker.Message{Exchange: ex, RoutingKey: "nobody.listens", Data: json.RawMessage(`1`)}); err != nil {
		t.Errorf("event to an exchange without bindings: %v, want it confirmed", err)
	}
	if err := client.PublishMessage(ctx, worker.Message{RoutingKey: q + "-missing"}); !errors.Is(err, worker.ErrNoRoute) {
		t.Errorf("to a missing queue: %v, want ErrNoRoute", err)
	}
	if err := client.PublishMessage(ctx, worker.Message{RoutingKey: q, Data: json.RawMessage(`{not json`)}); err == nil {
		t.Error("data that is not JSON was sent")
	}
}
