// Command load is the client of the outside benchmark, in a process of its
// own: it calls one RPC route from -concurrency goroutines for -duration,
// each with a channel of its own and RabbitMQ's direct reply-to, the
// request {"data": null} as plain JSON, and prints one JSON line: calls
// per second, median and 99th percentile latency in microseconds.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func main() {
	url := flag.String("url", "amqp://guest:guest@127.0.0.1:5672/", "broker URL")
	route := flag.String("route", "hello_world", "RPC route to call")
	concurrency := flag.Int("concurrency", 1, "calls in flight")
	duration := flag.Duration("duration", 5*time.Second, "how long to call")
	warmup := flag.Duration("warmup", time.Second, "calls before measuring")
	flag.Parse()
	conn, err := amqp.Dial(*url)
	if err != nil {
		log.Fatalf("dial: %v", err)
	}
	body := []byte(`{"data":null}`)
	var mu sync.Mutex
	var latencies []time.Duration
	var wg sync.WaitGroup
	start := time.Now()
	measureFrom, end := start.Add(*warmup), start.Add(*warmup+*duration)
	for w := range *concurrency {
		ch, err := conn.Channel()
		if err != nil {
			log.Fatal(err)
		}
		replies, err := ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
		if err != nil {
			log.Fatal(err)
		}
		wg.Go(func() {
			var mine []time.Duration
			for i := 0; ; i++ {
				t0 := time.Now()
				if t0.After(end) {
					break
				}
				id := strconv.Itoa(w) + "." + strconv.Itoa(i)
				if err := ch.PublishWithContext(context.Background(), "", *route, false, false, amqp.Publishing{
					ContentType: "application/json", ReplyTo: "amq.rabbitmq.reply-to", CorrelationId: id, Body: body,
				}); err != nil {
					log.Fatal(err)
				}
				for d := range replies {
					if d.CorrelationId == id {
						break
					}
				}
				if t0.After(measureFrom) {
					mine = append(mine, time.Since(t0))
				}
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	_ = conn.Close()
	slices.Sort(latencies)
	if len(latencies) == 0 {
		fmt.Fprintln(os.Stderr, "no call completed")
		os.Exit(1)
	}
	q := func(p float64) float64 { return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) }
	out, _ := json.Marshal(map[string]float64{
		"ops_per_s": float64(len(latencies)) / duration.Seconds(),
		"p50_us":    q(0.50),
		"p99_us":    q(0.99),
	})
	fmt.Println(string(out))
}
