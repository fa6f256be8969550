package worker_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
	"example.com/service/src/worker"
)

// A request whose reply_to names a queue that is not a reply queue (a
// route's, say) is not run and gets no reply there: a reply can never be
// run as somebody's request or job.
func TestReplyToMustBeAReplyQueue(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r, victim := route(t, "replyto"), route(t, "victim")
	var runs atomic.Int32
	handler := worker.Func(func(_ context.Context, s string) (string, error) { runs.Add(1); return s, nil })
	rpc := worker.NewRPC(conn)
	rpc.Handle(r, handler)
	start(t, rpc)
	ch := raw(t)
	if _, err := ch.QueueDeclare(victim, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ch.PublishWithContext(ctx, "", r, false, false, amqp.Publishing{ReplyTo: victim, Body: []byte(`{"data": "x"}`)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the request taken off its queue", func() bool { return queueLen(t, ch, r) == 0 })
	time.Sleep(200 * time.Millisecond)
	if n := queueLen(t, ch, victim); n != 0 || runs.Load() != 0 {
		t.Fatalf("%d replies in %s, handler ran %d times; want none", n, victim, runs.Load())
	}

	// A worker told to allow it answers there.
	r2 := route(t, "replyto-allowed")
	rpc2 := worker.NewRPC(conn, worker.WithReplyTo(func(string) bool { return true }))
	rpc2.Handle(r2, handler)
	start(t, rpc2)
	if err := ch.PublishWithContext(ctx, "", r2, false, false, amqp.Publishing{ReplyTo: victim, Body: []byte(`{"data": "y"}`)}); err != nil {
		t.Fatal(err)
	}
	if d := getOne(t, ch, victim); d.Type != "result" || !strings.Contains(string(d.Body), `"y"`) {
		t.Fatalf("reply %q of type %q, want the result", d.Body, d.Type)
	}
}

// A reply that lands on a queue route (some other client's worker replied
// to it) is dead-lettered, never run as a job.
func TestReplyIsNeverAJob(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r := route(t, "reply-job")
	var runs atomic.Int32
	q := worker.NewQueue(conn)
	q.Handle(r, worker.Job(func(context.Context, any) error { runs.Add(1); return nil }))
	start(t, q)
	ch := raw(t)
	for _, typ := range []string{"result", "error"} {
		if err := ch.PublishWithContext(context.Background(), "", r, false, false, amqp.Publishing{
			Type: typ, Body: []byte(`{"success": true, "data": {"string": "x"}}`), DeliveryMode: amqp.Persistent,
		}); err != nil {
			t.Fatal(err)
		}
		d := getOne(t, ch, r+worker.DeadLetterSuffix)
		if !strings.Contains(d.Headers[worker.HeaderError].(string), "reply") || d.Headers[worker.HeaderErrorType] != worker.TypeBadRequest {
			t.Fatalf("dead letter headers %v, want a BadRequest saying it is a reply", d.Headers)
		}
	}
	if runs.Load() != 0 {
		t.Fatalf("the handler ran %d times on replies", runs.Load())
	}
}

// Queue routes are quorum queues whose poison messages the broker
// dead-letters after the delivery limit: here a consumer that keeps
// returning a message (as a process crashing on it would).
func TestDeliveryLimitDeadLetters(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r := route(t, "limit")
	q := worker.NewQueue(conn, worker.WithDeliveryLimit(2))
	q.Handle(r, worker.Job(func(context.Context, any) error { return nil }))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := q.Start(ctx); err != nil { // declares the queues
		t.Fatal(err)
	}
	if err := q.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	ch := raw(t)
	if err := ch.PublishWithContext(ctx, "", r, false, false, amqp.Publishing{Body: []byte(`{"data": "poison"}`), DeliveryMode: amqp.Persistent}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 { // delivered and returned, three times: one past the limit
		var d amqp.Delivery
		eventually(t, "the message back in its queue", func() bool {
			var ok bool
			var err error
			d, ok, err = ch.Get(r, false)
			if err != nil {
				t.Fatal(err)
			}
			return ok
		})
		if n, _ := d.Headers["x-delivery-count"].(int64); int(n) != i {
			t.Errorf("delivery %d has x-delivery-count %v", i+1, d.Headers["x-delivery-count"])
		}
		_ = d.Nack(false, true)
	}
	d := getOne(t, ch, r+worker.DeadLetterSuffix)
	deaths, _ := d.Headers["x-death"].([]any)
	if string(d.Body) != `{"data": "poison"}` || len(deaths) == 0 {
		t.Fatalf("dead letter %q with x-death %v, want the message dead-lettered by the broker", d.Body, d.Headers["x-death"])
	}
	if n := queueLen(t, ch, r); n != 0 {
		t.Fatalf("%d messages left in %s", n, r)
	}
}

// A queue of the other type is a start error that names it, both types and
// the way out, not a crash loop of PRECONDITION_FAILED.
func TestQueueTypeMismatchIsAClearStartError(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r := route(t, "mismatch")
	if _, err := raw(t).QueueDeclare(r, true, false, false, false, nil); err != nil { // classic, as older versions made it
		t.Fatal(err)
	}
	q := worker.NewQueue(conn)
	q.Handle(r, worker.Job(func(context.Context, any) error { return nil }))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := q.Start(ctx)
	if err == nil {
		_ = q.Shutdown(ctx)
		t.Fatal("Start declared a quorum queue over a classic one")
	}
	for _, want := range []string{r, "exists as a classic queue", "as a quorum queue", "Moving a route to quorum queues", "BROKER_QUEUE_TYPE=classic"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// With the old type chosen, it starts on the queue as it is.
	q2 := worker.NewQueue(conn, worker.WithQueueType(worker.Classic))
	q2.Handle(r, worker.Job(func(context.Context, any) error { return nil }))
	deleteQueues(t, r+worker.DeadLetterSuffix) // the failed start made a quorum dead-letter queue
	start(t, q2)
}

// WithRouteQueueType makes one RPC route quorum (to survive a node loss)
// while the worker's other routes stay classic.
func TestRouteQueueType(t *testing.T) {
	requireBroker(t)
	classic, quorum := route(t, "rt-classic"), route(t, "rt-quorum")
	rpc := worker.NewRPC(dial(t, ""), worker.WithRouteQueueType(quorum, worker.Quorum))
	rpc.Handle(classic, worker.Func(hello))
	rpc.Handle(quorum, worker.Func(hello))
	start(t, rpc)
	// Redeclaring with the same settings succeeds; any other type is
	// refused by the broker, which proves the type each was declared as.
	ch := raw(t)
	if _, err := ch.QueueDeclare(quorum, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatalf("route %s is not a quorum queue: %v", quorum, err)
	}
	if _, err := ch.QueueDeclare(classic, false, false, false, false, amqp.Table{"x-dead-letter-exchange": "rpc.dlx"}); err != nil {
		t.Fatalf("route %s is not the classic RPC queue: %v", classic, err)
	}
	c := client(t, dial(t, ""))
	for _, r := range []string{classic, quorum} {
		callEventually(t, c, r)
	}
}

// A classic queue route has no dead-letter exchange (as the seed declares
// it), so the broker cannot dead-letter a body too large to read: the
// worker reads it whole and dead-letters it itself.
func TestOversizeBodyOnClassicQueueRoute(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "", worker.WithMaxBodySize(1<<20))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r := route(t, "big-classic")
	q := worker.NewQueue(conn, worker.WithQueueType(worker.Classic))
	q.Handle(r, worker.Job(func(context.Context, any) error { return nil }))
	start(t, q)
	ch := raw(t)
	big := []byte(`{"data": "` + strings.Repeat("x", 2<<20) + `"}`)
	if err := ch.PublishWithContext(ctx, "", r, false, false, amqp.Publishing{Body: big, DeliveryMode: amqp.Persistent}); err != nil {
		t.Fatal(err)
	}
	d := getOne(t, ch, r+worker.DeadLetterSuffix)
	if len(d.Body) != len(big) || !strings.Contains(fmt.Sprint(d.Headers[worker.HeaderError]), "over the limit") {
		t.Fatalf("dead letter of %d bytes, x-error %v; want the whole %d bytes and the limit named", len(d.Body), d.Headers[worker.HeaderError], len(big))
	}
}

// A full dead-letter queue refuses more (its bound, reject-publish): the
// messages stay in their route's queue, retried slowly, and land once there
// is room. Nothing is dropped. (A quorum queue applies its bound to what it
// holds, not to what is on its way: it takes the dead letters in flight,
// here one at a time with a prefetch of 1, past the bound before refusing.)
func TestDeadLetterQueueIsBounded(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "")
	r := route(t, "dlq-bound")
	q := worker.NewQueue(conn, worker.WithDeadLetterLimit(2, 0), worker.WithPrefetch(1))
	q.Handle(r, worker.Job(func(context.Context, any) error { return worker.Errorf(worker.TypeBadRequest, "refused") }))
	start(t, q)
	ch := raw(t)
	const sent = 6
	for i := range sent {
		body := fmt.Appendf(nil, `{"data": %d}`, i)
		if err := ch.PublishWithContext(context.Background(), "", r, false, false, amqp.Publishing{Body: body, DeliveryMode: amqp.Persistent}); err != nil {
			t.Fatal(err)
		}
	}
	dlq := r + worker.DeadLetterSuffix
	eventually(t, "the dead-letter queue at its bound", func() bool { return queueLen(t, ch, dlq) >= 2 })
	time.Sleep(1500 * time.Millisecond)
	held := queueLen(t, ch, dlq)
	if held > 3 {
		t.Fatalf("the dead-letter queue bounded to 2 holds %d", held)
	}
	// Purge what it holds; the held-back messages land in turn, none lost.
	seen := 0
	for deadline := time.Now().Add(45 * time.Second); seen < sent && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		n, err := ch.QueuePurge(dlq, false)
		if err != nil {
			t.Fatal(err)
		}
		seen += n
	}
	if seen != sent {
		t.Fatalf("%d of %d messages reached the dead-letter queue", seen, sent)
	}
}

// Bodies over the limit are never read: an RPC request is answered
// BadRequest, a queue message is moved whole to the dead-letter queue by
// the broker.
func TestOversizeBodies(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "", worker.WithMaxBodySize(1<<20))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rr, qr := route(t, "big-rpc"), route(t, "big-queue")
	var runs atomic.Int32
	rpc := worker.NewRPC(conn)
	rpc.Handle(rr, worker.Func(func(context.Context, any) (any, error) { runs.Add(1); return nil, nil }))
	start(t, rpc)
	q := worker.NewQueue(conn)
	q.Handle(qr, worker.Job(func(context.Context, any) error { runs.Add(1); return nil }))
	start(t, q)
	big := []byte(`{"data": "` + strings.Repeat("x", 2<<20) + `"}`)
	ch := raw(t)
	replies, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.PublishWithContext(ctx, "", rr, false, false, amqp.Publishing{ReplyTo: replies.Name, Body: big}); err != nil {
		t.Fatal(err)
	}
	d := getOne(t, ch, replies.Name)
	if !strings.Contains(string(d.Body), `"type":"BadRequest"`) || !strings.Contains(string(d.Body), "over the limit of 1048576 bytes") {
		t.Fatalf("reply %s, want BadRequest naming the limit", d.Body)
	}
	if err := ch.PublishWithContext(ctx, "", qr, false, false, amqp.Publishing{Body: big, DeliveryMode: amqp.Persistent}); err != nil {
		t.Fatal(err)
	}
	dead := getOne(t, ch, qr+worker.DeadLetterSuffix)
	if len(dead.Body) != len(big) {
		t.Fatalf("dead letter of %d bytes, want the whole %d", len(dead.Body), len(big))
	}
	if n := runs.Load(); n != 0 {
		t.Fatalf("handlers ran %d times on bodies over the limit", n)
	}
}

// The bytes of held deliveries are bounded, not only their count: with a
// budget of 4 MiB and bodies of 1 MiB, at most 4 handlers run at once
// though the prefetch allows 50.
func TestInflightBytesBudget(t *testing.T) {
	requireBroker(t)
	conn := dial(t, "", worker.WithMaxInflightBytes(4<<20), worker.WithMaxBodySize(2<<20))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := route(t, "budget")
	var running, peak, done atomic.Int32
	q := worker.NewQueue(conn, worker.WithPrefetch(50))
	q.Handle(r, worker.Job(func(context.Context, string) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		running.Add(-1)
		done.Add(1)
		return nil
	}))
	start(t, q)
	ch := raw(t)
	body := []byte(`{"data": "` + strings.Repeat("m", 1<<20-20) + `"}`)
	for range 24 {
		if err := ch.PublishWithContext(ctx, "", r, false, false, amqp.Publishing{Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "all 24 handled", func() bool { return done.Load() == 24 })
	if p := peak.Load(); p > 4 || p < 2 {
		t.Fatalf("%d handlers ran at once; a 4 MiB budget of 1 MiB bodies allows 4", p)
	}
}

// TLS is done below the frame guard, with the CA and server name of the
// configuration: through a TLS front of the broker calls work; a
// certificate for another name is refused with a clear error.
func TestTLS(t *testing.T) {
	requireBroker(t)
	ca, serverCert := testCA(t, "broker.test")
	front := tlsFront(t, serverCert, testenv.BrokerAddr())
	cfg := brokerConfig()
	host, port, _ := net.SplitHostPort(front)
	cfg.Host = host
	cfg.Port = atoi(port)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	cfg.TLS = &tls.Config{RootCAs: pool, ServerName: "broker.test"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := worker.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("dial over TLS: %v", err)
	}
	defer conn.Close()
	r := route(t, "tls")
	rpc := worker.NewRPC(conn)
	rpc.Handle(r, worker.Func(func(_ context.Context, s string) (string, error) { return "tls " + s, nil }))
	start(t, rpc)
	var got string
	if err := client(t, conn).Call(ctx, r, "ok", &got); err != nil || got != "tls ok" {
		t.Fatalf("call over TLS: %q, %v", got, err)
	}

	cfg.TLS = &tls.Config{RootCAs: pool, ServerName: "other.test"}
	short, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel2()
	if _, err := worker.Dial(short, cfg); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("dial with the wrong server name: %v, want a certificate error", err)
	}
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// testCA makes a CA and a server certificate for name signed by it.
func testCA(t *testing.T, name string) (*x509.Certificate, tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	skey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	stmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	sder, err := x509.CreateCertificate(rand.Reader, stmpl, ca, &skey.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return ca, tls.Certificate{Certificate: [][]byte{sder}, PrivateKey: skey}
}

// tlsFront terminates TLS with cert and forwards to target; it returns its
// address and stops at cleanup.
func tlsFront(t *testing.T, cert tls.Certificate, target string) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				b, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer b.Close()
				go func() { _, _ = io.Copy(b, c); _ = b.Close() }()
				_, _ = io.Copy(c, b)
			})
		}
	})
	return ln.Addr().String()
}
