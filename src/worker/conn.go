package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ErrClosed is returned by operations on a [Conn], worker or [Client] that
// was closed.
var ErrClosed = errors.New("worker: connection closed")

// Conn is a process's connection to RabbitMQ, shared by its workers and
// clients. It is two AMQP connections, as RabbitMQ advises: the workers
// consume on one, and clients and the workers' dead-letter publisher publish
// on the other, so flow control on publishing never holds back the acks
// and replies of consumers, and a consumer waiting for memory (see
// [WithMaxInflightBytes]) never holds back the confirms or replies a
// handler waits for.
//
// When a connection drops, Conn reconnects it in the background (backoff
// from 100 ms up to 5 s, forever until Close) and every worker and client
// built on it opens new channels, redeclares its queues and resumes. A
// reconnect the broker refuses (credentials, vhost, permissions) is retried
// too, and logged at error level once a minute. It is safe for concurrent
// use.
type Conn struct {
	consume *link // workers' consumers (and their replies)
	publish *link // Client, dead-letter publisher

	budget  *budget // bytes held by unsettled deliveries on consume
	inflate *sem    // bytes of gzip bodies being inflated
	maxBody int64
}

// link is one AMQP connection that reconnects itself, to one of the
// cluster's nodes.
type link struct {
	nodes  []node
	cfg    amqp.Config
	logger *slog.Logger
	wrap   func(net.Conn) net.Conn // puts a guard on each socket
	next   int                     // the node the next dial tries; only the dialing goroutine uses it

	mu    sync.Mutex
	at    string           // address of the node connected to (or last tried)
	cur   *amqp.Connection // nil while reconnecting
	up    chan struct{}    // closed while cur != nil
	done  chan struct{}    // closed by Close
	close sync.Once
	wg    sync.WaitGroup

	reconnects atomic.Int64 // connections restored after a loss (health.go)
}

// node is one RabbitMQ node a link may connect to.
type node struct {
	uri  amqp.URI    // scheme amqp: amqp091-go sees plain AMQP over the guard
	tls  *tls.Config // TLS below the guard, nil without
	addr string      // host:port, for messages
}

// Dial connects to RabbitMQ. The first connection is retried with backoff
// until ctx ends; then Dial fails with one line naming the address, the user
// and the cause, e.g. "cannot reach RabbitMQ at 127.0.0.1:5672 as guest:
// connection refused". Refused credentials or vhost fail at once.
//
// With several nodes (Config.Hosts or Config.URLs) each of the two
// connections starts at a random node and, when it cannot connect or its
// connection is lost, tries the next one at once; only after a whole round
// of failures does it back off. Each connect is logged with the node's
// address.
//
// Options: [WithName], [WithLogger], [WithMaxBodySize] (no body larger is
// read off the wire), [WithMaxInflightBytes].
func Dial(ctx context.Context, cfg Config, opts ...ConnOption) (*Conn, error) {
	o := connOptions(opts)
	uris, err := cfg.nodes()
	if err != nil {
		return nil, err
	}
	nodes := make([]node, len(uris))
	for i, u := range uris {
		nodes[i] = node{tls: cfg.tlsConfig(u), addr: addr(u), uri: u}
		// TLS, when set, is done in dialOnce, below the guard.
		nodes[i].uri.Scheme = "amqp"
	}
	c := &Conn{budget: newBudget(o.maxInflight), inflate: newSem(o.maxInflate), maxBody: o.maxBody}
	newLink := func(role string, b *budget) *link {
		props := amqp.NewConnectionProperties()
		if o.name != "" {
			props.SetClientConnectionName(o.name + " (" + role + ")")
		}
		l := &link{
			nodes:  nodes,
			cfg:    amqp.Config{Properties: props, Heartbeat: 10 * time.Second},
			logger: o.logger.With("connection", role),
			wrap:   func(sock net.Conn) net.Conn { return newGuard(sock, o.maxBody, b) },
			next:   rand.IntN(len(nodes)),
			up:     make(chan struct{}),
			done:   make(chan struct{}),
		}
		l.at = nodes[l.next].addr
		return l
	}
	c.consume = newLink("consume", c.budget)
	c.publish = newLink("publish", nil)
	if err := c.consume.start(ctx); err != nil {
		return nil, err
	}
	if err := c.publish.start(ctx); err != nil {
		_ = c.consume.shut()
		return nil, err
	}
	return c, nil
}

// start makes the first connection and supervises it from then on.
func (c *link) start(ctx context.Context) error {
	conn, closed, err := c.connect(ctx, true)
	if err != nil {
		return err
	}
	c.logger.Info("connected to RabbitMQ", c.nodeAttrs(conn)...)
	c.setUp(conn)
	c.wg.Add(1)
	go c.supervise(conn, closed)
	return nil
}

// refusedLogEvery is how often a reconnect refused by the broker is logged
// at error level (the retries in between log at debug level).
const refusedLogEvery = time.Minute

// handshakeTimeout bounds one connection attempt: TCP connect, TLS and AMQP
// handshake. (A listener that accepts and never answers would otherwise
// hold the attempt forever: heartbeats start only after the handshake.)
const handshakeTimeout = 30 * time.Second

// connect dials until it succeeds, ctx ends, Close is called or (when
// permanentFails) the broker refuses the credentials. It returns the
// connection with its close notifications already registered, so a close
// right after the handshake is never missed.
func (c *link) connect(ctx context.Context, permanentFails bool) (*amqp.Connection, chan *amqp.Error, error) {
	backoff := 100 * time.Millisecond
	var last error
	var loud time.Time // when a refused login was last logged at error level
	for tried := 1; ; tried++ {
		n := c.nodes[c.next]
		c.mu.Lock()
		c.at = n.addr
		c.mu.Unlock()
		conn, closed, err := c.dialOnce(ctx, n)
		if err == nil {
			return conn, closed, nil
		}
		last = err
		c.next = (c.next + 1) % len(c.nodes)
		if permanentFails && refused(err) {
			return nil, nil, fmt.Errorf("RabbitMQ at %s refused user %q on vhost %q: %w; check BROKER_USER, BROKER_PASS and BROKER_VHOST",
				n.addr, n.uri.Username, n.uri.Vhost, err)
		}
		wait := backoff
		if tried%len(c.nodes) != 0 {
			wait = 0 // another node to try in this round
		}
		switch {
		case ctx.Err() != nil:
		case refused(err) && (loud.IsZero() || time.Since(loud) >= refusedLogEvery):
			// Retrying may help (the login can be fixed while we wait), but
			// an operator must hear of it.
			loud = time.Now()
			c.logger.Error("RabbitMQ refuses the login; retrying (check the user, password, vhost and permissions)",
				"addr", n.addr, "user", n.uri.Username, "vhost", n.uri.Vhost, "err", err)
		default:
			c.logger.Debug("cannot reach RabbitMQ, retrying", "addr", n.addr, "user", n.uri.Username, "err", cause(err), "in", wait)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, nil, &dialError{addr: c.addrs(), user: n.uri.Username, err: last}
		case <-c.done:
			return nil, nil, ErrClosed
		}
		if wait > 0 {
			backoff = min(backoff*2, 5*time.Second)
		}
	}
}

// addrs lists the nodes' addresses, for messages.
func (c *link) addrs() string {
	as := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		as[i] = n.addr
	}
	return strings.Join(as, ", ")
}

// where is the address of the node the link is on (or trying), for
// messages.
func (c *link) where() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.at
}

// nodeAttrs are the log attributes that say which node conn is on.
func (c *link) nodeAttrs(conn *amqp.Connection) []any {
	attrs := []any{"addr", c.where()}
	if name, ok := conn.Properties["cluster_name"].(string); ok && len(c.nodes) > 1 {
		attrs = append(attrs, "cluster", name)
	}
	return attrs
}

// dialOnce makes one attempt, bounded by ctx and by handshakeTimeout: the
// socket gets a deadline for the handshake (amqp091-go clears it once the
// connection is open) and is closed when ctx ends during the handshake.
func (c *link) dialOnce(ctx context.Context, n node) (*amqp.Connection, chan *amqp.Error, error) {
	var sock net.Conn
	var deadline time.Time
	stop := func() bool { return true }
	cfg := c.cfg
	cfg.Dial = func(network, addr string) (net.Conn, error) {
		deadline = time.Now().Add(handshakeTimeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		dctx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		var d net.Dialer
		conn, err := d.DialContext(dctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := conn.SetDeadline(deadline); err != nil {
			_ = conn.Close()
			return nil, err
		}
		sock = conn
		stop = context.AfterFunc(ctx, func() { _ = conn.Close() })
		if n.tls != nil {
			tc := tls.Client(conn, n.tls)
			if err := tc.HandshakeContext(dctx); err != nil {
				return nil, fmt.Errorf("TLS handshake: %w", err)
			}
			conn = tc
		}
		return c.wrap(conn), nil
	}
	conn, err := amqp.DialConfig(n.uri.String(), cfg)
	if !stop() && err == nil {
		// ctx ended as the handshake completed and the socket was closed.
		err = ctx.Err()
	}
	if err != nil {
		if sock != nil {
			_ = sock.Close() // amqp091-go leaves it open on some failures
			if !refused(err) {
				he := &handshakeError{err: err, ctx: ctx.Err(), timedOut: !time.Now().Before(deadline)}
				if d, ok := ctx.Deadline(); ok && he.timedOut && he.ctx == nil && !d.After(deadline) {
					he.ctx = context.DeadlineExceeded // ctx's timer has not fired yet
				}
				err = he
			}
		}
		return nil, nil, err
	}
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	if h := testHookConnected.Load(); h != nil {
		(*h)(sock)
	}
	return conn, closed, nil
}

// testHookConnected, when set, runs after each successful handshake.
var testHookConnected atomic.Pointer[func(net.Conn)]

// handshakeError is a failure after the TCP connection was made.
type handshakeError struct {
	err      error
	ctx      error // why ctx ended during the handshake, if it did
	timedOut bool  // the handshake deadline passed
}

func (e *handshakeError) Error() string {
	why := cause(e.err)
	if e.timedOut || e.ctx != nil || errors.Is(e.err, os.ErrDeadlineExceeded) {
		why = "timed out"
	}
	return "connected, but no AMQP handshake (" + why + "); is it a RabbitMQ port?"
}

func (e *handshakeError) Unwrap() []error {
	if e.ctx != nil {
		return []error{e.err, e.ctx}
	}
	return []error{e.err}
}

// dialError is the one-line failure of Dial: address, user and root cause,
// never the password. It unwraps to the underlying error.
type dialError struct {
	addr, user string
	err        error
}

func (e *dialError) Error() string {
	return fmt.Sprintf("cannot reach RabbitMQ at %s as %s: %s", e.addr, e.user, cause(e.err))
}

func (e *dialError) Unwrap() error { return e.err }

// cause returns the short text of a network error ("connection refused").
func cause(err error) string {
	var he *handshakeError
	if errors.As(err, &he) {
		return he.Error()
	}
	var sys *os.SyscallError
	if errors.As(err, &sys) {
		var errno syscall.Errno
		if errors.As(sys.Err, &errno) {
			return errno.Error()
		}
		return sys.Err.Error()
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return "host " + dns.Name + " not found"
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return "timed out"
	}
	return err.Error()
}

func (c *link) setUp(conn *amqp.Connection) {
	c.mu.Lock()
	c.cur = conn
	close(c.up)
	c.mu.Unlock()
}

// supervise replaces the connection whenever it closes, until Close.
func (c *link) supervise(conn *amqp.Connection, closed chan *amqp.Error) {
	defer c.wg.Done()
	for {
		select {
		case err := <-closed:
			c.mu.Lock()
			c.cur = nil
			c.up = make(chan struct{})
			c.mu.Unlock()
			select {
			case <-c.done: // closed by us
				return
			default:
			}
			if err == nil {
				c.logger.Warn("RabbitMQ connection closed, reconnecting", "addr", c.where())
			} else {
				c.logger.Warn("RabbitMQ connection lost, reconnecting", "addr", c.where(), "err", err)
			}
			// The node may be gone: try the next one first.
			c.next = (c.next + 1) % len(c.nodes)
		case <-c.done:
			_ = conn.CloseDeadline(time.Now().Add(closeTimeout))
			return
		}
		ctx, cancel := untilClosed(c.done)
		next, nextClosed, err := c.connect(ctx, false)
		cancel()
		if err != nil { // closed
			return
		}
		c.logger.Info("RabbitMQ connection restored", c.nodeAttrs(next)...)
		c.reconnects.Add(1)
		c.setUp(next)
		conn, closed = next, nextClosed
	}
}

// channel opens a channel on the current connection, waiting for a
// reconnect when the connection is down, until ctx ends or Close.
func (c *link) channel(ctx context.Context) (*amqp.Channel, error) {
	for {
		c.mu.Lock()
		conn, up := c.cur, c.up
		c.mu.Unlock()
		if conn == nil {
			select {
			case <-up:
				continue
			case <-c.done:
				return nil, ErrClosed
			case <-ctx.Done():
				return nil, fmt.Errorf("RabbitMQ at %s is unreachable: %w", c.where(), ctx.Err())
			}
		}
		select {
		case <-c.done:
			return nil, ErrClosed
		default:
		}
		ch, err := conn.Channel()
		if err == nil {
			return ch, nil
		}
		// The connection may be dying without the library having marked it
		// closed yet: give it a moment before taking the error as final.
		if !conn.IsClosed() {
			select {
			case <-time.After(50 * time.Millisecond):
			case <-c.done:
				return nil, ErrClosed
			case <-ctx.Done():
				return nil, fmt.Errorf("open channel on RabbitMQ at %s: %w", c.where(), err)
			}
		}
		if conn.IsClosed() {
			// The supervisor will notice and reconnect; wait for it.
			select {
			case <-time.After(50 * time.Millisecond):
				continue
			case <-c.done:
				return nil, ErrClosed
			case <-ctx.Done():
				return nil, fmt.Errorf("open channel on RabbitMQ at %s: %w", c.where(), ctx.Err())
			}
		}
		return nil, fmt.Errorf("open channel on RabbitMQ at %s: %w", c.where(), err)
	}
}

// closeTimeout bounds the close handshake of Close.
const closeTimeout = 5 * time.Second

// Close closes both connections (waiting at most 5 s for the broker to
// confirm each). Workers and clients built on it stop; close them first
// (Shutdown, Client.Close) so their in-flight work completes.
func (c *Conn) Close() error {
	return errors.Join(c.consume.shut(), c.publish.shut())
}

func (c *link) shut() error {
	c.close.Do(func() { close(c.done) })
	c.wg.Wait()
	c.mu.Lock()
	conn := c.cur
	c.cur = nil
	c.mu.Unlock()
	if conn != nil && !conn.IsClosed() {
		return conn.CloseDeadline(time.Now().Add(closeTimeout))
	}
	return nil
}

// isClosed reports whether Close was called.
func (c *Conn) isClosed() bool {
	select {
	case <-c.publish.done:
		return true
	default:
		return false
	}
}

// channel opens a channel on the consuming connection; see link.channel.
func (c *Conn) channel(ctx context.Context) (*amqp.Channel, error) { return c.consume.channel(ctx) }

// release gives back the memory a delivery held once it is settled.
func (c *Conn) release(consumerTag string, deliveryTag uint64) {
	c.budget.release(consumerTag, deliveryTag)
}

// refused reports whether the broker turned the login down (credentials,
// vhost, permissions): retrying will not help.
func refused(err error) bool {
	if errors.Is(err, amqp.ErrCredentials) || errors.Is(err, amqp.ErrVhost) || errors.Is(err, amqp.ErrSASL) {
		return true
	}
	var ae *amqp.Error
	return errors.As(err, &ae) && (ae.Code == amqp.AccessRefused || ae.Code == amqp.NotAllowed)
}

// untilClosed returns a context that ends when done is closed, or when
// cancel is called.
func untilClosed(done <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
