// Package worker runs AMQP 0-9-1 (RabbitMQ) request/reply and work-queue
// workers and a client that calls and publishes to them. It is the Go
// successor of the Python seed's amqp worker and speaks its wire format, so
// gateways written for the seed keep working.
//
// # Wire format
//
// A route's name is its queue's name; messages go through the default
// exchange. A request body is {"data": <payload>} as application/json, or
// the same JSON gzip-compressed (recognised by its magic bytes, whatever the
// content type; the seed's clients send application/octet-stream), which is
// then answered gzip-compressed. A reply goes to the request's reply_to with
// its correlation_id and AMQP type "result" or "error": {"success": true,
// "data": ...} or {"success": false, "error": {"type": "...", "message":
// "...", "id": "..."}}; with [WithDevelopment] the error also carries
// "go_type" and "trace". RPC route queues are classic and not durable (as
// in the seed); queue routes are durable quorum queues ([QueueType]) and
// their messages persistent.
//
// # Routes
//
// Routes are registered like net/http handlers, with adapters for typed
// functions:
//
//	rpc := worker.NewRPC(conn)
//	rpc.Handle("items.get", worker.Func(items.Get))    // func(ctx, Req) (Resp, error)
//	queue := worker.NewQueue(conn)
//	queue.Handle("emails", worker.Job(emails.Send))    // func(ctx, Msg) error
//	rpc.HandleFunc("raw", func(ctx context.Context, r *worker.Request) ([]byte, error) { ... })
//
// A handler error's reply type comes from the first error in its chain
// implementing [Typed] (ErrorType() string), else "BadRequest" for
// [ErrBadRequest], else "Error". [Errorf] makes a typed error in one line.
//
// # Guarantees
//
//   - A delivery is acked only after its handler returned and (RPC) its reply
//     was published; a worker that dies mid-handler leaves it to another.
//     Acks are coalesced: they go out within about 2 ms of the handler's
//     return, mostly as one multiple ack for a run of deliveries (at once
//     when the prefetch is below 8), so a connection lost in that window
//     redelivers those deliveries, as for any at-least-once consumer.
//   - Up to the prefetch ([WithPrefetch], default 200) deliveries per route
//     are handled at once; replicas of a service share each route's queue.
//   - Bad input never crashes a worker: RPC answers BadRequest, a queue
//     message goes to "<route>.dlq". Handler panics are recovered.
//   - No single message can stop a connection: a [Conn] reads the broker's
//     frames through a guard that hands amqp091-go nothing it cannot parse
//     (headers nested too deep are replaced, [HeaderHeadersRefused]) and
//     never reads a body over the limit ([HeaderBodyRefused]). Dead letters
//     carry at most 16 KiB of the original headers and truncated error
//     texts, so they always fit a frame. A message that keeps coming back
//     (its consumer crashes on it) is dead-lettered by the broker after the
//     quorum queue's delivery limit ([WithDeliveryLimit]).
//   - Memory is bounded in bytes: the bodies a Conn's workers hold are at
//     most [WithMaxInflightBytes] (a delivery waits on the socket until it
//     fits), gzip bodies inflating at once at most [WithMaxInflateBytes].
//   - A reply is never run as a request or a job: RPC workers answer only
//     to reply queues ([ReplyQueue], [WithReplyTo]) and no worker runs a
//     delivery of AMQP type result or error.
//   - In production (not [WithDevelopment]) an error without a type of its
//     own, or a panic, is answered "internal error (error id ...)"; its text
//     is logged under that id, never sent.
//   - Queue handler failures are retried with backoff ([WithRetry]; the
//     waits in the worker, or in the broker's retry queues with
//     [Retry.InBroker]), then dead-lettered with the error in headers,
//     publisher-confirmed, then acked: nothing is dropped, nothing loops
//     forever. [DeadLetters] counts, shows and replays dead letters.
//   - [Events] subscriptions get each matching event once per service
//     ([Client.PublishEvent], [SubscriptionQueue]).
//   - The caller's deadline travels with a request (expiration and
//     [HeaderDeadline]); a worker does not start a request whose caller gave
//     up, and the handler's ctx carries the deadline.
//   - [Client.Call] uses direct reply-to; a route without a queue fails at
//     once with [ErrNoRoute]. [Client.Publish] returns once the broker
//     confirmed the message; concurrent publishes pipeline their confirms.
//   - [Conn] reconnects after a dropped connection or broker restart, and
//     workers and clients reopen their channels, redeclare their queues and
//     resume consuming.
//   - Shutdown stops consuming, lets running handlers finish and send their
//     replies and acks until its ctx ends, then closes.
//
// # Best practices
//
//   - One [Conn] per process, shared by all workers and clients: it holds
//     two connections, one where the workers consume (and RPC workers
//     reply) and one where clients and dead letters publish, so a broker
//     blocking publishers (memory or disk alarm) does not stop queue
//     workers from acking, which relieves it.
//   - Call Start on each worker, and Shutdown in reverse order before
//     Conn.Close.
//   - Give every Call a ctx with a deadline.
//   - Queue handlers run at least once: make them idempotent (a message can
//     be redelivered after a crash or a reconnect).
//   - Successes are not logged above debug level; every failure is logged
//     once at warn (panics at error, with the stack) with the route, error
//     type and error id, sampled in production so a flood of bad messages
//     is not a flood of log lines.
//
// Benchmarks next to raw amqp091-go baselines are in README.md.
package worker
