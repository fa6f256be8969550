package testenv

import (
	"fmt"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Channel opens a plain amqp091-go connection to the test broker and a
// channel on it, for a test's own look at the broker (declaring, peeking,
// publishing around the code under test). Both close at cleanup.
func Channel(tb testing.TB) *amqp.Channel {
	tb.Helper()
	conn, err := amqp.Dial(BrokerURL())
	if err != nil {
		tb.Fatalf("connect to the test broker: %v", err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		tb.Fatalf("open a channel on the test broker: %v", err)
	}
	return ch
}

// DeleteQueues deletes the named queues on the test broker, each on a
// channel of its own so that one the broker refuses does not stop the
// rest; a queue that does not exist is no error. It returns the first
// error, naming the queue.
func DeleteQueues(names ...string) error {
	conn, err := amqp.Dial(BrokerURL())
	if err != nil {
		return fmt.Errorf("delete queues %v: %w", names, err)
	}
	defer conn.Close()
	var first error
	for _, n := range names {
		ch, err := conn.Channel()
		if err == nil {
			_, err = ch.QueueDelete(n, false, false, false)
			_ = ch.Close()
		}
		if err != nil && first == nil {
			first = fmt.Errorf("delete queue %s: %w", n, err)
		}
	}
	return first
}
