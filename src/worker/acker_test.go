package worker

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/src/testenv"
)

// channelModel is a fake channel that settles deliveries as RabbitMQ does:
// an ack or nack must name an unsettled tag (RabbitMQ closes the channel
// with "unknown delivery tag" otherwise), and a multiple one settles every
// unsettled tag up to the one it names. It records what breaks the acker's
// contract instead of closing.
type channelModel struct {
	mu        sync.Mutex
	unsettled map[uint64]bool
	acked     map[uint64]bool
	nacked    map[uint64]bool
	replied   map[uint64]bool // tag -> its reply was published
	wantReply map[uint64]bool // tag -> acked only after a reply
	frames    int             // acks and nacks sent
	tells     map[uint64]int  // tag -> times the acker said it settled it
	problems  []string
}

func newChannelModel(n int) *channelModel {
	m := &channelModel{
		unsettled: map[uint64]bool{}, acked: map[uint64]bool{}, nacked: map[uint64]bool{},
		replied: map[uint64]bool{}, wantReply: map[uint64]bool{}, tells: map[uint64]int{},
	}
	for tag := uint64(1); tag <= uint64(n); tag++ {
		m.unsettled[tag] = true
	}
	return m
}

// A reply's correlation id is its request's tag; reply_to "fail" fails.
func (m *channelModel) PublishWithContext(_ context.Context, _, key string, _, _ bool, msg amqp.Publishing) error {
	if key == "fail" {
		return amqp.ErrClosed
	}
	tag, _ := strconv.ParseUint(msg.CorrelationId, 10, 64)
	m.mu.Lock()
	m.replied[tag] = true
	m.mu.Unlock()
	return nil
}

func (m *channelModel) Ack(tag uint64, multiple bool) error { return m.settle(tag, multiple, false) }

func (m *channelModel) Nack(tag uint64, multiple, requeue bool) error {
	if !requeue {
		m.mu.Lock()
		m.problems = append(m.problems, fmt.Sprintf("nack %d without requeue", tag))
		m.mu.Unlock()
	}
	return m.settle(tag, multiple, true)
}

func (m *channelModel) settle(tag uint64, multiple, nack bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.frames++
	if !m.unsettled[tag] {
		m.problems = append(m.problems, fmt.Sprintf("settle(%d, multiple=%v) names a settled or unknown tag: the channel would close", tag, multiple))
		return nil
	}
	settle := func(t uint64) {
		if m.wantReply[t] && !m.replied[t] {
			m.problems = append(m.problems, fmt.Sprintf("tag %d settled before its reply was published", t))
		}
		delete(m.unsettled, t)
		if nack {
			m.nacked[t] = true
		} else {
			m.acked[t] = true
		}
	}
	if !multiple {
		settle(tag)
		return nil
	}
	for t := range m.unsettled {
		if t <= tag {
			settle(t)
		}
	}
	return nil
}

// told is the acker's settled callback: it must come once per delivery,
// after the delivery was settled on the wire (it frees the delivery's
// memory budget).
func (m *channelModel) told(tag uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.unsettled[tag] {
		m.problems = append(m.problems, fmt.Sprintf("tag %d reported settled before it was", tag))
	}
	m.tells[tag]++
}

func (m *channelModel) settled(tag uint64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.unsettled[tag]
}

func (m *channelModel) check(t *testing.T) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.problems {
		t.Error(p)
	}
	for tag := range m.acked {
		if m.tells[tag] != 1 {
			t.Errorf("tag %d acked and reported settled %d times, want once", tag, m.tells[tag])
		}
	}
	for tag := range m.nacked {
		if m.tells[tag] != 1 {
			t.Errorf("tag %d nacked and reported settled %d times, want once", tag, m.tells[tag])
		}
	}
}

func reply(tag uint64, to string) (uint64, string, amqp.Publishing) {
	return tag, to, amqp.Publishing{CorrelationId: strconv.FormatUint(tag, 10)}
}

// Deliveries that finish in order are settled by one multiple ack.
func TestAckerCoalescesInOrder(t *testing.T) {
	m := newChannelModel(100)
	a := newAcker(m, slog.Default(), 1000, time.Hour, m.told)
	for tag := uint64(1); tag <= 100; tag++ {
		m.wantReply[tag] = true
		a.replyAndAck(reply(tag, "caller"))
	}
	a.drain()
	m.check(t)
	if len(m.unsettled) != 0 || len(m.acked) != 100 {
		t.Fatalf("%d acked, %d unsettled; want all 100 acked", len(m.acked), len(m.unsettled))
	}
	if m.frames != 1 {
		t.Fatalf("%d ack frames for 100 in-order deliveries, want 1", m.frames)
	}
}

// A slow handler holds back no one else's ack for long: the deliveries
// after it are acked within two ack periods, on their own, and its own
// is acked once it finishes.
func TestAckerSlowHandlerHoldsBackNoOne(t *testing.T) {
	const period = 10 * time.Millisecond
	m := newChannelModel(10)
	a := newAcker(m, slog.Default(), 200, period, m.told)
	for tag := uint64(2); tag <= 10; tag++ {
		a.ack(tag)
	}
	began := time.Now()
	testenv.Eventually(t, 5*time.Second, "deliveries 2-10 acked while 1 runs", func() bool {
		for tag := uint64(2); tag <= 10; tag++ {
			if !m.settled(tag) {
				return false
			}
		}
		return true
	})
	if took := time.Since(began); took > 50*period {
		t.Errorf("deliveries 2-10 acked after %v, want within about two periods of %v (bound: 50)", took, period)
	}
	if m.settled(1) {
		t.Fatal("delivery 1 was acked before its handler finished")
	}
	a.ack(1)
	testenv.Eventually(t, 5*time.Second, "delivery 1 acked once it finished", func() bool { return m.settled(1) })
	a.drain()
	m.check(t)
}

// Behind a handler that never finishes, the acker's state stays small:
// what it keeps grows with the deliveries in flight, not with the ones
// acked since.
func TestAckerStuckHandlerKeepsLittle(t *testing.T) {
	const n = 20_000
	m := newChannelModel(n)
	a := newAcker(m, slog.Default(), 200, 50*time.Microsecond, m.told)
	for tag := uint64(2); tag <= n; tag++ { // 1 never finishes
		a.ack(tag)
	}
	a.drain() // run has returned: its state can be read
	m.check(t)
	if len(m.unsettled) != 1 || !m.unsettled[1] {
		t.Fatalf("%d unsettled, want only delivery 1", len(m.unsettled))
	}
	if len(a.missing) != 1 || len(a.ready) != 0 {
		t.Fatalf("acker keeps %d missing and %d ready tags behind one stuck handler, want 1 and 0", len(a.missing), len(a.ready))
	}
}

// With a small prefetch every ack goes out at once: the broker would stop
// delivering until it came.
func TestAckerSmallPrefetchAcksAtOnce(t *testing.T) {
	m := newChannelModel(3)
	a := newAcker(m, slog.Default(), 4, time.Hour, m.told)
	defer a.drain()
	for tag := uint64(1); tag <= 3; tag++ {
		a.ack(tag)
		testenv.Eventually(t, 5*time.Second, fmt.Sprintf("delivery %d acked without waiting for a tick", tag), func() bool { return m.settled(tag) })
	}
	m.check(t)
}

// A delivery whose reply could not be published is never acked, not even
// by a multiple ack for the deliveries around it; a requeue goes out as a
// nack.
func TestAckerReplyFailureAndRequeue(t *testing.T) {
	m := newChannelModel(6)
	a := newAcker(m, slog.New(slog.DiscardHandler), 1000, time.Hour, m.told)
	for _, tag := range []uint64{1, 2, 4, 6} {
		m.wantReply[tag] = true
		a.replyAndAck(reply(tag, "caller"))
	}
	a.replyAndAck(reply(3, "fail"))
	a.requeue(5)
	a.drain()
	m.check(t)
	if !m.unsettled[3] || len(m.unsettled) != 1 {
		t.Fatalf("unsettled %v, want only 3 (its reply failed)", m.unsettled)
	}
	if !m.nacked[5] || m.acked[5] {
		t.Fatalf("delivery 5 acked %v nacked %v, want requeued", m.acked[5], m.nacked[5])
	}
}

// Whatever the order handlers finish in, the prefetch and the timing, the
// acker never names a settled tag, never acks before the reply, never acks
// a failed reply, and leaves nothing it was handed unsettled.
func TestAckerRandomOrders(t *testing.T) {
	for round := range 300 {
		rnd := rand.New(rand.NewPCG(uint64(round), 7))
		n := 1 + rnd.IntN(300)
		prefetch := []int{1, 2, 8, 50, 200, 1000}[rnd.IntN(6)]
		period := []time.Duration{50 * time.Microsecond, time.Millisecond, time.Hour}[rnd.IntN(3)]
		m := newChannelModel(n)
		a := newAcker(m, slog.New(slog.DiscardHandler), prefetch, period, m.told)
		tags := rnd.Perm(n)
		kinds := make([]int, n)
		for i := range kinds {
			kinds[i] = rnd.IntN(20) // 0: reply fails, 1: requeue, 2-9: plain ack, else reply
			if kinds[i] >= 10 {
				m.wantReply[uint64(i+1)] = true
			}
		}
		var wg sync.WaitGroup
		workers := 1 + rnd.IntN(8)
		for w := range workers {
			wg.Go(func() {
				rnd := rand.New(rand.NewPCG(uint64(round), uint64(w))) // one per goroutine
				for i := w; i < n; i += workers {
					tag := uint64(tags[i] + 1)
					switch k := kinds[tag-1]; {
					case k == 0:
						a.replyAndAck(reply(tag, "fail"))
					case k == 1:
						a.requeue(tag)
					case k < 10:
						a.ack(tag)
					default:
						a.replyAndAck(reply(tag, "caller"))
					}
					if rnd.IntN(50) == 0 {
						time.Sleep(time.Duration(rnd.IntN(300)) * time.Microsecond)
					}
				}
			})
		}
		wg.Wait()
		a.drain()
		m.check(t)
		for tag := uint64(1); tag <= uint64(n); tag++ {
			k := kinds[tag-1]
			switch {
			case k == 0 && !m.unsettled[tag]:
				t.Fatalf("round %d: delivery %d settled though its reply failed", round, tag)
			case k == 1 && !m.nacked[tag]:
				t.Fatalf("round %d: delivery %d not requeued", round, tag)
			case k > 1 && !m.acked[tag]:
				t.Fatalf("round %d: delivery %d not acked (prefetch %d, period %v)", round, tag, prefetch, period)
			}
		}
		if t.Failed() {
			t.Fatalf("round %d: n=%d prefetch=%d period=%v", round, n, prefetch, period)
		}
	}
}
