package main

// Business logic, kept apart from the routes in server.go: nothing in this
// file knows about AMQP or SQL, so it can be read and tested on its own.
// A route in server.go decodes a request, calls a function from here, and
// stores or answers what it returns.

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"example.com/service/src/models"
)

// helloWorld answers every request the same way.
func helloWorld(context.Context, any) (string, error) {
	return "Hello world!", nil
}

// tookForever stands in for slow asynchronous work (a call to another
// service, say): it waits about a second without blocking other requests,
// then answers. It gives up when the caller does.
func tookForever(ctx context.Context, s string) (string, error) {
	select {
	case <-time.After(time.Second):
		return s + " that took forever", nil
	case <-ctx.Done():
		return "", fmt.Errorf("gave up waiting for %q: %w", s, context.Cause(ctx))
	}
}

// willError always fails, to show what a caller receives when a handler
// returns an error: type "Exception" and the message, as the seed's route
// raised Exception("Just an exception: ...").
func willError(_ context.Context, data any) (any, error) {
	return nil, &exception{fmt.Sprintf("Just an exception: %v", data)}
}

// exception is the seed's plain Python Exception: its ErrorType names it
// so on the wire.
type exception struct{ msg string }

func (e *exception) Error() string     { return e.msg }
func (e *exception) ErrorType() string { return "Exception" }

// typeError is Python's TypeError, which the seed's routes raised on data of
// the wrong type.
type typeError struct{ msg string }

func (e *typeError) Error() string     { return e.msg }
func (e *typeError) ErrorType() string { return "TypeError" }

// preview is a short, one-line prefix of data for a log line: a payload can
// be megabytes.
func preview(data []byte, n int) string {
	if len(data) <= n {
		return string(data)
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(data[cut]) {
		cut--
	}
	return string(data[:cut]) + "..."
}

// addBar returns the object data with "bar": "baz" added; data itself is
// left unchanged. Data that is not an object fails as the seed's route did
// (its item assignment raised a TypeError).
func addBar(_ context.Context, data any) (map[string]any, error) {
	o, ok := data.(map[string]any)
	if !ok {
		return nil, &typeError{fmt.Sprintf(`dictionary needs a JSON object as data, e.g. {"data": {"foo": 1}}; got %s`, jsonKind(data))}
	}
	out := maps.Clone(o)
	out["bar"] = "baz"
	return out, nil
}

// jsonKind names the JSON type of a decoded value, for messages.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	}
	return "a number"
}

// newItem is the data of example-item.create and example-item.store.
type newItem struct {
	String  *string          `json:"string"`
	Integer int16            `json:"integer"`
	JSON    *json.RawMessage `json:"json"`
}

// toItem checks an incoming item against the table's rules, so that a bad
// item is answered with a clear message instead of a database error.
func (n newItem) toItem() (models.ExampleItem, error) {
	switch {
	case n.String == nil:
		return models.ExampleItem{}, badRequest(`example item: "string" is missing; send {"string": "...", "integer": 0, "json": {...}}`)
	case utf8.RuneCountInString(*n.String) > 255:
		return models.ExampleItem{}, badRequest(`example item: "string" has %d characters, at most 255 fit`, utf8.RuneCountInString(*n.String))
	}
	item := models.ExampleItem{String: *n.String, Integer: n.Integer}
	if n.JSON != nil {
		item.JSON = *n.JSON
	}
	return item, nil
}

// itemChanges is the data of example-item.update.
type itemChanges struct {
	ID      uuid.UUID                  `json:"_id"`
	Changes map[string]json.RawMessage `json:"changes"` // decoded per column by the model
}

// check refuses an update that names no item, changes nothing or tries to
// change the key. Unknown columns are refused by the model itself.
func (c itemChanges) check() error {
	switch {
	case c.ID == uuid.Nil:
		return badRequest(`example-item.update needs {"_id": "<uuid>", "changes": {...}}; "_id" is missing`)
	case len(c.Changes) == 0:
		return badRequest("example-item.update of %s: \"changes\" is empty, nothing to update", c.ID)
	case hasKey(c.Changes, "_id"):
		return badRequest("example-item.update of %s: the id cannot be changed", c.ID)
	}
	return nil
}

func hasKey[V any](m map[string]V, key string) bool {
	_, ok := m[key]
	return ok
}

// wantString is the rule of example-items: a string to match is required.
// Without one it fails as the seed's route did, with a plain Exception.
func wantString(s *string) (string, error) {
	if s == nil {
		return "", &exception{`No Message: no message body was sent when one is required (example-items needs a string to match, e.g. {"data": "foo"})`}
	}
	return *s, nil
}

// requestError is a request the caller must fix. Its ErrorType makes the
// worker library answer it with error type "BadRequest" (and dead-letter a
// queue message at once instead of retrying it).
type requestError struct{ msg string }

func (e *requestError) Error() string     { return e.msg }
func (e *requestError) ErrorType() string { return "BadRequest" }

func badRequest(format string, args ...any) error {
	return &requestError{fmt.Sprintf(format, args...)}
}
