package worker

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// Router is what routes are registered on: an [RPC] or [Queue] worker, or
// a [Catalog]'s router, which only lists them. A service registers its
// routes in one function taking two Routers, so the same function serves
// the running workers and a listing of the routes that needs no broker.
type Router interface {
	Handle(route string, h Handler, mws ...Middleware)
}

// Kinds of route.
const (
	KindRPC   = "rpc"   // request/reply
	KindQueue = "queue" // fire-and-forget work queue
)

// Route describes one registered route.
type Route struct {
	Name string // the route, which is also its queue's name
	Kind string // KindRPC or KindQueue
	// Request is the Go type its data decodes into and Response the type
	// it answers (RPC); nil for a handler of raw JSON ([HandlerFunc]),
	// and Response is nil for queue routes.
	Request, Response reflect.Type
}

// Catalog lists routes. Register them on its RPC and Queue routers as on
// workers; Routes then lists them and AsyncAPI documents them.
type Catalog struct {
	routes []Route
}

// RPC returns the router of the catalog's RPC routes.
func (c *Catalog) RPC() Router { return catalogRouter{c, KindRPC} }

// Queue returns the router of the catalog's queue routes.
func (c *Catalog) Queue() Router { return catalogRouter{c, KindQueue} }

type catalogRouter struct {
	c    *Catalog
	kind string
}

// Handle records the route (its middleware are not run); it panics where a
// worker's Handle does (an empty or reserved name, a name registered
// twice, a nil handler).
func (r catalogRouter) Handle(route string, h Handler, _ ...Middleware) {
	checkRoute(route, h)
	for _, known := range r.c.routes {
		if known.Name == route {
			panic(fmt.Sprintf("worker: route %q registered twice", route))
		}
	}
	rt := Route{Name: route, Kind: r.kind}
	if t, ok := h.(*typed); ok {
		rt.Request = t.req
		if r.kind == KindRPC {
			rt.Response = t.resp
		}
	}
	r.c.routes = append(r.c.routes, rt)
}

// Routes returns the routes in the order they were registered.
func (c *Catalog) Routes() []Route { return slices.Clone(c.routes) }

// checkRoute panics on a route no worker may serve.
func checkRoute(route string, h Handler) {
	if route == "" || h == nil {
		panic(fmt.Sprintf("worker: Handle(%q, %v): empty route or nil handler", route, h))
	}
	if strings.HasPrefix(route, "amq.") || strings.HasPrefix(route, "amq_") {
		panic(fmt.Sprintf("worker: Handle(%q): names starting with amq. are RabbitMQ's, and amq_ those of aio-pika's reply queues (replies go there)", route))
	}
}

// RouteJSON is a route as `service routes --json` prints it: its types by
// name, and the JSON Schemas of its request data and reply data.
type RouteJSON struct {
	Name           string         `json:"name"`
	Kind           string         `json:"kind"`
	Request        string         `json:"request,omitempty"`
	Response       string         `json:"response,omitempty"`
	RequestSchema  map[string]any `json:"request_schema"`
	ResponseSchema map[string]any `json:"response_schema,omitzero"`
}

// JSON returns the routes with the schemas of their data, every named
// type's schema inlined under "definitions" of its own document.
func (c *Catalog) JSON() []RouteJSON {
	out := make([]RouteJSON, 0, len(c.routes))
	for _, r := range c.routes {
		defs := map[string]any{}
		j := RouteJSON{Name: r.Name, Kind: r.Kind, RequestSchema: inline(schemaOf(r.Request, defs), defs)}
		if r.Request != nil {
			j.Request = r.Request.String()
		}
		if r.Kind == KindRPC {
			j.ResponseSchema = inline(schemaOf(r.Response, defs), defs)
			if r.Response != nil {
				j.Response = r.Response.String()
			}
		}
		out = append(out, j)
	}
	return out
}

// inline makes schema self-contained: its references point into its own
// "definitions".
func inline(schema map[string]any, defs map[string]any) map[string]any {
	if len(defs) == 0 {
		return schema
	}
	b, _ := json.Marshal(schema)
	var out map[string]any
	_ = json.Unmarshal([]byte(strings.ReplaceAll(string(b), "#/components/schemas/", "#/definitions/")), &out)
	d, _ := json.Marshal(defs)
	var defsOut map[string]any
	_ = json.Unmarshal([]byte(strings.ReplaceAll(string(d), "#/components/schemas/", "#/definitions/")), &defsOut)
	out["definitions"] = defsOut
	return out
}

// AsyncAPIInfo is the info object of an AsyncAPI document.
type AsyncAPIInfo struct {
	Title, Version, Description string
}

// AsyncAPI returns an AsyncAPI 3.0 document (JSON) of the catalog's routes,
// as this package serves them: each route a channel whose address is its
// queue, reached through the default exchange; an RPC route an operation
// that receives the request envelope {"data": ...} and replies with the
// success or failure envelope to the request's reply_to; a queue route one
// that receives the message envelope.
func (c *Catalog) AsyncAPI(info AsyncAPIInfo) ([]byte, error) {
	channels := map[string]any{}
	operations := map[string]any{}
	messages := map[string]any{}
	schemas := map[string]any{}
	failure := map[string]any{
		"type": "object", "required": []any{"success", "error"},
		"properties": map[string]any{
			"success": map[string]any{"const": false},
			"error": map[string]any{
				"type": "object", "required": []any{"type", "message"},
				"properties": map[string]any{
					"type":    map[string]any{"type": "string", "description": "BadRequest, NotFound, Conflict, Error, or a type of the service's"},
					"message": map[string]any{"type": "string"},
					"id":      map[string]any{"type": "string", "description": "the error id the service logged the failure under"},
					"go_type": map[string]any{"type": "string", "description": "development mode only"},
					"trace":   map[string]any{"type": "string", "description": "development mode only"},
				},
			},
		},
	}
	schemas["Failure"] = failure
	amqpMessage := map[string]any{"amqp": map[string]any{"bindingVersion": "0.3.0"}}
	for _, r := range c.routes {
		id := operationID(r.Name)
		durable, autoDelete := r.Kind == KindQueue, false
		channel := map[string]any{
			"address": r.Name,
			"bindings": map[string]any{"amqp": map[string]any{
				"bindingVersion": "0.3.0", "is": "queue",
				"queue": map[string]any{"name": r.Name, "durable": durable, "exclusive": false, "autoDelete": autoDelete},
			}},
		}
		reqMsg := id + ".request"
		messages[reqMsg] = map[string]any{
			"name":        reqMsg,
			"title":       r.Name + " " + kindNoun(r.Kind),
			"contentType": ContentJSON,
			"payload": map[string]any{
				"type": "object", "required": []any{"data"},
				"properties":           map[string]any{"data": schemaOf(r.Request, schemas)},
				"additionalProperties": true,
			},
			"bindings": amqpMessage,
		}
		channelMsgs := map[string]any{"request": map[string]any{"$ref": "#/components/messages/" + reqMsg}}
		channel["messages"] = channelMsgs
		channels[id] = channel
		op := map[string]any{
			"action":   "receive",
			"channel":  map[string]any{"$ref": "#/channels/" + id},
			"messages": []any{map[string]any{"$ref": "#/channels/" + id + "/messages/request"}},
		}
		if r.Kind == KindRPC {
			replyMsg := id + ".reply"
			messages[replyMsg] = map[string]any{
				"name":        replyMsg,
				"title":       r.Name + " reply",
				"contentType": ContentJSON,
				"correlationId": map[string]any{
					"location": "$message.header#/correlation_id",
				},
				"payload": map[string]any{"oneOf": []any{
					map[string]any{
						"type": "object", "required": []any{"success", "data"},
						"properties": map[string]any{"success": map[string]any{"const": true}, "data": schemaOf(r.Response, schemas)},
					},
					map[string]any{"$ref": "#/components/schemas/Failure"},
				}},
			}
			replyChannel := id + ".reply"
			channels[replyChannel] = map[string]any{
				"address":     nil, // the request's reply_to
				"description": "The reply_to of the request: RabbitMQ's direct reply-to or a server-named queue.",
				"messages":    map[string]any{"reply": map[string]any{"$ref": "#/components/messages/" + replyMsg}},
			}
			op["reply"] = map[string]any{
				"address":  map[string]any{"location": "$message.header#/reply_to"},
				"channel":  map[string]any{"$ref": "#/channels/" + replyChannel},
				"messages": []any{map[string]any{"$ref": "#/channels/" + replyChannel + "/messages/reply"}},
			}
		}
		operations[id] = op
	}
	doc := map[string]any{
		"asyncapi": "3.0.0",
		"info": map[string]any{
			"title": info.Title, "version": info.Version, "description": info.Description,
		},
		"defaultContentType": ContentJSON,
		"channels":           channels,
		"operations":         operations,
		"components":         map[string]any{"messages": messages, "schemas": schemas},
	}
	return json.MarshalIndent(doc, "", "  ")
}

func kindNoun(kind string) string {
	if kind == KindRPC {
		return "request"
	}
	return "message"
}

// operationID turns a route name into an AsyncAPI key.
func operationID(route string) string { return key(route) }
