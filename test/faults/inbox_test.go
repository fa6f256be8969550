//go:build faults

package faults

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"example.com/service/src/testenv"
	"example.com/service/test/stack"
)

// 1b. Test 1 on the idempotent route example-item.store-once: RabbitMQ
// restarts while 20,000 confirmed messages are being consumed; every one
// is stored, and none twice (the restart redelivers what was handled and
// not yet acked; the inbox acks those without storing them again). Test 1
// on the plain route shows the duplicates this removes. Part of
// `go tool task test:effects` (85 s here), not of the everyday suite.
func TestBrokerRestartIdempotentRoute(t *testing.T) {
	if os.Getenv(testenv.EffectsVar) != "1" {
		t.Skip("runs in go tool task test:effects (a broker restart under 20,000 messages on the idempotent route)")
	}
	requireTool(t, "rabbitmqctl")
	env := stack.NewEnv(t, bins)
	p := stack.Start(t, bins, env)
	client := env.Client(t)
	db := env.DB(t)
	tag := testenv.Name("broker-restart-once-")
	const route = "example-item.store-once"

	const n = 20000
	confirmed := stack.PublishTaggedTo(t, client, route, tag, n, 16, n/3, func() { restartBroker(t, 2*time.Second) })
	rows, distinct := stack.WaitStored(t, db, tag, confirmed, 60*time.Second)
	dead := stack.DeadLetters(t, env.Channel(t), route)
	lost := confirmed - distinct - len(dead)
	skipped := strings.Count(p.Logs(), "message handled before") // the inbox's debug line (the service runs in development mode)
	record(t, row{
		fault: "RabbitMQ restart while consuming, idempotent route", sent: confirmed, stored: distinct, lost: lost,
		duplicated: rows - distinct, deadLetter: len(dead), note: fmt.Sprintf("%d published, %d confirmed; %d redeliveries acked by the inbox without storing", n, confirmed, skipped),
	})
	if confirmed != n {
		t.Errorf("%d of %d publishes were not confirmed", n-confirmed, n)
	}
	if lost != 0 {
		t.Errorf("lost %d confirmed messages", lost)
	}
	if rows != distinct {
		t.Errorf("%d duplicate effects on the idempotent route", rows-distinct)
	}
}
