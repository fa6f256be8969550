package worker

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"example.com/service/src/testenv"
)

// A connection that closes right after its handshake, before anyone used
// it, is noticed and replaced: the Conn does not take it for its own Close.
func TestCloseRightAfterHandshakeNotMissed(t *testing.T) {
	if testing.Short() {
		t.Skip("needs RabbitMQ; skipped with -short")
	}
	testenv.RequireBroker(t)
	port, _ := strconv.Atoi(testenv.Env("BROKER_PORT", "5672"))
	cfg := Config{
		Host: testenv.Env("BROKER_HOST", "127.0.0.1"), Port: port,
		User: testenv.Env("BROKER_USER", "guest"), Password: testenv.Env("BROKER_PASS", "guest"),
		VHost: testenv.Env("BROKER_VHOST", "/"),
	}
	var once sync.Once
	hook := func(sock net.Conn) { once.Do(func() { _ = sock.Close() }) }
	testHookConnected.Store(&hook)
	t.Cleanup(func() { testHookConnected.Store(nil) })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.channel(ctx)
	if err != nil {
		t.Fatalf("no channel after the first connection closed at once (the Conn stopped reconnecting): %v", err)
	}
	_ = ch.Close()
}
