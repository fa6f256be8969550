package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ErrClosed is returned by operations on a [Conn], worker or [Client] that
// was closed.
var ErrClosed = errors.New("worker: connection closed")

// Conn is one connection to RabbitMQ shared by workers and clients. When the
// connection drops, Conn reconnects in the background (backoff from 100 ms
// up to 5 s, forever until Close) and every worker and client built on it
// opens new channels, redeclares its queues and resumes. It is safe for
// concurrent use.
type Conn struct {
	uri    amqp.URI
	cfg    amqp.Config
	addr   string
	logger *slog.Logger

	mu    sync.Mutex
	cur   *amqp.Connection // nil while reconnecting
	up    chan struct{}    // closed while cur != nil
	done  chan struct{}    // closed by Close
	close sync.Once
	wg    sync.WaitGroup
}

// Dial connects to RabbitMQ. The first connection is retried with backoff
// until ctx ends; then Dial fails with one line naming the address, the user
// and the cause, e.g. "cannot reach RabbitMQ at 127.0.0.1:5672 as guest:
// connection refused". Refused credentials or vhost fail at once.
// Options: [WithName], [WithLogger].
func Dial(ctx context.Context, cfg Config, opts ...Option) (*Conn, error) {
	o := newOptions(opts)
	uri, err := cfg.uri()
	if err != nil {
		return nil, err
	}
	props := amqp.NewConnectionProperties()
	if o.name != "" {
		props.SetClientConnectionName(o.name)
	}
	c := &Conn{
		uri:    uri,
		cfg:    amqp.Config{Properties: props, TLSClientConfig: cfg.TLS, Heartbeat: 10 * time.Second},
		addr:   cfg.addr(),
		logger: o.logger,
		up:     make(chan struct{}),
		done:   make(chan struct{}),
	}
	conn, err := c.connect(ctx, true)
	if err != nil {
		return nil, err
	}
	c.setUp(conn)
	c.wg.Add(1)
	go c.supervise(conn)
	return c, nil
}

// connect dials until it succeeds, ctx ends, Close is called or (when
// permanentFails) the broker refuses the credentials.
func (c *Conn) connect(ctx context.Context, permanentFails bool) (*amqp.Connection, error) {
	backoff := 100 * time.Millisecond
	var last error
	for {
		cfg := c.cfg
		cfg.Dial = dialer(ctx)
		conn, err := amqp.DialConfig(c.uri.String(), cfg)
		if err == nil {
			return conn, nil
		}
		last = err
		if permanentFails && refused(err) {
			return nil, fmt.Errorf("RabbitMQ at %s refused user %q on vhost %q: %w; check BROKER_USER, BROKER_PASS and BROKER_VHOST",
				c.addr, c.uri.Username, c.uri.Vhost, err)
		}
		if ctx.Err() == nil {
			c.logger.Debug("cannot reach RabbitMQ, retrying", "addr", c.addr, "user", c.uri.Username, "err", cause(err), "in", backoff)
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, &dialError{addr: c.addr, user: c.uri.Username, err: last}
		case <-c.done:
			return nil, ErrClosed
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// dialer connects with the context's deadline (capped at 10 s per try).
func dialer(ctx context.Context) func(network, addr string) (net.Conn, error) {
	return func(network, addr string) (net.Conn, error) {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var d net.Dialer
		conn, err := d.DialContext(dctx, network, addr)
		if err != nil {
			return nil, err
		}
		// amqp091-go sets its own deadline for the handshake.
		return conn, nil
	}
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

func (c *Conn) setUp(conn *amqp.Connection) {
	c.mu.Lock()
	c.cur = conn
	close(c.up)
	c.mu.Unlock()
}

// supervise replaces the connection whenever it closes, until Close.
func (c *Conn) supervise(conn *amqp.Connection) {
	defer c.wg.Done()
	for {
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		select {
		case err := <-closed:
			c.mu.Lock()
			c.cur = nil
			c.up = make(chan struct{})
			c.mu.Unlock()
			if err == nil { // closed by us
				return
			}
			c.logger.Warn("RabbitMQ connection lost, reconnecting", "addr", c.addr, "err", err)
		case <-c.done:
			_ = conn.Close()
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-c.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		next, err := c.connect(ctx, false)
		cancel()
		if err != nil { // closed
			return
		}
		c.logger.Info("RabbitMQ connection restored", "addr", c.addr)
		c.setUp(next)
		conn = next
	}
}

// channel opens a channel on the current connection, waiting for a
// reconnect when the connection is down, until ctx ends or Close.
func (c *Conn) channel(ctx context.Context) (*amqp.Channel, error) {
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
				return nil, fmt.Errorf("RabbitMQ at %s is unreachable: %w", c.addr, ctx.Err())
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
		if conn.IsClosed() {
			// The supervisor will notice and reconnect; wait for it.
			select {
			case <-time.After(50 * time.Millisecond):
				continue
			case <-c.done:
				return nil, ErrClosed
			case <-ctx.Done():
				return nil, fmt.Errorf("open channel on RabbitMQ at %s: %w", c.addr, ctx.Err())
			}
		}
		return nil, fmt.Errorf("open channel on RabbitMQ at %s: %w", c.addr, err)
	}
}

// Close closes the connection. Workers and clients built on it stop; close
// them first (Shutdown, Client.Close) so their in-flight work completes.
func (c *Conn) Close() error {
	c.close.Do(func() { close(c.done) })
	c.wg.Wait()
	c.mu.Lock()
	conn := c.cur
	c.cur = nil
	c.mu.Unlock()
	if conn != nil && !conn.IsClosed() {
		return conn.Close()
	}
	return nil
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
