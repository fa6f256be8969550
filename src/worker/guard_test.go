package worker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"example.com/service/src/testenv"
)

// --- AMQP frames, written by hand for the guard to read ---

func frameOf(typ byte, channel uint16, payload []byte) []byte {
	b := []byte{typ}
	b = binary.BigEndian.AppendUint16(b, channel)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	return append(b, frameEnd)
}

func methodPayload(class, method uint16, args []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, class)
	b = binary.BigEndian.AppendUint16(b, method)
	return append(b, args...)
}

func deliverFrame(channel uint16, consumerTag string, deliveryTag uint64) []byte {
	args := appendShortstr(nil, consumerTag)
	args = binary.BigEndian.AppendUint64(args, deliveryTag)
	args = append(args, 0)               // redelivered
	args = appendShortstr(args, "")      // exchange
	args = appendShortstr(args, "route") // routing key
	return frameOf(frameTypeMethod, channel, methodPayload(classBasic, methodDeliver, args))
}

// props are the content header properties the tests set.
type props struct {
	contentType string
	headers     []byte // an encoded table's entries; nil: no headers property
	replyTo     string
}

func headerFrame(channel uint16, bodySize uint64, p props) []byte {
	b := binary.BigEndian.AppendUint16(nil, classBasic)
	b = binary.BigEndian.AppendUint16(b, 0) // weight
	b = binary.BigEndian.AppendUint64(b, bodySize)
	var flags uint16
	var rest []byte
	if p.contentType != "" {
		flags |= flagContentType
		rest = appendShortstr(rest, p.contentType)
	}
	if p.headers != nil {
		flags |= flagHeaders
		rest = binary.BigEndian.AppendUint32(rest, uint32(len(p.headers)))
		rest = append(rest, p.headers...)
	}
	flags |= flagDeliveryMode
	rest = append(rest, 2)
	if p.replyTo != "" {
		flags |= flagReplyTo
		rest = appendShortstr(rest, p.replyTo)
	}
	b = binary.BigEndian.AppendUint16(b, flags)
	return frameOf(frameTypeHeader, channel, append(b, rest...))
}

func bodyFrames(channel uint16, body []byte, max int) []byte {
	var out []byte
	for len(body) > 0 {
		n := min(max, len(body))
		out = append(out, frameOf(frameTypeBody, channel, body[:n])...)
		body = body[n:]
	}
	return out
}

// entry encodes one table entry of a long string value.
func entry(key, value string) []byte {
	b := appendShortstr(nil, key)
	b = append(b, 'S')
	b = binary.BigEndian.AppendUint32(b, uint32(len(value)))
	return append(b, value...)
}

// nestedTables encodes the entries of a table nesting depth tables below it:
// {"n": {"n": ... {"leaf": "x"}}}.
func nestedTables(depth int) []byte {
	inner := entry("leaf", "x")
	for range depth {
		t := appendShortstr(nil, "n")
		t = append(t, 'F')
		t = binary.BigEndian.AppendUint32(t, uint32(len(inner)))
		inner = append(t, inner...)
	}
	return inner
}

// frame is one frame as read back.
type frame struct {
	typ     byte
	channel uint16
	payload []byte
}

func parseFrames(t *testing.T, b []byte) []frame {
	t.Helper()
	var out []frame
	for len(b) > 0 {
		if len(b) < 8 {
			t.Fatalf("%d trailing bytes, not a frame", len(b))
		}
		size := int(binary.BigEndian.Uint32(b[3:7]))
		if len(b) < 8+size || b[7+size] != frameEnd {
			t.Fatalf("frame of size %d does not end with frame-end", size)
		}
		out = append(out, frame{b[0], binary.BigEndian.Uint16(b[1:3]), b[7 : 7+size]})
		b = b[8+size:]
	}
	return out
}

// headersOf returns the body size and the headers table of a content header.
func headersOf(t *testing.T, f frame) (uint64, map[string]string) {
	t.Helper()
	if f.typ != frameTypeHeader {
		t.Fatalf("frame of type %d, want a content header", f.typ)
	}
	flags := binary.BigEndian.Uint16(f.payload[12:14])
	start, end, ok := headersSpan(f.payload, flags)
	if !ok || start < 0 {
		t.Fatalf("content header without a readable headers table (flags %#x)", flags)
	}
	table := f.payload[start+4 : end]
	if err := checkTable(table, 0); err != nil {
		t.Fatalf("the guard emitted a table amqp091-go refuses: %v", err)
	}
	out := map[string]string{}
	for i := 0; i < len(table); {
		key := string(table[i+1 : i+1+int(table[i])])
		i += 1 + int(table[i])
		n, _ := fieldLen(table[i:], 0)
		if table[i] == 'S' {
			out[key] = string(table[i+5 : i+n])
		} else {
			out[key] = "(" + string(table[i]) + ")"
		}
		i += n
	}
	return binary.BigEndian.Uint64(f.payload[4:12]), out
}

// fakeConn is a socket that reads from r and does nothing else.
type fakeConn struct {
	net.Conn
	r io.Reader
}

func (f *fakeConn) Read(p []byte) (int, error)       { return f.r.Read(p) }
func (f *fakeConn) Close() error                     { return nil }
func (f *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (f *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// through runs stream through a guard and returns what it hands on; the
// socket returns one byte per read and the caller reads 7 at a time, so
// every buffering path runs.
func through(t *testing.T, stream []byte, maxBody int64, b *budget) []byte {
	t.Helper()
	g := newGuard(&fakeConn{r: iotest.OneByteReader(bytes.NewReader(stream))}, maxBody, b)
	var out bytes.Buffer
	buf := make([]byte, 7)
	for {
		n, err := g.Read(buf)
		out.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			return out.Bytes()
		}
		if err != nil {
			t.Fatalf("read through the guard: %v", err)
		}
	}
}

func TestGuardPassesValidFramesUnchanged(t *testing.T) {
	var stream []byte
	stream = append(stream, frameOf(frameTypeMethod, 0, methodPayload(classConnection, 30, []byte{0, 0, 0, 0, 0, 2, 0, 60}))...) // tune
	stream = append(stream, deliverFrame(1, "ctag", 1)...)
	stream = append(stream, headerFrame(1, 300, props{contentType: "application/json", headers: append(entry("x-deadline", "1"), nestedTables(3)...), replyTo: "amq.gen-1"})...)
	stream = append(stream, bodyFrames(1, bytes.Repeat([]byte("b"), 300), 128)...)
	stream = append(stream, frameOf(8, 0, nil)...) // heartbeat
	stream = append(stream, deliverFrame(2, "ctag2", 7)...)
	stream = append(stream, headerFrame(2, 0, props{})...) // empty body, no headers
	got := through(t, stream, 1<<20, nil)
	if !bytes.Equal(got, stream) {
		t.Fatalf("the guard changed a valid stream:\n got %x\nwant %x", got, stream)
	}
}

// The guard refuses exactly the tables amqp091-go's reader refuses (its
// read.go): nesting deeper than 32 tables or arrays, more than 8192
// entries, unknown field types, lengths past the end.
func TestGuardReplacesUnreadableHeaders(t *testing.T) {
	arrays := func(depth int) []byte { // {"a": [[[...["x"]...]]]}
		inner := []byte{'S', 0, 0, 0, 1, 'x'}
		for range depth {
			a := []byte{'A'}
			a = binary.BigEndian.AppendUint32(a, uint32(len(inner)))
			inner = append(a, inner...)
		}
		return append(appendShortstr(nil, "a"), inner...)
	}
	many := func(n int) []byte {
		var b []byte
		for i := range n {
			b = append(b, entry("k"+strings.Repeat("0", 5-len(itoa(uint64(i))))+itoa(uint64(i)), "")...)
		}
		return b
	}
	cases := []struct {
		name    string
		table   []byte
		refused string // "" for passed through
	}{
		{"32 nested tables", nestedTables(32), ""},
		{"33 nested tables", nestedTables(33), "nested more than 32 levels"},
		{"32 nested arrays", arrays(32), ""},
		{"33 nested arrays", arrays(33), "nested more than 32 levels"},
		{"8192 entries", many(8192), ""},
		{"8193 entries", many(8193), "more than 8192 entries"},
		{"unknown field type", append(appendShortstr(nil, "k"), 'Z', 0), "unknown field type"},
		{"string past the end", append(appendShortstr(nil, "k"), 'S', 0, 0, 1, 0, 'x'), "malformed"},
		{"key past the end", []byte{9, 'k'}, "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(`{"data": 1}`)
			stream := append(deliverFrame(1, "ctag", 1), headerFrame(1, uint64(len(body)), props{contentType: "application/json", headers: tc.table, replyTo: "amq.gen-x"})...)
			stream = append(stream, bodyFrames(1, body, 4)...)
			got := through(t, stream, 1<<20, nil)
			if tc.refused == "" {
				if !bytes.Equal(got, stream) {
					t.Fatal("a table amqp091-go reads was changed")
				}
				return
			}
			frames := parseFrames(t, got)
			size, headers := headersOf(t, frames[1])
			if !strings.Contains(headers[HeaderHeadersRefused], tc.refused) || len(headers) != 1 {
				t.Errorf("headers %v, want only %s saying %q", headers, HeaderHeadersRefused, tc.refused)
			}
			if size != uint64(len(body)) {
				t.Errorf("body size %d, want %d: the body is kept", size, len(body))
			}
			var gotBody []byte
			for _, f := range frames[2:] {
				gotBody = append(gotBody, f.payload...)
			}
			if !bytes.Equal(gotBody, body) {
				t.Errorf("body %q, want %q", gotBody, body)
			}
			// The other properties survive: reply_to is still there.
			if !bytes.Contains(frames[1].payload, []byte("amq.gen-x")) || !bytes.Contains(frames[1].payload, []byte("application/json")) {
				t.Error("the other properties were lost")
			}
		})
	}
}

func TestGuardDropsOversizeBodies(t *testing.T) {
	big := bytes.Repeat([]byte("B"), 250)
	stream := append(deliverFrame(1, "ctag", 1), headerFrame(1, 250, props{headers: entry("keep", "me")})...)
	stream = append(stream, bodyFrames(1, big, 100)...)
	// A second delivery right behind it, and one on another channel in
	// between its body frames would be legal too; keep to one channel.
	small := []byte(`{"data": 2}`)
	stream = append(stream, deliverFrame(1, "ctag", 2)...)
	stream = append(stream, headerFrame(1, uint64(len(small)), props{})...)
	stream = append(stream, bodyFrames(1, small, 100)...)

	frames := parseFrames(t, through(t, stream, 100, nil))
	if len(frames) != 5 { // deliver, header (empty body), deliver, header, body
		t.Fatalf("%d frames handed on, want 5 (no body frame of the oversize message)", len(frames))
	}
	size, headers := headersOf(t, frames[1])
	if size != 0 || !strings.Contains(headers[HeaderBodyRefused], "body of 250 bytes is over the limit of 100") || headers["keep"] != "me" {
		t.Errorf("oversize header: size %d, headers %v", size, headers)
	}
	if !bytes.Equal(frames[4].payload, small) {
		t.Errorf("the next message's body is %q, want %q", frames[4].payload, small)
	}
}

// A delivery waits before it is handed on until its body fits in the
// budget; settling one, or closing its channel, lets the next through.
func TestGuardWaitsForTheBudget(t *testing.T) {
	b := newBudget(100)
	body := bytes.Repeat([]byte("x"), 80)
	var stream []byte
	for tag := uint64(1); tag <= 3; tag++ {
		stream = append(stream, deliverFrame(1, "ctag", tag)...)
		stream = append(stream, headerFrame(1, 80, props{})...)
		stream = append(stream, bodyFrames(1, body, 80)...)
	}
	stream = append(stream, frameOf(frameTypeMethod, 1, methodPayload(classChannel, methodChanCloseOk, nil))...)
	pr, pw := io.Pipe()
	go func() { _, _ = pw.Write(stream); _ = pw.Close() }()
	g := newGuard(&fakeConn{r: pr}, 1000, b)
	frames := make(chan frame, 16)
	go func() {
		defer close(frames)
		r := bufReader{g: g}
		for {
			f, err := r.next()
			if err != nil {
				return
			}
			frames <- f
		}
	}()
	expect := func(n int) {
		t.Helper()
		for range n {
			select {
			case <-frames:
			case <-time.After(5 * time.Second):
				t.Fatal("a frame that fits the budget did not come")
			}
		}
	}
	quiet := func() {
		t.Helper()
		select {
		case f := <-frames:
			t.Fatalf("frame of type %d handed on while the budget was full", f.typ)
		case <-time.After(100 * time.Millisecond):
		}
	}
	expect(3) // delivery 1: method, header, body
	expect(1) // delivery 2's method frame; its header waits
	quiet()
	if b.held() != 80 {
		t.Fatalf("held %d bytes, want 80", b.held())
	}
	b.release("ctag", 1)
	expect(2) // delivery 2's header and body
	expect(1) // delivery 3's method
	quiet()
	b.release("ctag", 1) // released already: ignored
	quiet()
	b.release("ctag", 2)
	expect(2)
	expect(1) // channel.close-ok: frees delivery 3's bytes
	testenv.Eventually(t, 5*time.Second, "the channel's close to free its bytes", func() bool { return b.held() == 0 })
}

// bufReader reads whole frames from a guard.
type bufReader struct {
	g   *guard
	buf []byte
}

func (r *bufReader) next() (frame, error) {
	for {
		if len(r.buf) >= 7 {
			size := int(binary.BigEndian.Uint32(r.buf[3:7]))
			if len(r.buf) >= 8+size {
				f := frame{r.buf[0], binary.BigEndian.Uint16(r.buf[1:3]), append([]byte(nil), r.buf[7:7+size]...)}
				r.buf = r.buf[8+size:]
				return f, nil
			}
		}
		p := make([]byte, 4096)
		n, err := r.g.Read(p)
		r.buf = append(r.buf, p[:n]...)
		if err != nil {
			return frame{}, err
		}
	}
}

// Whatever arrives, the guard ends (no hang), never panics, and hands on
// well-formed frames when it was given well-formed frames.
func FuzzGuard(f *testing.F) {
	f.Add(append(deliverFrame(1, "c", 1), headerFrame(1, 5, props{headers: nestedTables(40)})...), int64(100))
	f.Add(append(deliverFrame(1, "c", 1), append(headerFrame(1, 500, props{contentType: "x"}), bodyFrames(1, make([]byte, 500), 64)...)...), int64(100))
	f.Add([]byte("AMQP\x00\x00\x09\x01"), int64(10))
	f.Add(headerFrame(3, 1, props{headers: []byte{1, 'k', 'A', 0, 0, 0, 2, 'V', 'V'}}), int64(0))
	f.Fuzz(func(t *testing.T, stream []byte, maxBody int64) {
		g := newGuard(&fakeConn{r: bytes.NewReader(stream)}, maxBody, newBudget(1<<20))
		out, err := io.ReadAll(g)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("read: %v", err)
		}
		if wellFormed(stream) && !g.raw && !wellFormed(out) {
			t.Fatalf("well-formed frames in, malformed out:\n in %x\nout %x", stream, out)
		}
	})
}

func wellFormed(b []byte) bool {
	for len(b) > 0 {
		if len(b) < 8 {
			return false
		}
		size := int(binary.BigEndian.Uint32(b[3:7]))
		if size > maxGuardFrame || len(b) < 8+size || b[7+size] != frameEnd {
			return false
		}
		b = b[8+size:]
	}
	return true
}
