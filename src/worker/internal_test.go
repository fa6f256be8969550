package worker

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
)

// A connection that closes right after its handshake, before anyone used
// it, is noticed and replaced: the Conn does not take it for its own Close.
func TestCloseRightAfterHandshakeNotMissed(t *testing.T) {
	cfg := testBroker(t)
	var once sync.Once
	hook := func(sock net.Conn) { once.Do(func() { _ = sock.Close() }) }
	testHookConnected.Store(&hook)
	t.Cleanup(func() { testHookConnected.Store(nil) })

	conn := dialTest(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := conn.channel(ctx)
	if err != nil {
		t.Fatalf("no channel after the first connection closed at once (the Conn stopped reconnecting): %v", err)
	}
	_ = ch.Close()
}

// testBroker skips in -short mode, fails when the broker is down, and
// returns its Config.
func testBroker(t *testing.T) Config {
	t.Helper()
	if testing.Short() {
		t.Skip("needs RabbitMQ; skipped with -short")
	}
	testenv.RequireBroker(t)
	port, _ := strconv.Atoi(testenv.Env("BROKER_PORT", "5672"))
	return Config{
		Host: testenv.Env("BROKER_HOST", "127.0.0.1"), Port: port,
		User: testenv.Env("BROKER_USER", "guest"), Password: testenv.Env("BROKER_PASS", "guest"),
		VHost: testenv.Env("BROKER_VHOST", "/"),
	}
}

// dialTest connects to cfg within 30 s; the Conn is closed at cleanup.
func dialTest(t *testing.T, cfg Config) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// Concurrent publishes that share a message id, some to a missing queue,
// each get their own outcome: a returned message is never taken for
// another's, so none is reported delivered when it was not.
func TestReturnsMatchedPerPublish(t *testing.T) {
	cfg := testBroker(t)
	conn := dialTest(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ch, err := conn.channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	q, missing := testenv.Name("wt-pubkey-"), testenv.Name("wt-pubkey-missing-")
	if _, err := ch.QueueDeclare(q, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = ch.QueueDelete(q, false, false, false); _ = ch.Close() }()
	p := newPublisher(conn, slog.Default())
	defer p.close()

	const n = 400
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			to := q
			if i%2 == 1 {
				to = missing
			}
			errs[i] = p.publish(ctx, to, amqp.Publishing{MessageId: "same", Body: []byte(`{"data":1}`)})
		})
	}
	wg.Wait()
	wrong := 0
	for i, err := range errs {
		if (i%2 == 1) != errors.Is(err, ErrNoRoute) {
			wrong++
			if wrong <= 3 {
				t.Errorf("publish %d (to the missing queue: %v): %v", i, i%2 == 1, err)
			}
		}
	}
	if wrong > 0 {
		t.Fatalf("%d of %d publishes got another's outcome", wrong, n)
	}
	info, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
	if err != nil || info.Messages != n/2 {
		t.Fatalf("queue holds %d messages (%v), want %d", info.Messages, err, n/2)
	}
}
