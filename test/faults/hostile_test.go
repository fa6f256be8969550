//go:build faults

package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
	"example.com/service/test/stack"
)

// The hostile-traffic suite: what an attacker or a careless client can send,
// each against its own production-mode service. Every attack records a row
// of the security table: reconnects of the service, hello_world calls
// answered while it ran, dead letters, peak resident memory.

// arena is one service under attack.
type arena struct {
	t     *testing.T
	env   stack.Env
	p     *stack.Process
	probe *probe
	pub   *confirmPublisher
	seed  *stack.SeedClient
}

// newArena starts a production-mode service in an env of its own, a probe
// calling hello_world and a plain publisher to attack it with.
func newArena(t *testing.T, extra ...string) *arena {
	t.Helper()
	env := stack.NewEnv(t, bins)
	p := stack.Start(t, bins, env, append([]string{"MODE=production"}, extra...)...)
	return &arena{t: t, env: env, p: p, probe: startProbe(t, env), pub: newConfirmPublisher(t, env), seed: stack.NewSeedClient(t, env)}
}

// finish stops the probe and records the row of the attack.
func (a *arena) finish(attack, note string) securityRow {
	a.t.Helper()
	sent, ok := a.probe.stop()
	r := securityRow{
		attack: attack, reconnects: reconnects(a.p.Logs()),
		probes: sent, answered: ok,
		deadLetters: a.deadLetters(), peakRSS: peakRSS(a.t, a.p.PID()), note: note,
	}
	recordSecurity(a.t, r)
	if a.p.Exited() {
		a.t.Errorf("the service exited during the attack")
	}
	return r
}

// deadLetters counts the messages in the queue routes' dead-letter queues.
func (a *arena) deadLetters() int {
	ch := a.env.Channel(a.t)
	n := 0
	for _, route := range stack.Names(bins.Routes(a.t), worker.KindQueue) {
		if q, err := ch.QueueDeclarePassive(route+worker.DeadLetterSuffix, true, false, false, false, nil); err == nil {
			n += q.Messages
		}
	}
	return n
}

// waitDead waits until n messages are dead-lettered or limit passes, then
// lets the probe run on for linger (a loop shows itself then).
func (a *arena) waitDead(n int, limit, linger time.Duration) int {
	deadline := time.Now().Add(limit)
	got := a.deadLetters()
	for got < n && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		got = a.deadLetters()
	}
	time.Sleep(linger)
	return a.deadLetters()
}

// oneDeadLetter is the end of an attack by one bad message to
// example-item.store: it waits for the dead letter, records the attack's row
// and asserts it calm with exactly one dead letter, then gives the dead letter
// (ok false when the dead-letter queue holds none).
func (a *arena) oneDeadLetter(attack string) (amqp.Delivery, bool) {
	a.t.Helper()
	dead := a.waitDead(1, 20*time.Second, 3*time.Second)
	r := a.finish(attack, fmt.Sprintf("%d dead letters for 1 message", dead))
	wantCalm(a.t, r)
	if dead != 1 {
		a.t.Errorf("%d dead letters, want exactly 1", dead)
	}
	return getOne(a.t, a.env, "example-item.store"+worker.DeadLetterSuffix)
}

// wantCalm asserts what every attack must leave: no reconnect, every probe
// answered, the service alive.
func wantCalm(t *testing.T, r securityRow) {
	t.Helper()
	if r.reconnects != 0 {
		t.Errorf("%s: the service reconnected %d times", r.attack, r.reconnects)
	}
	if r.probes == 0 || r.answered < r.probes {
		t.Errorf("%s: %d of %d hello_world calls answered during the attack", r.attack, r.answered, r.probes)
	}
}

// 1. A queue message whose handler error repeats a 200 KB input: the dead
// letter's x-error header must stay small, or it exceeds the frame size and
// the connection dies on every retry.
func TestHostileErrorRepeatsHugeInput(t *testing.T) {
	a := newArena(t)
	number := strings.Repeat("7", 200_000)
	a.pub.publish("example-item.store", amqp.Publishing{
		ContentType: worker.ContentJSON, DeliveryMode: amqp.Persistent,
		Body: []byte(`{"data": {"string": "huge-number", "integer": ` + number + `}}`),
	})
	if d, ok := a.oneDeadLetter("queue message whose error repeats a 200 KB number"); ok {
		if e := fmt.Sprint(d.Headers[worker.HeaderError]); len(e) > 2048 {
			t.Errorf("x-error is %d bytes long; it must be truncated", len(e))
		}
	}
	if line := longestLine(a.p.Logs()); len(line) > 8192 {
		t.Errorf("a log line of %d bytes: %.200s...", len(line), line)
	}
}

// 2. A bad body with 1,190 headers (~131 KB, just under the broker's frame
// size): the dead letter must not copy them all and add its own on top.
func TestHostileHeaderFlood(t *testing.T) {
	a := newArena(t)
	// 1,190 entries of 110 bytes each: 130,900 bytes, just under the
	// broker's frame_max (131,072), so the broker takes the message, and a
	// copy with a few headers more does not fit.
	headers := amqp.Table{}
	for i := range 1190 {
		headers[fmt.Sprintf("h%04d", i)] = strings.Repeat("v", 99)
	}
	a.pub.publish("example-item.store", amqp.Publishing{
		ContentType: worker.ContentJSON, DeliveryMode: amqp.Persistent, Headers: headers,
		Body: []byte("{not json"),
	})
	if d, ok := a.oneDeadLetter("bad body with 1,190 headers (~131 KB)"); ok {
		if d.Headers[worker.HeaderError] == nil {
			t.Errorf("the dead letter has no %s header: %v", worker.HeaderError, keys(d.Headers))
		}
		if string(d.Body) != "{not json" {
			t.Errorf("the dead letter's body is %q, want the original", d.Body)
		}
	}
}

// 3. Headers nested deeper than amqp091-go reads (32 levels): the library
// cannot parse the delivery, so the service must never be handed it raw.
func TestHostileDeepHeaders(t *testing.T) {
	a := newArena(t)
	deep := amqp.Table{"leaf": "x"}
	for range 40 {
		deep = amqp.Table{"n": deep}
	}
	a.pub.publish("example-item.store", amqp.Publishing{
		ContentType: worker.ContentJSON, DeliveryMode: amqp.Persistent, Headers: amqp.Table{"deep": deep},
		Body: []byte(`{"data": {"string": "deep-headers", "integer": 1}}`),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	reply, callErr := a.seed.Send(ctx, "hello_world", amqp.Publishing{
		ContentType: worker.ContentJSON, Headers: amqp.Table{"deep": deep}, Body: []byte(`{"data": null}`),
	})
	cancel()
	dead := a.waitDead(1, 20*time.Second, 3*time.Second)
	note := fmt.Sprintf("%d dead letters for 1 queue message; RPC call: ", dead)
	if callErr != nil {
		note += "no reply"
	} else {
		note += "answered " + reply.Error.Type
	}
	r := a.finish("headers nested 40 levels deep (queue and RPC)", note)
	wantCalm(t, r)
	if dead != 1 {
		t.Errorf("%d dead letters, want exactly 1", dead)
	}
	if callErr != nil {
		t.Errorf("RPC call with deep headers: %v, want a BadRequest reply", callErr)
	} else if reply.Success || reply.Error == nil || reply.Error.Type != worker.TypeBadRequest {
		t.Errorf("RPC call with deep headers answered %s, want BadRequest", reply.Body)
	}
}

// 4. A burst of 200 messages of 10 MB each: memory is bounded in bytes, not
// in messages.
func TestHostileBurstOfBigMessages(t *testing.T) {
	testenv.RequireMemoryRun(t)
	a := newArena(t)
	body := []byte(`{"data": "` + strings.Repeat("b", 10_000_000) + `"}`)
	start := time.Now()
	for range 200 {
		a.pub.publish("queue-test", amqp.Publishing{ContentType: worker.ContentJSON, Body: body})
	}
	published := time.Since(start)
	waitQueueEmpty(t, a.env, "queue-test", 3*time.Minute)
	r := a.finish("200 messages of 10 MB to queue-test", fmt.Sprintf("published in %s, consumed in %s",
		published.Round(time.Second), time.Since(start).Round(time.Second)))
	wantCalm(t, r)
	if r.deadLetters != 0 {
		t.Errorf("%d of the valid 10 MB messages were dead-lettered", r.deadLetters)
	}
	if r.peakRSS > memoryBound {
		t.Errorf("peak RSS %d MiB, over the stated bound of %d MiB", r.peakRSS, memoryBound)
	}
}

// memoryBound is the peak resident memory the README promises under every
// hostile load of this suite.
const memoryBound = 400

// 5. Messages of 100 MiB (the broker accepts up to 128 MiB by default): far
// over the 16 MiB limit, they must not even be read into memory.
func TestHostileHugeMessages(t *testing.T) {
	testenv.RequireMemoryRun(t)
	a := newArena(t)
	huge := []byte(`{"data": "` + strings.Repeat("h", 100<<20) + `"}`)
	var answered, badRequest atomic.Int64
	var wg sync.WaitGroup
	for range 30 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			r, err := a.seed.Send(ctx, "dictionary", amqp.Publishing{ContentType: worker.ContentJSON, Body: huge})
			if err != nil {
				return
			}
			answered.Add(1)
			if !r.Success && r.Error != nil && r.Error.Type == worker.TypeBadRequest {
				badRequest.Add(1)
			}
		})
	}
	wg.Wait()
	for range 3 {
		a.pub.publish("queue-test", amqp.Publishing{ContentType: worker.ContentJSON, Body: huge})
	}
	dead := a.waitDead(3, time.Minute, 2*time.Second)
	r := a.finish("30 RPC requests of 100 MiB, 3 queue messages of 100 MiB",
		fmt.Sprintf("%d/30 answered (%d BadRequest), %d/3 dead-lettered", answered.Load(), badRequest.Load(), dead))
	wantCalm(t, r)
	if badRequest.Load() != 30 {
		t.Errorf("%d of 30 oversized requests answered BadRequest", badRequest.Load())
	}
	if dead != 3 {
		t.Errorf("%d of 3 oversized queue messages dead-lettered", dead)
	}
	if r.peakRSS > memoryBound {
		t.Errorf("peak RSS %d MiB, over the stated bound of %d MiB", r.peakRSS, memoryBound)
	}
}

// 6. A queue full of gzip bombs before the service starts: start after start
// must come up, dead-letter them all and stay within its memory.
func TestHostileGzipBombsBeforeStart(t *testing.T) {
	testenv.RequireMemoryRun(t)
	env := stack.NewEnv(t, bins)
	bomb := stack.Gzip([]byte(`{"data": {"string": "` + strings.Repeat("0", 200<<20) + `"}}`)) // 200 MiB inflated
	pub := newConfirmPublisher(t, env)
	// The queues exist once the service ran once.
	first := stack.Start(t, bins, env, "MODE=production")
	stopGracefully(t, first)

	const starts, bombs = 7, 200
	ok, peak, reconn := 0, 0, 0
	var dead int
	ch := env.Channel(t)
	for i := range starts {
		for range bombs {
			pub.publish("example-item.store", amqp.Publishing{ContentType: worker.ContentGzip, DeliveryMode: amqp.Persistent, Body: bomb})
		}
		p := stack.Launch(t, bins, env, "MODE=production")
		deadline := time.Now().Add(90 * time.Second)
		for !p.Exited() && time.Now().Before(deadline) && queueDepth(t, ch, "example-item.store"+worker.DeadLetterSuffix) < (i+1)*bombs {
			time.Sleep(200 * time.Millisecond)
		}
		if p.Exited() {
			code, _ := p.Wait(time.Second)
			t.Errorf("start %d: the service exited %d with 200 gzip bombs queued; the end of its log:\n%s", i+1, code, p.Tail(20))
			continue
		}
		ok++
		peak = max(peak, peakRSS(t, p.PID()))
		reconn += reconnects(p.Logs())
		stopGracefully(t, p)
		if q, err := ch.QueueDeclarePassive("example-item.store"+worker.DeadLetterSuffix, true, false, false, false, nil); err == nil {
			t.Logf("after start %d: %d dead letters, %d left in the queue", i+1, q.Messages, queueDepth(t, ch, "example-item.store"))
		}
	}
	if q, err := ch.QueueDeclarePassive("example-item.store"+worker.DeadLetterSuffix, true, false, false, false, nil); err == nil {
		dead = q.Messages
	}
	r := securityRow{
		attack: "200 gzip bombs (204 KB -> 200 MiB) queued before each of 7 starts", reconnects: reconn,
		probes: starts, answered: ok, deadLetters: dead, peakRSS: peak,
		note: fmt.Sprintf("%d/%d starts came up", ok, starts),
	}
	recordSecurity(t, r)
	if ok != starts {
		t.Errorf("%d of %d starts came up", ok, starts)
	}
	if dead != starts*bombs {
		t.Errorf("%d of %d gzip bombs dead-lettered", dead, starts*bombs)
	}
	if peak > memoryBound {
		t.Errorf("peak RSS %d MiB, over the stated bound of %d MiB", peak, memoryBound)
	}
}

// 7. Reply injection: a request whose reply_to names a route's queue must
// not make the reply run there as a job.
func TestHostileReplyInjection(t *testing.T) {
	a := newArena(t)
	tag := testenv.Name("injected-")
	ch := a.env.Channel(t)
	body, _ := json.Marshal(map[string]any{"data": map[string]any{"string": tag, "integer": 1}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// dictionary echoes its data, so its reply {"success": true, "data":
	// {...}} reads as a valid example-item.store job.
	if err := ch.PublishWithContext(ctx, "", "dictionary", false, false, amqp.Publishing{
		ContentType: worker.ContentJSON, ReplyTo: "example-item.store", CorrelationId: "c1", Body: body,
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	rows, _ := stack.StoredCounts(t, a.env.DB(t), tag)
	r := a.finish("request with reply_to set to a queue route (example-item.store)", fmt.Sprintf("%d rows stored from the reply", rows))
	wantCalm(t, r)
	if rows != 0 {
		t.Errorf("the reply was run as an example-item.store job: %d rows stored", rows)
	}
	if r.deadLetters != 0 {
		t.Errorf("%d dead letters: the reply reached a queue route", r.deadLetters)
	}
}

// 8. Secrets: a broker or database URL that does not parse must not print
// its password, wherever the error comes from.
func TestHostileSecretsInErrors(t *testing.T) {
	const secret = "s3cr3t-PaSS"
	cases := map[string][]string{
		"BROKER_URL with a bad port":     {"BROKER_URL=amqp://svc:" + secret + "@127.0.0.1:99999/"},
		"BROKER_URL with a bad % escape": {"BROKER_URL=amqp://svc:" + secret + "%zz@127.0.0.1:5672/"},
		"BROKER_URL with a bad scheme":   {"BROKER_URL=http://svc:" + secret + "@127.0.0.1:5672/"},
		"DB_URL with a bad port":         {"DB_URL=postgres://svc:" + secret + "@127.0.0.1:99999/db"},
		"DB_URL with a bad % escape":     {"DB_URL=postgres://svc:" + secret + "%zz@127.0.0.1/db"},
		"wrong broker password":          {"BROKER_USER=guest", "BROKER_PASS=" + secret, "START_TIMEOUT=3s"},
	}
	leaked := 0
	for name, env := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, bins.Service)
		cmd.Env = append(os.Environ(), append([]string{"MODE=production", "BROKER_USER=svc", "BROKER_PASS=x", "DB_USER=svc", "DB_PASS=x", "DB_SSLMODE=disable"}, env...)...)
		out, _ := cmd.CombinedOutput()
		cancel()
		if strings.Contains(string(out), secret) || strings.Contains(string(out), strings.ToLower(secret)) {
			leaked++
			t.Errorf("%s: the password is in the output:\n%s", name, out)
		} else if len(strings.TrimSpace(string(out))) == 0 {
			t.Errorf("%s: the service said nothing", name)
		}
	}
	recordSecurity(t, securityRow{attack: "URLs with a password that do not parse; a refused password", note: fmt.Sprintf("%d of %d outputs show the password", leaked, len(cases))})
}

// 9. Internals: a production error reply or dead letter carries a public
// message and an error id; the driver's text is only in the log, under the
// same id.
func TestHostileInternalsInReplies(t *testing.T) {
	a := newArena(t)
	admin := a.env.DB(t)
	// The app role loses its grants: every query is "permission denied".
	if _, err := admin.ExecContext(context.Background(), `REVOKE ALL ON example_item FROM `+quoteIdent(a.env.Roles.App)); err != nil {
		t.Fatal(err)
	}
	client := a.env.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := client.Call(ctx, "example-item.create", map[string]any{"string": "x"}, nil)
	var remote *worker.RemoteError
	if !errors.As(err, &remote) {
		t.Fatalf("example-item.create without grants: %v, want an error reply", err)
	}
	leak := regexp.MustCompile(`(?i)permission denied|SQLSTATE|example_item|user=|database=|127\.0\.0\.1`)
	if leak.MatchString(remote.Message) {
		t.Errorf("the production reply carries internals: %q", remote.Message)
	}
	id := errorID(remote.Message)
	if id == "" {
		t.Errorf("the reply %q carries no error id", remote.Message)
	} else if !strings.Contains(a.p.Logs(), id) || !strings.Contains(strings.ToLower(a.p.Logs()), "permission denied") {
		t.Errorf("the log does not hold error id %s with the internal error; its end:\n%s", id, a.p.Tail(10))
	}
	// A queue message failing the same way is dead-lettered after its
	// retries with the public message in x-error.
	a.pub.publish("example-item.store", amqp.Publishing{
		ContentType: worker.ContentJSON, DeliveryMode: amqp.Persistent,
		Body: []byte(`{"data": {"string": "no-grants", "integer": 1}}`),
	})
	dead := a.waitDead(1, 30*time.Second, 0)
	xerr := ""
	if d, ok := getOne(t, a.env, "example-item.store"+worker.DeadLetterSuffix); ok {
		xerr = fmt.Sprint(d.Headers[worker.HeaderError])
	}
	r := a.finish("handler fails inside the database driver (grants revoked)", fmt.Sprintf("reply message %q; x-error %q", remote.Message, xerr))
	wantCalm(t, r)
	if dead != 1 {
		t.Errorf("%d dead letters, want 1", dead)
	}
	if leak.MatchString(xerr) || errorID(xerr) == "" {
		t.Errorf("the dead letter's x-error %q carries internals or no error id", xerr)
	}
}

// 10. A route that logs what it received must not log a whole 1 MiB
// payload.
func TestHostileLoggedPayload(t *testing.T) {
	a := newArena(t)
	a.pub.publish("queue-test", amqp.Publishing{
		ContentType: worker.ContentJSON,
		Body:        []byte(`{"data": "` + strings.Repeat("p", 1<<20) + `"}`),
	})
	waitQueueEmpty(t, a.env, "queue-test", 30*time.Second)
	time.Sleep(500 * time.Millisecond)
	line := longestLine(a.p.Logs())
	r := a.finish("1 MiB payload to queue-test, which logs what it gets", fmt.Sprintf("longest log line %d bytes", len(line)))
	wantCalm(t, r)
	if len(line) > 4096 {
		t.Errorf("a log line of %d bytes", len(line))
	}
}

// --- helpers ---

// securityRow is one line of the security table.
type securityRow struct {
	attack           string
	reconnects       int
	probes, answered int
	deadLetters      int
	peakRSS          int // MiB
	note             string
}

func recordSecurity(t *testing.T, r securityRow) {
	t.Helper()
	t.Logf("%s: %d reconnects, %d/%d probes answered, %d dead letters, peak RSS %d MiB; %s",
		r.attack, r.reconnects, r.answered, r.probes, r.deadLetters, r.peakRSS, r.note)
	securityTable.Add(r.attack, r.reconnects, fmt.Sprintf("%d/%d", r.answered, r.probes), r.deadLetters, r.peakRSS, r.note)
}

// probe calls hello_world every 100 ms while an attack runs.
type probe struct {
	sent, ok atomic.Int64
	cancel   context.CancelFunc
	done     chan struct{}
}

func startProbe(t *testing.T, env stack.Env) *probe {
	t.Helper()
	client := env.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	p := &probe{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			p.sent.Add(1)
			callCtx, callCancel := context.WithTimeout(ctx, 2*time.Second)
			var reply string
			if err := client.Call(callCtx, "hello_world", nil, &reply); err == nil && reply == "Hello world!" {
				p.ok.Add(1)
			} else if ctx.Err() != nil {
				p.sent.Add(-1) // cut off by stop, not by the service
			}
			callCancel()
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
			}
		}
	}()
	t.Cleanup(func() { p.stop() })
	return p
}

func (p *probe) stop() (sent, ok int) {
	p.cancel()
	<-p.done
	return int(p.sent.Load()), int(p.ok.Load())
}

// confirmPublisher publishes on a confirm-mode channel of its own.
type confirmPublisher struct {
	t  *testing.T
	ch *amqp.Channel
	mu sync.Mutex
}

func newConfirmPublisher(t *testing.T, env stack.Env) *confirmPublisher {
	t.Helper()
	ch := env.Channel(t)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	return &confirmPublisher{t: t, ch: ch}
}

// publish sends msg to route and waits for the broker's confirm.
func (c *confirmPublisher) publish(route string, msg amqp.Publishing) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, "", route, true, false, msg)
	if err != nil {
		c.t.Fatalf("publish to %s: %v", route, err)
	}
	if ok, err := dc.WaitContext(ctx); err != nil || !ok {
		c.t.Fatalf("publish to %s not confirmed: %v", route, err)
	}
}

// getOne reads one message of queue, if there is one, and leaves it there.
func getOne(t *testing.T, env stack.Env, queue string) (amqp.Delivery, bool) {
	t.Helper()
	d, ok, err := env.Channel(t).Get(queue, false)
	if err != nil {
		t.Errorf("read %s: %v", queue, err)
	}
	if ok {
		_ = d.Nack(false, true)
	}
	return d, ok
}

// waitQueueEmpty waits until queue has no message left, ready or unacked.
func waitQueueEmpty(t *testing.T, env stack.Env, queue string, limit time.Duration) {
	t.Helper()
	ch := env.Channel(t)
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if q.Messages == 0 && q.Consumers > 0 && unacked(t, env, queue) == 0 {
			return
		}
	}
	t.Errorf("%s still holds messages after %s", queue, limit)
}

// unacked returns the messages of queue delivered and not yet acked, from
// rabbitmqctl.
func unacked(t *testing.T, env stack.Env, queue string) int {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "-q", "list_queues", "-p", env.VHost, "--no-table-headers", "name", "messages_unacknowledged").Output()
	if err != nil {
		return 0 // without rabbitmqctl the ready count alone decides
	}
	for _, line := range strings.Split(string(out), "\n") {
		var name string
		var n int
		if _, err := fmt.Sscan(line, &name, &n); err == nil && name == queue {
			return n
		}
	}
	return 0
}

// reconnects counts the connection losses the service logged.
func reconnects(logs string) int {
	return strings.Count(logs, "RabbitMQ connection lost") + strings.Count(logs, "RabbitMQ connection closed, reconnecting")
}

// peakRSS returns the process's peak resident memory (VmHWM) in MiB.
func peakRSS(t *testing.T, pid int) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Errorf("read peak memory of %d: %v", pid, err)
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			var kb int
			_, _ = fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), &kb)
			return kb / 1024
		}
	}
	t.Errorf("no VmHWM in /proc/%d/status", pid)
	return 0
}

func stopGracefully(t *testing.T, p *stack.Process) {
	t.Helper()
	_ = p.Signal(syscall.SIGTERM)
	if _, err := p.Wait(30 * time.Second); err != nil {
		t.Errorf("service did not stop: %v", err)
	}
}

// errorID finds an error id ("error id 0123abcd...") in a message.
func errorID(s string) string {
	m := regexp.MustCompile(`error id ([0-9a-f]{8,})`).FindStringSubmatch(s)
	if m == nil {
		return ""
	}
	return m[1]
}

func longestLine(s string) string {
	longest := ""
	for line := range strings.SplitSeq(s, "\n") {
		if len(line) > len(longest) {
			longest = line
		}
	}
	return longest
}

func keys(t amqp.Table) []string {
	out := make([]string, 0, len(t))
	for k := range t {
		out = append(out, k)
	}
	return out
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
