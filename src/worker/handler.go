package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Request is one delivery as a handler and its middleware see it.
type Request struct {
	Route    string          // the route (queue) it arrived on
	Data     json.RawMessage // the "data" member of the body, raw JSON (never empty)
	Attempt  int             // 1 for the first run; queue retries count up
	Deadline time.Time       // the caller's deadline, zero when it set none
	Event    string          // an Events subscription's: the event's name, e.g. "item.created"

	// The message's properties, for middleware that need more than its
	// data (an auth header, a trace id). Read them; do not change them.
	Headers       map[string]any
	MessageID     string
	CorrelationID string
	AppID         string
	Timestamp     time.Time
	Redelivered   bool // the broker delivered it before, to this or another consumer
}

// Handler handles the requests of one route.
//
// Serve returns the reply data as JSON (nil means null). RPC workers send it
// to the caller; queue workers discard it. An error becomes a failure reply
// (RPC) or a retry and, at last, a dead letter (Queue); its reply type comes
// from the worker's error type function ([WithErrorType], by default
// [DefaultErrorType]). ctx ends when the caller's deadline passes or
// Shutdown gives up waiting. Serve is called from many goroutines at once.
type Handler interface {
	Serve(ctx context.Context, req *Request) ([]byte, error)
}

// HandlerFunc adapts a function working on raw JSON to a [Handler].
type HandlerFunc func(ctx context.Context, req *Request) ([]byte, error)

// Serve calls f(ctx, req).
func (f HandlerFunc) Serve(ctx context.Context, req *Request) ([]byte, error) { return f(ctx, req) }

// Middleware wraps a Handler to run code around every request it serves,
// as net/http middleware wraps an http.Handler: it may look at or refuse
// the request, change its ctx, and look at or replace the result. Register
// it on a worker with Use (every route) or with Handle (one route).
type Middleware func(next Handler) Handler

// chain wraps h in mws, the first outermost.
func chain(h Handler, mws []Middleware) Handler {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}

// Func adapts a typed RPC function to a [Handler]: the request data is
// decoded into Req and the result is encoded as the reply data. Data that
// does not fit Req is a BadRequest naming the field: a value of the wrong
// type, and a field Req does not have (a misspelled one would otherwise be
// dropped without a word; [AllowUnknownFields] accepts them).
func Func[Req, Resp any](f func(ctx context.Context, req Req) (Resp, error), opts ...DecodeOption) Handler {
	o := decodeOpts(opts)
	return &typed{
		req: reflect.TypeFor[Req](), resp: reflect.TypeFor[Resp](),
		serve: func(ctx context.Context, r *Request) ([]byte, error) {
			var req Req
			if err := decodeData(r.Data, &req, o); err != nil {
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
		},
	}
}

// Job adapts a typed queue function to a [Handler]: the message data is
// decoded into Msg as [Func] decodes requests; data that does not fit is a
// BadRequest failure, dead-lettered at once.
func Job[Msg any](f func(ctx context.Context, msg Msg) error, opts ...DecodeOption) Handler {
	o := decodeOpts(opts)
	return &typed{
		req: reflect.TypeFor[Msg](),
		serve: func(ctx context.Context, r *Request) ([]byte, error) {
			var msg Msg
			if err := decodeData(r.Data, &msg, o); err != nil {
				return nil, err
			}
			return nil, f(ctx, msg)
		},
	}
}

// DecodeOption changes how [Func] and [Job] decode data.
type DecodeOption func(*decodeOptions)

type decodeOptions struct {
	allowUnknown bool
}

// AllowUnknownFields makes a route accept fields its type does not have
// (they are ignored), for callers that send more than the route reads.
func AllowUnknownFields() DecodeOption { return func(o *decodeOptions) { o.allowUnknown = true } }

func decodeOpts(opts []DecodeOption) decodeOptions {
	var o decodeOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// decodeData decodes request data into v, describing a mismatch in terms
// the caller can act on.
func decodeData(data json.RawMessage, v any, o decodeOptions) error {
	if raw, ok := v.(*json.RawMessage); ok { // already validated
		*raw = data
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // an any or map payload keeps its numbers exact (json.Number), as Python's ints and Decimals
	if !o.allowUnknown {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			where := "data"
			if te.Field != "" {
				where = "data." + te.Field
			}
			return badRequest("%s is a JSON %s, want %s", where, truncate(te.Value, 100), te.Type)
		}
		if field, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			known := fieldNames(reflect.TypeOf(v).Elem())
			return badRequest("data has an unknown field %s; the fields are %s", truncate(field, 100), known)
		}
		return badRequest("data does not decode into %s: %v", reflect.TypeOf(v).Elem(), err)
	}
	return nil
}

// fieldNames lists the JSON names of the fields of struct type t (through
// pointers), for error messages.
func fieldNames(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return "(none: not an object)"
	}
	var names []string
	for _, f := range jsonFields(t) {
		names = append(names, strconv.Quote(f.name))
	}
	if len(names) == 0 {
		return "(none)"
	}
	return strings.Join(names, ", ")
}

// typed is the handler of [Func] and [Job]: it knows its request and
// response types (for the [Catalog]) and its output is JSON marshal made,
// so it needs no validation.
type typed struct {
	req, resp reflect.Type // resp is nil for a Job
	serve     func(ctx context.Context, req *Request) ([]byte, error)
}

func (h *typed) Serve(ctx context.Context, req *Request) ([]byte, error) { return h.serve(ctx, req) }
