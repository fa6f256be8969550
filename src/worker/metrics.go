package worker

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Metrics are the Prometheus metrics of workers, clients and connections.
// Every label set is bounded: kind (rpc or queue), route (a registered
// route or a name a Client sends to), outcome (one of the Outcome values,
// or for a Client ok, a remote error type's class, no_route, timeout,
// error) and connection (consume or publish); never a message id.
//
//	worker_requests_total{kind,route,outcome}          deliveries handled, by outcome
//	worker_request_duration_seconds{kind,route}        handling time (histogram), retries included
//	worker_requests_in_flight{kind,route}              deliveries being handled now
//	worker_redeliveries_total{kind,route}              deliveries the broker had delivered before
//	worker_dead_letters_total{route}                   queue messages dead-lettered after failing
//	worker_client_call_duration_seconds{route,outcome} Client.Call round trips (histogram)
//	worker_publish_confirm_seconds{route}              Client.Publish until the broker's confirm (histogram)
//	worker_publish_nacks_total{route}                  publishes the broker refused (nack)
//	worker_connection_up{connection}                   1 while connected, 0 while reconnecting
//	worker_reconnects_total{connection}                connections restored after a loss
//
// A delivery the worker refuses before its pipeline runs (a body that does
// not decode, a reply sent as a request) is logged but not counted here.
type Metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	inFlight    *prometheus.GaugeVec
	redelivered *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	calls       *prometheus.HistogramVec
	confirms    *prometheus.HistogramVec
	nacks       *prometheus.CounterVec
	reg         prometheus.Registerer
}

// NewMetrics makes the metrics and registers them with reg; it fails when
// reg has metrics of the same names.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	buckets := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "worker_requests_total", Help: "Deliveries handled by the worker's routes, by outcome.",
		}, []string{"kind", "route", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "worker_request_duration_seconds", Help: "Time from a delivery entering the route's pipeline to its result (retries included).", Buckets: buckets,
		}, []string{"kind", "route"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "worker_requests_in_flight", Help: "Deliveries being handled now.",
		}, []string{"kind", "route"}),
		redelivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "worker_redeliveries_total", Help: "Deliveries the broker had delivered before (redelivered flag).",
		}, []string{"kind", "route"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "worker_dead_letters_total", Help: "Queue messages dead-lettered to ROUTE.dlq after failing.",
		}, []string{"route"}),
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "worker_client_call_duration_seconds", Help: "Client.Call round trips, by outcome.", Buckets: buckets,
		}, []string{"route", "outcome"}),
		confirms: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "worker_publish_confirm_seconds", Help: "Client.Publish from send to the broker's confirm.", Buckets: buckets,
		}, []string{"route"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "worker_publish_nacks_total", Help: "Client publishes the broker refused (nack).",
		}, []string{"route"}),
		reg: reg,
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.inFlight, m.redelivered, m.deadLetters, m.calls, m.confirms, m.nacks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Middleware counts each delivery of a worker's routes; add it with Use.
func (m *Metrics) Middleware() Middleware {
	return func(next Handler) Handler {
		var last atomic.Pointer[routeMetrics]
		return HandlerFunc(func(ctx context.Context, req *Request) ([]byte, error) {
			rm := m.forRoute(&last, kindOf(ctx), req.Route)
			if req.Redelivered {
				m.redelivered.WithLabelValues(rm.kind, req.Route).Inc()
			}
			rm.inFlight.Inc()
			began := time.Now()
			out, err := next.Serve(ctx, req)
			rm.duration.Observe(time.Since(began).Seconds())
			rm.inFlight.Dec()
			switch outcome, _, _ := classify(ctx, req, err); outcome {
			case OutcomeReplied, OutcomeAcked:
				rm.handled.Inc()
			default:
				m.requests.WithLabelValues(rm.kind, req.Route, outcome).Inc()
				if outcome == OutcomeDeadLettered {
					m.deadLetters.WithLabelValues(req.Route).Inc()
				}
			}
			return out, err
		})
	}
}

// routeMetrics are the series every delivery of one route touches, looked
// up once: a pipeline serves one route (or the few events of a
// subscription), and a lookup hashes its labels each time.
type routeMetrics struct {
	kind, route string
	inFlight    prometheus.Gauge
	duration    prometheus.Observer
	handled     prometheus.Counter // requests with outcome replied (RPC) or acked (queue)
}

// forRoute returns the series of route, from last when it holds them.
func (m *Metrics) forRoute(last *atomic.Pointer[routeMetrics], k kind, route string) *routeMetrics {
	name := "rpc"
	ok := OutcomeReplied
	if k == kindQueue {
		name, ok = "queue", OutcomeAcked
	}
	if rm := last.Load(); rm != nil && rm.kind == name && rm.route == route {
		return rm
	}
	rm := &routeMetrics{
		kind: name, route: route,
		inFlight: m.inFlight.WithLabelValues(name, route),
		duration: m.duration.WithLabelValues(name, route),
		handled:  m.requests.WithLabelValues(name, route, ok),
	}
	last.Store(rm)
	return rm
}

// Client returns the option that makes a Client report its Calls and
// Publishes to m.
func (m *Metrics) Client() ClientOption {
	return clientOption(func(o *options) {
		o.sends = append(slices.Clone(o.sends), func(ctx context.Context, op, route string, _ *amqp.Publishing) (context.Context, func(error)) {
			began := time.Now()
			return ctx, func(err error) {
				took := time.Since(began).Seconds()
				if op == "publish" {
					if errors.Is(err, ErrNacked) {
						m.nacks.WithLabelValues(route).Inc()
					}
					if err == nil {
						m.confirms.WithLabelValues(route).Observe(took)
					}
					return
				}
				m.calls.WithLabelValues(route, callOutcome(err)).Observe(took)
			}
		})
	})
}

// callOutcome is a bounded label for a Call's result.
func callOutcome(err error) string {
	var remote *RemoteError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &remote):
		return "error_reply"
	case errors.Is(err, ErrNoRoute):
		return "no_route"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "error"
}

// Watch reports conn's connection state and reconnects
// (worker_connection_up, worker_reconnects_total). Call it once per Conn.
func (m *Metrics) Watch(conn *Conn) error {
	for _, l := range []struct {
		name string
		link *link
	}{{"consume", conn.consume}, {"publish", conn.publish}} {
		labels := prometheus.Labels{"connection": l.name}
		up := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "worker_connection_up", Help: "1 while the RabbitMQ connection is up, 0 while reconnecting.", ConstLabels: labels,
		}, func() float64 {
			if l.link.isUp() {
				return 1
			}
			return 0
		})
		re := prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "worker_reconnects_total", Help: "RabbitMQ connections restored after a loss.", ConstLabels: labels,
		}, func() float64 { return float64(l.link.reconnects.Load()) })
		for _, c := range []prometheus.Collector{up, re} {
			if err := m.reg.Register(c); err != nil {
				return err
			}
		}
	}
	return nil
}
