package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Message is a message for [Client.PublishMessage]: what a transactional
// outbox stores and later publishes, to a queue route or to any exchange.
type Message struct {
	// Exchange is "" for the default exchange, where RoutingKey is a queue
	// route's name (as [Client.Publish] sends); else the exchange (a topic
	// exchange of events, say) routes by RoutingKey.
	Exchange   string
	RoutingKey string
	// MessageID is the message's id, kept by every copy of it (an
	// idempotent consumer recognises a redelivery by it); "" makes one.
	MessageID string
	Headers   map[string]any // AMQP headers, nil for none
	// Data is the message's "data": valid JSON (nil means null).
	Data json.RawMessage
}

// PublishMessage sends m as a persistent {"data": m.Data} in the Client's
// encoding, the envelope [Client.Publish] sends, and returns once the
// broker confirmed it. To the default exchange it fails with an error
// matching ErrNoRoute when no queue named m.RoutingKey exists; another
// exchange that routes m nowhere drops it and confirms it (an event nobody
// subscribes to). To the Client's event exchange ([WithEventExchange],
// default [DefaultEventExchange]) m is an event named m.RoutingKey, as
// [Client.PublishEvent] sends it, and the exchange is declared first. When
// the connection drops before the confirm it is sent again once
// reconnected, with the same message id. With [WithTracing] the publish
// is a span whose parent is ctx's span or, when ctx has none (a relay
// publishing later), the trace context in m.Headers (traceparent, as
// outbox.Add records it).
func (c *Client) PublishMessage(ctx context.Context, m Message) (err error) {
	data := m.Data
	if data == nil {
		data = json.RawMessage("null")
	}
	if !json.Valid(data) {
		return fmt.Errorf("publish message %q to exchange %q with key %q: data is not valid JSON", m.MessageID, m.Exchange, m.RoutingKey)
	}
	body, err := encodeRequest(data)
	if err != nil {
		return fmt.Errorf("publish message %q to exchange %q with key %q: %w", m.MessageID, m.Exchange, m.RoutingKey, err)
	}
	body, ct := c.encoding.encode(body)
	pub := amqp.Publishing{ContentType: ct, DeliveryMode: amqp.Persistent, MessageId: m.MessageID, Body: body}
	if len(m.Headers) > 0 {
		// A copy: the send hooks (WithTracing) add to it, and m.Headers is
		// the caller's.
		pub.Headers = maps.Clone(amqp.Table(m.Headers))
		if err := pub.Headers.Validate(); err != nil {
			pub.Headers = tableOf(m.Headers)
			if err := pub.Headers.Validate(); err != nil {
				return fmt.Errorf("publish message %q to exchange %q with key %q: headers: %w", m.MessageID, m.Exchange, m.RoutingKey, err)
			}
		}
	}
	if m.Exchange != "" && m.Exchange == eventExchange(c.opts) {
		// The Client's event exchange, declared as PublishEvent does: a
		// publish to a missing exchange would close the channel.
		if err := c.declareEvents(ctx, m.Exchange); err != nil {
			return fmt.Errorf("publish message %q as event %q: %w", m.MessageID, m.RoutingKey, err)
		}
	}
	ctx, end := c.sending(ctx, "publish", m.RoutingKey, &pub)
	defer func() { end(err) }()
	return c.pub.publishTo(ctx, m.Exchange, m.RoutingKey, m.Exchange == "", pub)
}

// tableOf copies headers with nested map[string]any as amqp.Table and
// json.Number as int64 (or float64), the forms AMQP field tables take.
func tableOf(headers map[string]any) amqp.Table {
	t := make(amqp.Table, len(headers))
	for k, v := range headers {
		t[k] = fieldOf(v)
	}
	return t
}

func fieldOf(v any) any {
	switch v := v.(type) {
	case map[string]any:
		return tableOf(v)
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = fieldOf(x)
		}
		return out
	case json.Number:
		if n, err := v.Int64(); err == nil {
			return n
		}
		f, _ := v.Float64()
		return f
	}
	return v
}
