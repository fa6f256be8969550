package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
	"example.com/service/test/stack"
)

// malformed returns messages that no route can accept, each carrying marker
// in its body.
func malformed(marker string) map[string]amqp.Publishing {
	return map[string]amqp.Publishing{
		"not JSON":         {ContentType: "application/json", Body: []byte("not json " + marker)},
		"gzip of not JSON": {ContentType: "application/octet-stream", Body: stack.Gzip([]byte("not json " + marker))},
		"truncated gzip":   {ContentType: "application/octet-stream", Body: stack.Gzip([]byte(`{"data": "` + marker + `"}`))[:12]},
		"no data member":   {ContentType: "application/json", Body: []byte(`{"payload": "` + marker + `"}`)},
		"invalid UTF-8":    {ContentType: "application/json", Body: []byte(`{"data": "` + marker + "\xff\xfe" + `"}`)},
		"unknown content encoding": {
			ContentType: "application/json", ContentEncoding: "br",
			Body: []byte(`{"data": "` + marker + `"}`),
		},
		"JSON array body": {ContentType: "application/json", Body: []byte(`["` + marker + `"]`)},
	}
}

// testMalformed sends every route of the service (from `service routes`)
// messages no route can accept, and data of a type its request type does not
// take.
func testMalformed(t *testing.T, env stack.Env) {
	routes := bins.Routes(t)
	rpcRoutes, queueRoutes := stack.Names(routes, worker.KindRPC), stack.Names(routes, worker.KindQueue)
	wrongShape := map[string]string{}
	for _, r := range routes {
		if body := stack.WrongShape(r); body != "" {
			wrongShape[r.Name] = `{"data": ` + body + `}`
		}
	}
	seed := stack.NewSeedClient(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	for _, route := range rpcRoutes {
		for name, msg := range malformed("rpc") {
			r, err := seed.Send(ctx, route, msg)
			if err != nil {
				t.Fatalf("%s, %s: %v", route, name, err)
			}
			if r.Success || r.Error == nil || r.Error.Type != "BadRequest" || r.Error.Message == "" {
				t.Errorf("%s, %s: reply %s, want a BadRequest failure with a message", route, name, r.Body)
			}
		}
		if body, ok := wrongShape[route]; ok {
			r, err := seed.Send(ctx, route, amqp.Publishing{ContentType: "application/json", Body: []byte(body)})
			if err != nil {
				t.Fatal(err)
			}
			if r.Success || r.Error == nil || r.Error.Type != "BadRequest" {
				t.Errorf("%s with %s: reply %s, want a BadRequest failure", route, body, r.Body)
			}
		}
	}

	for _, route := range queueRoutes {
		for name, msg := range malformed("poison") {
			marker := testenv.Name("poison ")
			msg.MessageId = marker
			if err := seed.Publish(ctx, route, msg); err != nil {
				t.Fatalf("%s, %s: %v", route, name, err)
			}
			d := waitForDeadLetter(t, env, route, marker)
			if got := fmt.Sprint(d.Headers["x-error-type"]); got != "BadRequest" {
				t.Errorf("%s, %s: dead letter error type %q, want BadRequest", route, name, got)
			}
		}
		if body, ok := wrongShape[route]; ok {
			marker := testenv.Name("wrong shape ")
			if err := seed.Publish(ctx, route, amqp.Publishing{ContentType: "application/json", MessageId: marker, Body: []byte(body)}); err != nil {
				t.Fatal(err)
			}
			waitForDeadLetter(t, env, route, marker)
		}
	}

	// After all of it, the service still answers on every route.
	for _, route := range rpcRoutes {
		r, err := seed.Call(ctx, route, nil)
		if err != nil {
			t.Fatalf("%s after malformed input: %v", route, err)
		}
		if route == "hello_world" && string(r.Data) != `"Hello world!"` {
			t.Errorf("hello_world after malformed input: %s", r.Body)
		}
	}
}
