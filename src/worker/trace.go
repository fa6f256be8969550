package worker

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Tracing follows OpenTelemetry's messaging semantic conventions: a Client
// starts a span per Call ("send ROUTE", kind client) or Publish ("send
// ROUTE", kind producer) and puts its context in the message's headers
// (W3C traceparent and tracestate, through a [Carrier]); the [Trace]
// middleware, added to a worker with Use, reads it back and runs every
// delivery in a span ("process ROUTE", kind consumer) whose parent is the
// caller's. A delivery without trace headers (a Python caller, say) gets a
// new root span. Tracing costs nothing unless it is configured: without
// [WithTracing] a Client adds no headers and without Trace a worker reads
// none.

// Span attributes beside the semantic conventions' own.
const (
	// AttrOutcome is what became of a delivery: one of the Outcome values.
	AttrOutcome = attribute.Key("messaging.rabbitmq.outcome")
	// AttrRedelivered is true on a delivery the broker delivered before.
	AttrRedelivered = attribute.Key("messaging.rabbitmq.redelivered")
	// AttrErrorID is the error id a failure was logged and answered under.
	AttrErrorID = attribute.Key("error.id")
)

// Outcomes of a delivery, as [Trace] records them in [AttrOutcome] and the
// metrics label them.
const (
	OutcomeReplied      = "replied"       // RPC: answered with a result
	OutcomeError        = "error"         // RPC: answered with an error (its type is error.type)
	OutcomeAcked        = "acked"         // queue: handled and acked
	OutcomeDeadLettered = "dead_lettered" // queue: failed for good, sent to ROUTE.dlq
	OutcomeRetrying     = "retrying"      // queue: failed; waits in a retry queue of the broker (Retry.InBroker)
	OutcomeRequeued     = "requeued"      // queue: stopped while waiting to retry; back in its queue
	OutcomeExpired      = "expired"       // the caller's deadline passed before it ran; not run
	OutcomeRefused      = "refused"       // RPC: neither run nor answered (a reply sent as a request, a reply_to that is not a reply queue)
)

// Semantic-convention attribute keys (messaging, v1.26 and later).
const (
	attrSystem        = attribute.Key("messaging.system")
	attrDestination   = attribute.Key("messaging.destination.name")
	attrOperationType = attribute.Key("messaging.operation.type")
	attrOperationName = attribute.Key("messaging.operation.name")
	attrMessageID     = attribute.Key("messaging.message.id")
	attrConversation  = attribute.Key("messaging.message.conversation_id")
	attrRoutingKey    = attribute.Key("messaging.rabbitmq.destination.routing_key")
	attrBodySize      = attribute.Key("messaging.message.body.size")
	attrErrorType     = attribute.Key("error.type")
)

// tracerName is the instrumentation scope of the worker's spans.
const tracerName = "example.com/service/src/worker"

// tracing returns the worker's tracer from tp and the propagator prop,
// OpenTelemetry's global ones where they are nil.
func tracing(tp trace.TracerProvider, prop propagation.TextMapPropagator) (trace.Tracer, propagation.TextMapPropagator) {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if prop == nil {
		prop = otel.GetTextMapPropagator()
	}
	return tp.Tracer(tracerName), prop
}

// Carrier adapts AMQP headers to OpenTelemetry's propagation.TextMapCarrier,
// to inject a trace context into a message's headers or extract it from a
// delivery's. Get returns "" for a header that is not a string.
type Carrier amqp.Table

// Get returns the string value of header key.
func (c Carrier) Get(key string) string {
	s, _ := c[key].(string)
	return s
}

// Set sets header key to value.
func (c Carrier) Set(key, value string) { c[key] = value }

// Keys lists the headers.
func (c Carrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Trace returns a middleware that runs each delivery in a consumer span
// named "process ROUTE", child of the trace context in its headers (a new
// root span when it has none), with the messaging attributes (system
// rabbitmq, destination and routing key = the route, operation process,
// message and correlation ids, body size, redelivered) and its outcome
// ([AttrOutcome]; on failure error.type, the error id and an error status).
// A sampler sees the system, destination and operation type; the rest is
// set when the delivery's result is known.
// The handler's ctx carries the span, so what it does with ctx (SQL through
// db's tracer, Calls and Publishes of a traced Client, log records) joins
// the trace. Add it first with Use so it spans the whole delivery, retries
// included. nil tp and prop mean OpenTelemetry's global ones.
func Trace(tp trace.TracerProvider, prop propagation.TextMapPropagator) Middleware {
	tracer, prop := tracing(tp, prop)
	return func(next Handler) Handler {
		var starts spanStarts
		return HandlerFunc(func(ctx context.Context, req *Request) ([]byte, error) {
			if req.Headers != nil {
				ctx = prop.Extract(ctx, Carrier(req.Headers))
			}
			// What a sampler may look at goes in at the start (the semantic
			// conventions' creation-time attributes); the rest goes in at the
			// end, with the outcome, in one call: the SDK copies a span's
			// attributes each time it has to grow them.
			start := starts.get(req.Route)
			ctx, span := tracer.Start(ctx, start.name, start.opts...)
			defer span.End()
			out, err := next.Serve(ctx, req)
			if !span.IsRecording() { // not sampled
				return out, err
			}
			outcome, typ, id := classify(ctx, req, err)
			attrs := make([]attribute.KeyValue, 0, 9)
			attrs = append(attrs,
				attrRoutingKey.String(req.Route),
				attrOperationName.String("process"),
				attrBodySize.Int(len(req.Data)),
				AttrRedelivered.Bool(req.Redelivered),
				AttrOutcome.String(outcome),
			)
			if req.MessageID != "" {
				attrs = append(attrs, attrMessageID.String(req.MessageID))
			}
			if req.CorrelationID != "" {
				attrs = append(attrs, attrConversation.String(req.CorrelationID))
			}
			if err != nil {
				attrs = append(attrs, attrErrorType.String(typ))
				if id != "" {
					attrs = append(attrs, AttrErrorID.String(id))
				}
			}
			span.SetAttributes(attrs...)
			if err != nil && (outcome == OutcomeError || outcome == OutcomeDeadLettered || outcome == OutcomeRetrying || outcome == OutcomeRefused) {
				span.SetStatus(codes.Error, typ)
			}
			return out, err
		})
	}
}

// spanStarts makes the name and start options of a route's consumer
// spans once per route: a pipeline serves one route, or a few (a
// subscription's events), so after the first delivery they cost no
// allocation.
type spanStarts struct {
	last atomic.Pointer[spanStart]
}

type spanStart struct {
	route, name string
	opts        []trace.SpanStartOption
}

func (c *spanStarts) get(route string) *spanStart {
	if s := c.last.Load(); s != nil && s.route == route {
		return s
	}
	s := &spanStart{route: route, name: "process " + route, opts: []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attrSystem.String("rabbitmq"),
			attrDestination.String(route),
			attrOperationType.String("process"),
		),
	}}
	c.last.Store(s)
	return s
}

// classify names what becomes of a delivery whose pipeline returned err,
// as seen from a Use middleware (outside the worker's own): its outcome,
// the error's reply type and error id.
func classify(ctx context.Context, req *Request, err error) (what, typ, id string) {
	s, _ := ctx.Value(serverKey{}).(*server)
	queue := s != nil && s.kind == kindQueue
	var o *outcome
	switch {
	case err == nil && queue:
		return OutcomeAcked, "", ""
	case err == nil:
		return OutcomeReplied, "", ""
	case errors.Is(err, errExpired):
		return OutcomeExpired, "Expired", ""
	case errors.Is(err, errRequeue):
		return OutcomeRequeued, "Requeued", ""
	case errors.Is(err, errRefused):
		return OutcomeRefused, "Refused", ""
	case errors.As(err, &o):
		typ, id = o.Type, o.ID
	default: // a Use middleware inside this one failed on its own
		typ = DefaultErrorType(err)
	}
	switch {
	case o != nil && queue:
		if _, later := s.brokerDelay(req.Attempt, o); later {
			return OutcomeRetrying, typ, id
		}
		return OutcomeDeadLettered, typ, id
	case queue:
		return OutcomeDeadLettered, typ, id
	}
	return OutcomeError, typ, id
}

// serverKey keys the worker on the base ctx of its deliveries.
type serverKey struct{}

// kindOf is the kind of the worker running a delivery with ctx; RPC when
// none is (a middleware called directly).
func kindOf(ctx context.Context) kind {
	if s, _ := ctx.Value(serverKey{}).(*server); s != nil {
		return s.kind
	}
	return kindRPC
}

// WithTracing makes a Client trace its Calls and Publishes (PublishEvent and
// PublishMessage too): each runs in a span ("send ROUTE", kind client for a
// Call, producer for a publish; ROUTE is the event's name for an event),
// child of the span in its ctx, whose context travels in the message's
// headers (W3C traceparent and tracestate through prop) to the worker's
// [Trace] middleware. nil tp and prop mean OpenTelemetry's global ones.
// Without it a Client sends no trace headers.
func WithTracing(tp trace.TracerProvider, prop propagation.TextMapPropagator) ClientOption {
	tracer, prop := tracing(tp, prop)
	return clientOption(func(o *options) {
		o.sends = append(slices.Clone(o.sends), func(ctx context.Context, op, route string, msg *amqp.Publishing) (context.Context, func(error)) {
			kind := trace.SpanKindProducer
			if op == "call" {
				kind = trace.SpanKindClient
			}
			if msg.Headers != nil && !trace.SpanContextFromContext(ctx).IsValid() {
				// Sent later for someone else (an outbox row): its recorded trace context.
				ctx = prop.Extract(ctx, Carrier(msg.Headers))
			}
			ctx, span := tracer.Start(ctx, "send "+route, trace.WithSpanKind(kind),
				trace.WithAttributes(
					attrSystem.String("rabbitmq"),
					attrDestination.String(route),
					attrOperationType.String("send"),
				))
			if span.IsRecording() { // sampled
				attrs := make([]attribute.KeyValue, 0, 5)
				attrs = append(attrs,
					attrRoutingKey.String(route),
					attrOperationName.String(op),
					attrBodySize.Int(len(msg.Body)),
				)
				if msg.MessageId != "" {
					attrs = append(attrs, attrMessageID.String(msg.MessageId))
				}
				if msg.CorrelationId != "" {
					attrs = append(attrs, attrConversation.String(msg.CorrelationId))
				}
				span.SetAttributes(attrs...)
			}
			if span.SpanContext().IsValid() {
				if msg.Headers == nil {
					msg.Headers = make(amqp.Table, 2)
				}
				prop.Inject(ctx, Carrier(msg.Headers)) // the Client's own table (sendHook)
			}
			return ctx, func(err error) {
				if err != nil {
					var remote *RemoteError
					typ := "Error"
					switch {
					case errors.As(err, &remote):
						typ = remote.Type
					case errors.Is(err, ErrNoRoute):
						typ = "NoRoute"
					case errors.Is(err, context.DeadlineExceeded):
						typ = "DeadlineExceeded"
					}
					span.SetAttributes(attrErrorType.String(typ))
					span.SetStatus(codes.Error, typ)
				}
				span.End()
			}
		})
	})
}
