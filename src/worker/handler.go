package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Request is one delivery as a handler sees it.
type Request struct {
	Route    string          // the route (queue) it arrived on
	Data     json.RawMessage // the "data" member of the body, raw JSON (never empty)
	Attempt  int             // 1 for the first run; queue retries count up
	Deadline time.Time       // the caller's deadline, zero when it set none
	Delivery *amqp.Delivery  // the underlying delivery, for headers and properties; do not ack it
}

// Handler handles the requests of one route.
//
// Serve returns the reply data as JSON (nil means null). RPC workers send it
// to the caller; queue workers discard it. An error becomes a failure reply
// (RPC) or a retry and, at last, a dead letter (Queue); its reply type comes
// from [Typed] or [ErrBadRequest] in its chain. ctx ends when the caller's
// deadline passes or Shutdown gives up waiting. Serve is called from many
// goroutines at once.
type Handler interface {
	Serve(ctx context.Context, req *Request) ([]byte, error)
}

// HandlerFunc adapts a function working on raw JSON to a [Handler].
type HandlerFunc func(ctx context.Context, req *Request) ([]byte, error)

// Serve calls f(ctx, req).
func (f HandlerFunc) Serve(ctx context.Context, req *Request) ([]byte, error) { return f(ctx, req) }

// Func adapts a typed RPC function to a [Handler]: the request data is
// decoded into Req (a mismatch is a BadRequest failure naming the field)
// and the result is encoded as the reply data.
func Func[Req, Resp any](f func(ctx context.Context, req Req) (Resp, error)) Handler {
	return encodedHandler(func(ctx context.Context, r *Request) ([]byte, error) {
		var req Req
		if err := decodeData(r.Data, &req); err != nil {
			return nil, err
		}
		resp, err := f(ctx, req)
		if err != nil {
			return nil, err
		}
		out, err := marshal(resp)
		if err != nil {
			return nil, fmt.Errorf("encode result of route %q (%T) as JSON: %w", r.Route, resp, err)
		}
		return out, nil
	})
}

// Job adapts a typed queue function to a [Handler]: the message data is
// decoded into Msg (a mismatch is a BadRequest failure, dead-lettered at
// once).
func Job[Msg any](f func(ctx context.Context, msg Msg) error) Handler {
	return encodedHandler(func(ctx context.Context, r *Request) ([]byte, error) {
		var msg Msg
		if err := decodeData(r.Data, &msg); err != nil {
			return nil, err
		}
		return nil, f(ctx, msg)
	})
}

// decodeData decodes request data into v, describing a mismatch in terms
// the caller can act on.
func decodeData(data json.RawMessage, v any) error {
	if raw, ok := v.(*json.RawMessage); ok { // already validated
		*raw = data
		return nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			where := "data"
			if te.Field != "" {
				where = "data." + te.Field
			}
			return badRequest("%s is a JSON %s, want %s", where, te.Value, te.Type)
		}
		return badRequest("data does not decode into %T: %v", v, err)
	}
	return nil
}

// encodedHandler is a handler whose output marshal produced, so it
// needs no validation.
type encodedHandler func(ctx context.Context, req *Request) ([]byte, error)

func (f encodedHandler) Serve(ctx context.Context, req *Request) ([]byte, error) { return f(ctx, req) }
