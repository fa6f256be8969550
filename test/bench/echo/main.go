// Command echo is the baseline of the outside benchmark: a hand-written
// amqp091-go RPC server, as one would write it without this project's
// worker. It consumes one queue (declared as the service declares its RPC
// queues: classic, not durable) with the service's prefetch, answers every
// request with the reply hello_world gives, and acks it.
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"

	amqp "github.com/rabbitmq/amqp091-go"
)

func main() {
	url := flag.String("url", "amqp://guest:guest@127.0.0.1:5672/", "broker URL")
	queue := flag.String("queue", "echo", "queue to serve")
	prefetch := flag.Int("prefetch", 200, "deliveries in flight")
	flag.Parse()
	conn, err := amqp.Dial(*url)
	if err != nil {
		log.Fatalf("dial: %v", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		log.Fatal(err)
	}
	if err := ch.Qos(*prefetch, 0, false); err != nil {
		log.Fatal(err)
	}
	if _, err := ch.QueueDeclare(*queue, false, false, false, false, nil); err != nil {
		log.Fatal(err)
	}
	deliveries, err := ch.Consume(*queue, "", false, false, false, false, nil)
	if err != nil {
		log.Fatal(err)
	}
	reply := []byte(`{"success":true,"data":"Hello world!"}`)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Printf("echo serving %s", *queue) // the benchmark waits for this line
	for {
		select {
		case d := <-deliveries:
			_ = ch.PublishWithContext(ctx, "", d.ReplyTo, false, false, amqp.Publishing{
				ContentType: "application/json", CorrelationId: d.CorrelationId, Type: "result", Body: reply,
			})
			_ = d.Ack(false)
		case <-ctx.Done():
			_ = conn.Close()
			return
		}
	}
}
