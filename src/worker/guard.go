package worker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Headers the guard sets on a delivery it could not hand on as it came.
const (
	// HeaderBodyRefused is set on a delivery whose body was over the size
	// limit and was never read into memory: the delivery arrives with an
	// empty body and this header saying how large the body was. A queue
	// worker rejects it, so the broker moves the whole message to the
	// route's dead-letter queue; an RPC worker answers BadRequest.
	HeaderBodyRefused = "x-body-refused"
	// HeaderHeadersRefused is set on a delivery whose headers table
	// amqp091-go could not read (nested deeper than 32 levels, more than
	// 8192 entries, an unknown field type): the table is replaced by this
	// one entry, saying why. The body is intact.
	HeaderHeadersRefused = "x-headers-refused"
)

// guard sits between amqp091-go and the socket of a connection, on the
// reading side, and hands on every frame the broker sends unchanged but for
// three cases, each of which would otherwise let one message stop a
// connection or exhaust the process:
//
//   - A content header whose headers table amqp091-go would refuse to parse
//     (the library then closes the connection, the broker redelivers the
//     message, and it closes it again, forever) gets a table of one entry,
//     [HeaderHeadersRefused].
//   - A body over maxBody is never buffered: the content header is rewritten
//     to an empty body with [HeaderBodyRefused], and the body frames are
//     read off the socket and dropped.
//   - A delivery to a consumer (basic.deliver) waits before its content
//     header is handed on until its body fits in the budget of bytes held
//     by deliveries not yet settled. Waiting here stops reading the socket,
//     which is the only way to make the broker hold back: RabbitMQ limits
//     unacked deliveries by count (prefetch), never by size, and amqp091-go
//     buffers every delivery it reads. The worker gives the bytes back with
//     budget.release when it settles the delivery; a channel or connection
//     that closes gives back all of its own.
//
// A connection whose reading may wait on the budget must carry nothing
// that needs a reply to free it: the worker keeps its publishers (confirms)
// and clients (replies) on a connection of their own.
type guard struct {
	net.Conn
	maxBody uint64
	budget  *budget // nil: no waiting

	in         []byte // bytes read from the socket; in[inR:] not yet handled
	inR        int
	out        []byte // handled bytes for the caller; out[outR:] not yet read
	outR       int
	raw        bool // pass everything through: not an AMQP frame stream
	started    bool
	pending    map[uint16]content // the method frame that announced a channel's next content
	skip       map[uint16]uint64  // body bytes still to drop, per channel
	deadlineMu sync.Mutex
	window     time.Duration // the last read deadline, as a duration from when it was set
	closeOnce  sync.Once
	closed     chan struct{}
}

// content is what a method frame says about the content that follows it.
type content struct {
	deliver     bool // basic.deliver: a consumer's delivery
	consumerTag string
	deliveryTag uint64
}

// maxGuardFrame bounds the frames the guard buffers. RabbitMQ's frame_max is
// 128 KiB by default and amqp091-go refuses frames over the negotiated size,
// so a larger frame only arrives from something that is not RabbitMQ: the
// guard then passes the rest of the stream through and lets amqp091-go fail.
const maxGuardFrame = 4 << 20

func newGuard(conn net.Conn, maxBody int64, b *budget) *guard {
	return &guard{
		Conn: conn, maxBody: uint64(max(maxBody, 0)), budget: b,
		in:      make([]byte, 0, 32<<10),
		pending: map[uint16]content{}, skip: map[uint16]uint64{},
		closed: make(chan struct{}),
	}
}

// Read hands the caller the handled stream.
func (g *guard) Read(p []byte) (int, error) {
	for g.outR == len(g.out) {
		g.out, g.outR = g.out[:0], 0
		if err := g.next(); err != nil {
			if g.budget != nil {
				g.budget.releaseGuard(g)
			}
			return 0, err
		}
	}
	n := copy(p, g.out[g.outR:])
	g.outR += n
	return n, nil
}

// Close closes the socket and ends any wait on the budget.
func (g *guard) Close() error {
	g.closeOnce.Do(func() { close(g.closed) })
	if g.budget != nil {
		g.budget.releaseGuard(g)
	}
	return g.Conn.Close()
}

// SetReadDeadline passes the deadline on, and remembers how far ahead it
// was, so that time spent waiting on the budget does not count against it
// (amqp091-go sets it to three heartbeats after each frame read).
func (g *guard) SetReadDeadline(t time.Time) error {
	g.deadlineMu.Lock()
	if t.IsZero() {
		g.window = 0
	} else {
		g.window = time.Until(t)
	}
	g.deadlineMu.Unlock()
	return g.Conn.SetReadDeadline(t)
}

// SetDeadline sets both deadlines, see SetReadDeadline.
func (g *guard) SetDeadline(t time.Time) error {
	if err := g.SetReadDeadline(t); err != nil {
		return err
	}
	return g.SetWriteDeadline(t)
}

// fill reads from the socket until at least n unhandled bytes are buffered.
func (g *guard) fill(n int) error {
	if g.inR == len(g.in) {
		g.in, g.inR = g.in[:0], 0
	}
	for len(g.in)-g.inR < n {
		if g.inR > 0 { // move the unhandled bytes to the front
			g.in = g.in[:copy(g.in, g.in[g.inR:])]
			g.inR = 0
		}
		if cap(g.in) < n {
			grown := make([]byte, len(g.in), max(2*cap(g.in), n))
			copy(grown, g.in)
			g.in = grown
		}
		m, err := g.Conn.Read(g.in[len(g.in):cap(g.in)])
		g.in = g.in[:len(g.in)+m]
		if err != nil && len(g.in) < n {
			if errors.Is(err, io.EOF) && len(g.in) > 0 {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// emit hands b on to the caller.
func (g *guard) emit(b []byte) { g.out = append(g.out, b...) }

// next handles one frame (or, in raw mode, whatever the socket has).
func (g *guard) next() error {
	if g.raw {
		if err := g.fill(1); err != nil {
			return err
		}
		g.emit(g.in[g.inR:])
		g.inR = len(g.in)
		return nil
	}
	if err := g.fill(frameHeaderLen); err != nil {
		return err
	}
	head := g.in[g.inR : g.inR+frameHeaderLen]
	if !g.started {
		g.started = true
		if head[0] == 'A' { // "AMQP": the broker refuses our protocol version
			g.raw = true
			return nil
		}
	}
	typ, channel, size := head[0], binary.BigEndian.Uint16(head[1:3]), binary.BigEndian.Uint32(head[3:7])
	if size > maxGuardFrame {
		g.raw = true
		return nil
	}
	total := frameHeaderLen + int(size) + 1
	if err := g.fill(total); err != nil {
		return err
	}
	frame := g.in[g.inR : g.inR+total]
	g.inR += total
	payload := frame[frameHeaderLen : total-1]
	switch typ {
	case frameTypeMethod:
		g.method(channel, payload)
	case frameTypeHeader:
		rewritten, err := g.header(channel, frame, payload)
		if err != nil {
			return err
		}
		g.emit(rewritten)
		return nil
	case frameTypeBody:
		if left, ok := g.skip[channel]; ok {
			if n := uint64(len(payload)); n < left {
				g.skip[channel] = left - n
			} else {
				delete(g.skip, channel)
			}
			return nil // dropped
		}
	}
	g.emit(frame)
	return nil
}

// Frame layout (AMQP 0-9-1, 2.3.5): type, channel, size, payload, frame-end.
const (
	frameHeaderLen  = 7
	frameTypeMethod = 1
	frameTypeHeader = 2
	frameTypeBody   = 3
)

// Class and method ids the guard looks at.
const (
	classConnection   = 10
	methodConnClose   = 50
	methodConnCloseOk = 51
	classChannel      = 20
	methodChanClose   = 40
	methodChanCloseOk = 41
	classBasic        = 60
	methodDeliver     = 60
	methodGetOk       = 71
	methodReturn      = 50
)

// method notes what a method frame announces: the content that follows a
// delivery, a return or a get-ok, and the end of a channel or connection.
func (g *guard) method(channel uint16, p []byte) {
	if len(p) < 4 {
		return
	}
	class, method := binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:])
	switch {
	case class == classBasic && method == methodDeliver:
		// consumer-tag shortstr, delivery-tag longlong, ...
		r := p[4:]
		if len(r) < 1 || len(r) < 1+int(r[0])+8 {
			return
		}
		tag := string(r[1 : 1+r[0]])
		g.pending[channel] = content{deliver: true, consumerTag: tag, deliveryTag: binary.BigEndian.Uint64(r[1+r[0]:])}
	case class == classBasic && (method == methodGetOk || method == methodReturn):
		g.pending[channel] = content{}
	case class == classChannel && (method == methodChanClose || method == methodChanCloseOk):
		delete(g.pending, channel)
		delete(g.skip, channel)
		if g.budget != nil {
			g.budget.releaseChannel(g, channel)
		}
	case class == classConnection && (method == methodConnClose || method == methodConnCloseOk):
		if g.budget != nil {
			g.budget.releaseGuard(g)
		}
	}
}

// Property flags of the basic class's content header, in wire order.
const (
	flagContentType     = 0x8000
	flagContentEncoding = 0x4000
	flagHeaders         = 0x2000
	flagDeliveryMode    = 0x1000
	flagPriority        = 0x0800
	flagCorrelationID   = 0x0400
	flagReplyTo         = 0x0200
	flagExpiration      = 0x0100
	flagMessageID       = 0x0080
	flagTimestamp       = 0x0040
	flagType            = 0x0020
	flagUserID          = 0x0010
	flagAppID           = 0x0008
	flagReserved        = 0x0004
)

// header checks a content header and returns the frame to hand on: the
// same, or rewritten with its headers replaced and, for a body over the
// limit, an empty body. A delivery waits here for its place in the budget.
func (g *guard) header(channel uint16, frame, p []byte) ([]byte, error) {
	c := g.pending[channel]
	delete(g.pending, channel)
	// class-id short, weight short, body-size longlong, property-flags short.
	if len(p) < 14 {
		return frame, nil // not a content header amqp091-go can read either; it reports it
	}
	bodySize := binary.BigEndian.Uint64(p[4:12])
	flags := binary.BigEndian.Uint16(p[12:14])
	var refusals [][2]string
	hStart, hEnd, ok := headersSpan(p, flags)
	switch {
	case !ok:
		// The properties do not fit the frame: keep none of them.
		refusals = append(refusals, [2]string{HeaderHeadersRefused, "message properties dropped: they do not fit their frame"})
		flags, hStart, hEnd, p = 0, -1, -1, p[:14]
	case hStart >= 0:
		if err := checkTable(p[hStart+4:hEnd], 0); err != nil {
			refusals = append(refusals, [2]string{HeaderHeadersRefused, "headers table dropped: " + err.Error()})
		}
	}
	oversize := g.maxBody > 0 && bodySize > g.maxBody
	if oversize && c.deliver && g.budget != nil && g.budget.readsWhole(c.consumerTag) {
		// Its queue has no dead-letter exchange: the worker must have the
		// body to dead-letter it. It is read (alone, if the budget is
		// smaller) and refused by the worker.
		oversize = false
	}
	if oversize {
		refusals = append(refusals, [2]string{
			HeaderBodyRefused,
			fmt.Sprintf("body of %d bytes is over the limit of %d bytes; it was not read", bodySize, g.maxBody),
		})
		if bodySize > 0 {
			g.skip[channel] = bodySize
		}
		bodySize = 0
	}
	if len(refusals) > 0 {
		frame = rewriteHeader(frame[:frameHeaderLen], p, flags, hStart, hEnd, refusals, bodySize)
	}
	if c.deliver && g.budget != nil && bodySize > 0 {
		if err := g.wait(c, channel, int64(bodySize)); err != nil {
			return nil, err
		}
	}
	return frame, nil
}

// wait reserves n bytes of the budget for delivery c, waiting for other
// deliveries to be settled when they are not free.
func (g *guard) wait(c content, channel uint16, n int64) error {
	waited, err := g.budget.acquire(holdKey{c.consumerTag, c.deliveryTag}, n, g, channel, g.closed)
	if err != nil {
		return err
	}
	if waited > 0 {
		// The socket's read deadline kept running while we waited.
		g.deadlineMu.Lock()
		window := g.window
		g.deadlineMu.Unlock()
		if window > 0 {
			_ = g.Conn.SetReadDeadline(time.Now().Add(window))
		}
	}
	return nil
}

// afterEncoding returns the offset in a basic content header payload p just
// past its content-type and content-encoding properties, where headers
// start; ok is false when they do not fit in p.
func afterEncoding(p []byte, flags uint16) (i int, ok bool) {
	i = 14
	for _, f := range []uint16{flagContentType, flagContentEncoding} {
		if flags&f == 0 {
			continue
		}
		if i >= len(p) || i+1+int(p[i]) > len(p) {
			return 0, false
		}
		i += 1 + int(p[i])
	}
	return i, true
}

// headersSpan finds the headers property of a basic content header payload
// p: the offset of its 4-byte length and of its end, or -1, -1 when there
// is none. ok is false when the properties up to its end do not fit in p.
func headersSpan(p []byte, flags uint16) (start, end int, ok bool) {
	i, ok := afterEncoding(p, flags)
	if !ok {
		return 0, 0, false
	}
	if flags&flagHeaders == 0 {
		return -1, -1, true
	}
	if i+4 > len(p) {
		return 0, 0, false
	}
	n := binary.BigEndian.Uint32(p[i:])
	if uint64(i)+4+uint64(n) > uint64(len(p)) {
		return 0, 0, false
	}
	return i, i + 4 + int(n), true
}

// rewriteHeader builds a content header frame from the frame header head
// and payload p: body size bodySize, and a headers table of refusals, after
// the original entries when the table itself was valid (only the body is
// refused).
func rewriteHeader(head, p []byte, flags uint16, hStart, hEnd int, refusals [][2]string, bodySize uint64) []byte {
	var table []byte
	if hStart >= 0 && len(refusals) == 1 && refusals[0][0] == HeaderBodyRefused {
		table = append(table, p[hStart+4:hEnd]...)
	}
	for _, r := range refusals {
		table = appendShortstr(table, r[0])
		table = append(table, 'S')
		table = binary.BigEndian.AppendUint32(table, uint32(len(r[1])))
		table = append(table, r[1]...)
	}
	at, rest := hStart, hEnd // where the table goes, and what follows it
	if hStart < 0 {
		at, _ = afterEncoding(p, flags)
		rest = at
	}
	out := make([]byte, 0, len(head)+len(p)+len(table)+16)
	out = append(out, head...)
	out = append(out, p[:4]...) // class-id, weight
	out = binary.BigEndian.AppendUint64(out, bodySize)
	out = binary.BigEndian.AppendUint16(out, flags|flagHeaders)
	out = append(out, p[14:at]...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(table)))
	out = append(out, table...)
	out = append(out, p[rest:]...)
	out = append(out, frameEnd)
	binary.BigEndian.PutUint32(out[3:7], uint32(len(out)-frameHeaderLen-1))
	return out
}

const frameEnd = 0xCE

func appendShortstr(b []byte, s string) []byte {
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// Limits amqp091-go applies when it reads a field table (read.go): the
// guard refuses exactly what it would.
const (
	maxFieldDepth        = 32
	maxContainerElements = 8192
)

var errTableSyntax = errors.New("malformed field table")

// fixedFieldLen is the length of each fixed-size field value after its type
// octet, -1 for types of variable length, -2 for unknown types.
var fixedFieldLen = func() (t [256]int8) {
	for i := range t {
		t[i] = -2
	}
	for typ, n := range map[byte]int8{'t': 1, 'B': 1, 'b': 1, 's': 2, 'u': 2, 'I': 4, 'i': 4, 'f': 4, 'l': 8, 'd': 8, 'T': 8, 'D': 5, 'V': 0, 'S': -1, 'x': -1, 'A': -1, 'F': -1} {
		t[typ] = n
	}
	return t
}()

// checkTable validates the entries of a field table as amqp091-go reads
// them: known field types, lengths within the table, nesting and entry
// counts within amqp091-go's limits.
func checkTable(b []byte, depth int) error {
	if depth > maxFieldDepth {
		return fmt.Errorf("nested more than %d levels deep", maxFieldDepth)
	}
	entries := 0
	for i := 0; i < len(b); entries++ {
		if i+1+int(b[i]) > len(b) {
			return errTableSyntax
		}
		i += 1 + int(b[i])
		n, err := fieldLen(b[i:], depth)
		if err != nil {
			return err
		}
		i += n
	}
	if entries > maxContainerElements && uniqueKeysOverflow(b) {
		return fmt.Errorf("more than %d entries in one table", maxContainerElements)
	}
	return nil
}

// uniqueKeysOverflow reports whether amqp091-go refuses the (valid) table b
// for its size: it does once an entry follows maxContainerElements distinct
// keys.
func uniqueKeysOverflow(b []byte) bool {
	keys := map[string]struct{}{}
	for i := 0; i < len(b); {
		if len(keys) >= maxContainerElements {
			return true
		}
		keys[string(b[i+1:i+1+int(b[i])])] = struct{}{}
		i += 1 + int(b[i])
		n, _ := fieldLen(b[i:], 0)
		i += n
	}
	return false
}

// fieldLen returns the encoded length of the field value at the start of b
// (type octet included), validating nested tables and arrays.
func fieldLen(b []byte, depth int) (int, error) {
	if len(b) < 1 {
		return 0, errTableSyntax
	}
	switch n := fixedFieldLen[b[0]]; {
	case n == -2:
		return 0, fmt.Errorf("unknown field type %q", b[0])
	case n >= 0:
		if len(b) < 1+int(n) {
			return 0, errTableSyntax
		}
		return 1 + int(n), nil
	}
	if len(b) < 5 {
		return 0, errTableSyntax
	}
	n := binary.BigEndian.Uint32(b[1:5])
	if n > 1<<31-1 || uint64(n) > uint64(len(b)-5) {
		return 0, errTableSyntax
	}
	inner := b[5 : 5+n]
	switch b[0] {
	case 'F':
		if err := checkTable(inner, depth+1); err != nil {
			return 0, err
		}
	case 'A':
		if depth+1 > maxFieldDepth {
			return 0, fmt.Errorf("nested more than %d levels deep", maxFieldDepth)
		}
		for j, count := 0, 0; j < len(inner); count++ {
			if count >= maxContainerElements {
				return 0, fmt.Errorf("more than %d elements in one array", maxContainerElements)
			}
			m, err := fieldLen(inner[j:], depth+1)
			if err != nil {
				return 0, err
			}
			j += m
		}
	}
	return 5 + int(n), nil
}

// sem is a semaphore of bytes.
type sem struct {
	limit int64

	mu    sync.Mutex
	used  int64
	freed chan struct{} // closed and replaced when used drops
}

func newSem(limit int64) *sem { return &sem{limit: limit, freed: make(chan struct{})} }

// acquire takes n, waiting while it does not fit (n larger than the whole
// limit is let through alone), until stop is closed. It returns how long
// it waited.
func (s *sem) acquire(n int64, stop <-chan struct{}) (time.Duration, error) {
	var start time.Time
	for {
		s.mu.Lock()
		if s.used == 0 || s.used+n <= s.limit {
			s.used += n
			s.mu.Unlock()
			if start.IsZero() {
				return 0, nil
			}
			return time.Since(start), nil
		}
		freed := s.freed
		s.mu.Unlock()
		if start.IsZero() {
			start = time.Now()
		}
		select {
		case <-freed:
		case <-stop:
			return 0, net.ErrClosed
		}
	}
}

// release gives back n.
func (s *sem) release(n int64) {
	if n == 0 {
		return
	}
	s.mu.Lock()
	s.used -= n
	close(s.freed)
	s.freed = make(chan struct{})
	s.mu.Unlock()
}

// held returns what is taken now.
func (s *sem) held() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}

// budget bounds the bytes held by the deliveries of one connection that are
// not settled yet (across its reconnects). A delivery of a body of n bytes
// acquires n before it reaches its consumer; it is released when the
// worker settles the delivery, or when its channel or connection goes away.
type budget struct {
	*sem

	mu    sync.Mutex
	holds map[holdKey]hold
	whole map[string]bool // consumer tags whose oversize bodies are read all the same
}

type holdKey struct {
	consumerTag string
	deliveryTag uint64
}

type hold struct {
	n       int64
	g       *guard
	channel uint16
}

func newBudget(limit int64) *budget {
	return &budget{sem: newSem(limit), holds: map[holdKey]hold{}, whole: map[string]bool{}}
}

// readWhole marks the deliveries of consumerTag to be read whole, however
// large: their queue has no dead-letter exchange, so their consumer must
// dead-letter them itself. (on false forgets the mark.)
func (b *budget) readWhole(consumerTag string, on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if on {
		b.whole[consumerTag] = true
	} else {
		delete(b.whole, consumerTag)
	}
}

func (b *budget) readsWhole(consumerTag string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.whole[consumerTag]
}

// acquire holds n bytes for key, waiting while they do not fit, until stop
// is closed. It returns how long it waited.
func (b *budget) acquire(key holdKey, n int64, g *guard, channel uint16, stop <-chan struct{}) (time.Duration, error) {
	waited, err := b.sem.acquire(n, stop)
	if err != nil {
		return 0, err
	}
	b.mu.Lock()
	if old, dup := b.holds[key]; dup { // cannot happen: tags are unique per consumer
		b.sem.release(old.n)
	}
	b.holds[key] = hold{n: n, g: g, channel: channel}
	b.mu.Unlock()
	return waited, nil
}

// release gives back what the delivery of key holds; a key that holds
// nothing (released already, or never held) is ignored.
func (b *budget) release(consumerTag string, deliveryTag uint64) {
	key := holdKey{consumerTag, deliveryTag}
	b.mu.Lock()
	h, ok := b.holds[key]
	delete(b.holds, key)
	b.mu.Unlock()
	if ok {
		b.sem.release(h.n)
	}
}

// releaseChannel gives back what every delivery on channel of g holds.
func (b *budget) releaseChannel(g *guard, channel uint16) {
	b.releaseWhere(func(h hold) bool { return h.g == g && h.channel == channel })
}

// releaseGuard gives back what every delivery read through g holds.
func (b *budget) releaseGuard(g *guard) {
	b.releaseWhere(func(h hold) bool { return h.g == g })
}

func (b *budget) releaseWhere(match func(hold) bool) {
	b.mu.Lock()
	var n int64
	for k, h := range b.holds {
		if match(h) {
			delete(b.holds, k)
			n += h.n
		}
	}
	b.mu.Unlock()
	b.sem.release(n)
}
