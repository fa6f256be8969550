package worker

import (
	"fmt"
	"net"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
)

// The guard refuses exactly the headers amqp091-go cannot read, checked
// against amqp091-go itself: each message goes through the real broker to a
// plain amqp091-go connection, then to one through a guard.
func TestGuardAgreesWithAmqp091(t *testing.T) {
	cfg := testBroker(t)
	uri, err := cfg.uri()
	if err != nil {
		t.Fatal(err)
	}
	url := uri.String()
	pub := testenv.Channel(t) // the test broker, as url is
	queue := testenv.Name("wt-guard-")
	if _, err := pub.QueueDeclare(queue, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}

	tables := func(depth int) amqp.Table {
		t := amqp.Table{"leaf": "x"}
		for range depth {
			t = amqp.Table{"n": t}
		}
		return amqp.Table{"deep": t} // the top table is one level more
	}
	arrays := func(depth int) amqp.Table {
		var a any = "x"
		for range depth {
			a = []any{a}
		}
		return amqp.Table{"a": a}
	}
	entries := func(n int) amqp.Table {
		t := amqp.Table{}
		for i := range n {
			t[fmt.Sprintf("k%05d", i)] = ""
		}
		return t
	}
	cases := []struct {
		name     string
		headers  amqp.Table
		readable bool
	}{
		{"31 tables below the top", tables(31), true},
		{"32 tables below the top", tables(32), false},
		{"32 nested arrays", arrays(32), true},
		{"33 nested arrays", arrays(33), false},
		{"8192 entries", entries(8192), true},
		{"8193 entries", entries(8193), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := pub.Publish("", queue, false, false, amqp.Publishing{Headers: tc.headers, Body: []byte("body")}); err != nil {
				t.Fatal(err)
			}
			// Plain amqp091-go.
			plain, err := amqp.Dial(url)
			if err != nil {
				t.Fatal(err)
			}
			ch, err := plain.Channel()
			if err != nil {
				t.Fatal(err)
			}
			d, ok, err := getWithin(ch, queue)
			read := err == nil && ok
			if read {
				_ = d.Nack(false, true) // back for the guarded read
			}
			_ = plain.Close()
			if read != tc.readable {
				t.Fatalf("plain amqp091-go read it: %v (%v); the test assumes %v", read, err, tc.readable)
			}
			// Through the guard: always readable, refused where amqp091-go failed.
			guarded, err := amqp.DialConfig(url, amqp.Config{Dial: func(network, addr string) (net.Conn, error) {
				c, err := net.DialTimeout(network, addr, 5*time.Second)
				if err != nil {
					return nil, err
				}
				return newGuard(c, 1<<20, nil), nil
			}})
			if err != nil {
				t.Fatal(err)
			}
			defer guarded.Close()
			gch, err := guarded.Channel()
			if err != nil {
				t.Fatal(err)
			}
			d, ok, err = getWithin(gch, queue)
			if err != nil || !ok {
				t.Fatalf("through the guard: %v, %v", ok, err)
			}
			_ = d.Ack(false)
			_, refused := d.Headers[HeaderHeadersRefused]
			if refused == tc.readable || string(d.Body) != "body" {
				t.Errorf("through the guard: refused %v (headers %d), body %q; amqp091-go reads it: %v", refused, len(d.Headers), d.Body, tc.readable)
			}
		})
	}
}

// getWithin gets one message of queue, waiting up to 5 s for it.
func getWithin(ch *amqp.Channel, queue string) (amqp.Delivery, bool, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, ok, err := ch.Get(queue, false)
		if err != nil || ok || time.Now().After(deadline) {
			return d, ok, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
