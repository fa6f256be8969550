package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"example.com/service/src/worker"
)

// A service registers its routes in one function of two Routers; a Catalog
// lists them without any connection.
func ExampleCatalog() {
	type greeting struct {
		Name string `json:"name"`
	}
	routes := func(rpc, queue worker.Router) {
		rpc.Handle("greet", worker.Func(func(_ context.Context, g greeting) (string, error) { return "hi " + g.Name, nil }))
		queue.Handle("audit", worker.Job(func(context.Context, json.RawMessage) error { return nil }))
	}
	c := &worker.Catalog{}
	routes(c.RPC(), c.Queue())
	for _, r := range c.Routes() {
		fmt.Println(r.Kind, r.Name, r.Request)
	}
	// Output:
	// rpc greet worker_test.greeting
	// queue audit json.RawMessage
}

// Payloads are strict: a field the request type does not have is a
// BadRequest naming it and the fields there are, unless the route allows
// unknown fields.
func TestStrictPayloads(t *testing.T) {
	type item struct {
		String  string `json:"string"`
		Integer int16  `json:"integer"`
	}
	var got item
	h := worker.Func(func(_ context.Context, in item) (item, error) { got = in; return in, nil })
	_, err := h.Serve(context.Background(), &worker.Request{Route: "r", Data: json.RawMessage(`{"string": "x", "integr": 5}`)})
	if !errors.Is(err, worker.ErrBadRequest) || !strings.Contains(err.Error(), `unknown field "integr"`) || !strings.Contains(err.Error(), `"string", "integer"`) {
		t.Fatalf("misspelled field: %v, want a BadRequest naming it and the known fields", err)
	}
	_, err = h.Serve(context.Background(), &worker.Request{Route: "r", Data: json.RawMessage(`{"string": 5}`)})
	if !errors.Is(err, worker.ErrBadRequest) || !strings.Contains(err.Error(), "data.string is a JSON number, want string") {
		t.Fatalf("wrong type: %v", err)
	}
	lenient := worker.Job(func(_ context.Context, in item) error { got = in; return nil }, worker.AllowUnknownFields())
	if _, err := lenient.Serve(context.Background(), &worker.Request{Route: "r", Data: json.RawMessage(`{"string": "x", "extra": true}`)}); err != nil || got.String != "x" {
		t.Fatalf("with AllowUnknownFields: %v, %+v", err, got)
	}
}

func TestCatalogRefusesWhatWorkersRefuse(t *testing.T) {
	c := &worker.Catalog{}
	h := worker.Func(func(context.Context, any) (any, error) { return nil, nil })
	c.RPC().Handle("a", h)
	for name, f := range map[string]func(){
		"twice":    func() { c.Queue().Handle("a", h) },
		"reserved": func() { c.RPC().Handle("amq.x", h) },
		"empty":    func() { c.RPC().Handle("", h) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}
