// Command ctl starts and stops the three-node RabbitMQ cluster of
// test/cluster: `go tool task cluster:up` runs `ctl up`, `cluster:down`
// runs `ctl down`.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"example.com/service/test/cluster"
)

func main() {
	if len(os.Args) != 2 || (os.Args[1] != "up" && os.Args[1] != "down") {
		fmt.Fprintln(os.Stderr, "usage: ctl up|down")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "cluster:%s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func run(cmd string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if cmd == "down" {
		if err := cluster.Down(ctx); err != nil {
			return err
		}
		fmt.Println("cluster stopped, its data in", cluster.Dir(), "deleted")
		return nil
	}
	logf := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	nodes, err := cluster.Up(ctx, logf)
	if err != nil {
		return err
	}
	fmt.Printf("cluster of %d nodes running; point the service at it with\n  BROKER_HOSTS=%s BROKER_VHOST=/ BROKER_USER=guest BROKER_PASS=guest\n",
		len(nodes), cluster.Hosts(nodes))
	fmt.Println("stop it with: go tool task cluster:down")
	return nil
}
