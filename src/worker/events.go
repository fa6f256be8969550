package worker

import (
	"context"
	"fmt"
	"strings"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultEventExchange is the durable topic exchange every service of a
// fleet publishes its events to and subscribes from, unless
// [WithEventExchange] names another.
const DefaultEventExchange = "events"

// HeaderEvent carries an event's name on the copies the worker makes of it
// (a delayed retry, a dead letter), which travel through the default
// exchange and so lose the routing key that named it.
const HeaderEvent = "x-event"

// EventOption configures both ends of events: an [Events] worker and a
// [Client].
type EventOption interface {
	QueueOption
	ClientOption
}

type eventOption func(*options)

func (f eventOption) applyQueue(o *options)  { f(o) }
func (f eventOption) applyClient(o *options) { f(o) }

// WithEventExchange sets the topic exchange events are published to and
// subscribed from. Default [DefaultEventExchange]. Every service of a fleet
// must use the same name, or its events reach no one.
func WithEventExchange(name string) EventOption {
	return eventOption(func(o *options) { o.exchange = name })
}

func eventExchange(o options) string {
	if o.exchange == "" {
		return DefaultEventExchange
	}
	return o.exchange
}

// SubscriptionQueue is the name of the queue of service's subscription to
// pattern: "<service>:<pattern>", e.g. "billing:item.*". Its dead-letter
// queue is that name with [DeadLetterSuffix].
func SubscriptionQueue(service, pattern string) string { return service + ":" + pattern }

// Events is a publish/subscribe worker: each subscription (Handle) of a
// service is a durable queue, [SubscriptionQueue](service, pattern), bound
// to the event exchange ([WithEventExchange]) with a topic pattern:
// "item.created" matches one event, "item.*" one word after "item.", and
// "item.#" any number of words. Every subscribing service gets its own copy
// of each event it matches; the replicas of one service (the same service
// name) share their subscription's queue, so each event runs once per
// service.
//
// A subscription's queue is a work queue in every other way: quorum unless
// [WithQueueType], the same envelope, retries ([WithRetry]) and dead
// letters to "<queue>.dlq" as [Queue] routes. A handler learns which event
// it got from [Request.Event].
type Events struct {
	worker
	service string
}

// NewEvents returns an Events worker on conn for the subscriptions of the
// service named service (it names their queues). It panics when service is
// empty or contains ':'.
func NewEvents(conn *Conn, service string, opts ...QueueOption) *Events {
	if service == "" || strings.Contains(service, ":") {
		panic(fmt.Sprintf("worker: NewEvents(%q): the service name names its subscription queues; give a non-empty name without ':'", service))
	}
	s := newServer(conn, kindQueue, queueOptions(opts))
	s.exchange = eventExchange(s.opts)
	s.bindings = map[string]string{}
	return &Events{worker{s}, service}
}

// Handle subscribes h to the events matching pattern, inside mws, as Handle
// registers a route of an [RPC] worker. It panics when pattern is not a
// topic pattern (empty, an empty word, or over 255 bytes), is subscribed
// twice, or the worker has started.
func (e *Events) Handle(pattern string, h Handler, mws ...Middleware) {
	if err := checkTopic(pattern, true); err != nil {
		panic("worker: Events.Handle: " + err.Error())
	}
	queue := SubscriptionQueue(e.service, pattern)
	e.s.handle(queue, h, mws)
	e.s.mu.Lock()
	e.s.bindings[queue] = pattern
	e.s.mu.Unlock()
}

// HandleFunc subscribes f to pattern, like Handle(pattern, HandlerFunc(f)).
func (e *Events) HandleFunc(pattern string, f func(ctx context.Context, req *Request) ([]byte, error), mws ...Middleware) {
	e.Handle(pattern, HandlerFunc(f), mws...)
}

// checkTopic checks an event name (pattern false: no wildcards) or a
// subscription pattern.
func checkTopic(name string, pattern bool) error {
	what := "event name"
	if pattern {
		what = "pattern"
	}
	if name == "" || len(name) > 255 {
		return fmt.Errorf("%s %q: want 1 to 255 bytes of dot-separated words, e.g. \"item.created\"", what, name)
	}
	for w := range strings.SplitSeq(name, ".") {
		switch {
		case w == "":
			return fmt.Errorf("%s %q has an empty word (two dots, or a dot at an end)", what, name)
		case !pattern && (w == "*" || w == "#"):
			return fmt.Errorf("event name %q contains the wildcard %q; wildcards are for subscriptions (Events.Handle), an event has a name of its own", name, w)
		}
	}
	return nil
}

// declareExchange declares the durable topic exchange on ch.
func declareExchange(ch *amqp.Channel, name string) error {
	if err := ch.ExchangeDeclare(name, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare event exchange %q (durable, topic): %w; if it exists with another type, delete it or choose another name with WithEventExchange", name, err)
	}
	return nil
}

// bind binds the consumer's queue to the event exchange when it is a
// subscription.
func (c *consumer) bind(ch *amqp.Channel) error {
	pattern, ok := c.s.bindings[c.route]
	if !ok {
		return nil
	}
	if err := declareExchange(ch, c.s.exchange); err != nil {
		return err
	}
	if err := ch.QueueBind(c.route, pattern, c.s.exchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %q to exchange %q with pattern %q: %w", c.route, c.s.exchange, pattern, err)
	}
	return nil
}

// eventOf is the name of the event d carries: its routing key when it came
// through the event exchange, else the header its copies carry.
func (c *consumer) eventOf(d *amqp.Delivery) string {
	if c.s.bindings == nil {
		return ""
	}
	if d.Exchange == c.s.exchange {
		return d.RoutingKey
	}
	name, _ := d.Headers[HeaderEvent].(string)
	return name
}

// eventPublisher declares the event exchange once per Client.
type eventPublisher struct {
	mu       sync.Mutex
	declared bool
}

// PublishEvent publishes data as a persistent {"data": data} event named
// name (dot-separated words, e.g. "item.created") to the event exchange
// ([WithEventExchange]) and returns once the broker confirmed it: by then
// it is in the queue of every subscription it matches. An event no one
// subscribes to is confirmed and dropped, as a topic exchange does. The
// first PublishEvent of a Client declares the exchange. As with Publish, a
// connection lost before the confirm makes it publish again, so a
// subscriber may see an event twice (the same message_id).
func (c *Client) PublishEvent(ctx context.Context, name string, data any) (err error) {
	if err := checkTopic(name, false); err != nil {
		return fmt.Errorf("publish event: %w", err)
	}
	exchange := eventExchange(c.opts)
	body, err := encodeRequest(data)
	if err != nil {
		return fmt.Errorf("publish event %q: %w", name, err)
	}
	if err := c.declareEvents(ctx, exchange); err != nil {
		return fmt.Errorf("publish event %q: %w", name, err)
	}
	body, ct := c.encoding.encode(body)
	msg := amqp.Publishing{ContentType: ct, DeliveryMode: amqp.Persistent, Body: body}
	ctx, end := c.sending(ctx, "publish", name, &msg)
	defer func() { end(err) }()
	if err = c.pub.publishTo(ctx, exchange, name, false, msg); err != nil {
		return fmt.Errorf("publish event %q to exchange %q: %w", name, exchange, err)
	}
	return nil
}

// declareEvents declares the event exchange, once: publishing to an
// exchange that does not exist would close the publisher's channel.
func (c *Client) declareEvents(ctx context.Context, exchange string) error {
	c.events.mu.Lock()
	defer c.events.mu.Unlock()
	if c.events.declared {
		return nil
	}
	ch, err := c.conn.publish.channel(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()
	if err := declareExchange(ch, exchange); err != nil {
		return err
	}
	c.events.declared = true
	return nil
}
