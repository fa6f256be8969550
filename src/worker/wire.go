package worker

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"unicode/utf8"
)

// Content types on the wire.
const (
	ContentJSON = "application/json"         // plain JSON body
	ContentGzip = "application/octet-stream" // gzip-compressed JSON body, as the seed's clients send
)

var gzipMagic = []byte{0x1f, 0x8b}

// limits bound what a decoder accepts.
type limits struct {
	maxBody  int64
	maxDepth int
	inflate  *sem // bytes of gzip bodies inflating at once; nil: no bound
}

var defaultLimits = limits{maxBody: DefaultMaxBodySize, maxDepth: DefaultMaxDepth}

// decodeBody unwraps a request body into the raw JSON of its "data" member.
// gz reports whether the body was gzip-compressed (the reply is then
// compressed too). Every failure wraps ErrBadRequest and names what was
// wrong, but for ctx ending while a gzip body waits for memory to inflate.
func decodeBody(ctx context.Context, body []byte, contentEncoding string, lim limits) (data json.RawMessage, gz bool, err error) {
	switch contentEncoding {
	case "", "identity", "gzip":
	default:
		return nil, false, badRequest("unknown content encoding %q: send plain or gzip-compressed JSON", contentEncoding)
	}
	if bytes.HasPrefix(body, gzipMagic) {
		gz = true
		var release func()
		body, release, err = gunzip(ctx, body, lim)
		if err != nil {
			return nil, true, err
		}
		defer release()
	} else if contentEncoding == "gzip" {
		return nil, false, badRequest("content encoding is gzip but the body is not gzip data")
	}
	if int64(len(body)) > lim.maxBody {
		return nil, gz, badRequest("body of %d bytes is over the limit of %d bytes", len(body), lim.maxBody)
	}
	data, err = unwrapData(body, lim.maxDepth)
	return data, gz, err
}

// unwrapData validates a JSON envelope {"data": ...} and returns its data,
// reading the body once: JSON syntax, UTF-8 and nesting depth are checked
// by the same pass that finds the data member.
func unwrapData(body []byte, maxDepth int) (json.RawMessage, error) {
	sc := scanner{b: body, maxDepth: maxDepth}
	sc.space()
	if sc.i == len(body) {
		return nil, badRequest(`body is empty: send a JSON object {"data": ...}`)
	}
	if body[sc.i] != '{' {
		if sc.value(0) == nil && sc.end() == nil {
			return nil, badRequest(`body is JSON but not an object: send {"data": ...}`)
		}
		if sc.err != nil {
			return nil, sc.err
		}
		return nil, badRequest(`body is not JSON: send a JSON object {"data": ...}`)
	}
	var data json.RawMessage
	err := sc.object(1, func(key []byte, start, end int) {
		if isKey(key, "data") {
			data = body[start:end] // the last one, as encoding/json keeps
		}
	})
	if err == nil {
		err = sc.end()
	}
	if err != nil {
		return nil, err
	}
	if data == nil {
		return nil, badRequest(`body has no "data" member: send {"data": ...}`)
	}
	return data, nil
}

// isKey reports whether the quoted JSON string key is name.
func isKey(key []byte, name string) bool {
	if len(key) == len(name)+2 && string(key[1:len(key)-1]) == name {
		return true
	}
	if !bytes.Contains(key, []byte{'\\'}) {
		return false
	}
	var k string
	return json.Unmarshal(key, &k) == nil && k == name
}

// scanner validates JSON (RFC 8259) in one pass, with a bound on nesting.
type scanner struct {
	b        []byte
	i        int
	maxDepth int
	err      error // the first error, kept for the caller
}

func (s *scanner) fail(format string, args ...any) error {
	if s.err == nil {
		s.err = badRequest(format, args...)
	}
	return s.err
}

func (s *scanner) syntax(what string) error {
	if s.i >= len(s.b) {
		return s.fail("body is not JSON: unexpected end of JSON input at offset %d", s.i)
	}
	return s.fail("body is not JSON: %s at offset %d", what, s.i)
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// end checks that nothing but white space follows the value.
func (s *scanner) end() error {
	s.space()
	if s.i != len(s.b) {
		return s.syntax("invalid character after the top-level value")
	}
	return nil
}

// value scans one value nested depth levels deep.
func (s *scanner) value(depth int) error {
	s.space()
	if s.i >= len(s.b) {
		return s.syntax("")
	}
	switch c := s.b[s.i]; {
	case c == '{':
		return s.object(depth+1, nil)
	case c == '[':
		return s.array(depth + 1)
	case c == '"':
		return s.str()
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	}
	return s.syntax(fmt.Sprintf("invalid character %q looking for a value", s.b[s.i]))
}

// open checks depth against the nesting limit and steps into the object or
// array at s.i, past its opening byte and the space after it; empty says it
// was {} or [] (closing: '}' or ']') and has been scanned whole.
func (s *scanner) open(depth int, closing byte) (empty bool, err error) {
	if depth > s.maxDepth {
		return false, s.fail("JSON nested more than %d levels deep (at offset %d)", s.maxDepth, s.i)
	}
	s.i++ // '{' or '['
	s.space()
	if s.i < len(s.b) && s.b[s.i] == closing {
		s.i++
		return true, nil
	}
	return false, nil
}

// object scans an object at s.i; member, when not nil, is told each key
// (quotes included) and its value's span.
func (s *scanner) object(depth int, member func(key []byte, start, end int)) error {
	if empty, err := s.open(depth, '}'); empty || err != nil {
		return err
	}
	for {
		s.space()
		if s.i >= len(s.b) || s.b[s.i] != '"' {
			return s.syntax("looking for an object key")
		}
		keyStart := s.i
		if err := s.str(); err != nil {
			return err
		}
		key := s.b[keyStart:s.i]
		s.space()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return s.syntax("looking for ':' after an object key")
		}
		s.i++
		s.space()
		start := s.i
		if err := s.value(depth); err != nil {
			return err
		}
		if member != nil {
			member(key, start, s.i)
		}
		if done, err := s.after('}', "in an object"); done || err != nil {
			return err
		}
	}
}

// after scans what follows an element of an object or array: ',' (more
// to come) or the closing byte (done).
func (s *scanner) after(closing byte, where string) (done bool, err error) {
	s.space()
	if s.i >= len(s.b) {
		return false, s.syntax("")
	}
	switch s.b[s.i] {
	case ',':
		s.i++
		return false, nil
	case closing:
		s.i++
		return true, nil
	}
	return false, s.syntax("looking for ',' or '" + string(closing) + "' " + where)
}

func (s *scanner) array(depth int) error {
	if empty, err := s.open(depth, ']'); empty || err != nil {
		return err
	}
	for {
		if err := s.value(depth); err != nil {
			return err
		}
		if done, err := s.after(']', "in an array"); done || err != nil {
			return err
		}
	}
}

// str scans a string at s.i: escapes, no control characters, valid UTF-8.
func (s *scanner) str() error {
	s.i++ // opening quote
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return nil
		case c == '\\':
			if s.i+1 >= len(s.b) {
				return s.syntax("")
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if s.i+6 > len(s.b) {
					return s.syntax("")
				}
				for _, h := range s.b[s.i+2 : s.i+6] {
					if !isHex(h) {
						return s.syntax("invalid \\u escape")
					}
				}
				s.i += 6
			default:
				return s.syntax("invalid escape")
			}
		case c < 0x20:
			return s.syntax("control character in a string")
		case c < utf8.RuneSelf:
			s.i++
		default:
			r, n := utf8.DecodeRune(s.b[s.i:])
			if r == utf8.RuneError && n == 1 {
				return s.fail("body is not valid UTF-8 (first bad byte at offset %d)", s.i)
			}
			s.i += n
		}
	}
	return s.syntax("")
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func (s *scanner) digits() int {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i - start
}

// number scans -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?.
func (s *scanner) number() error {
	if s.b[s.i] == '-' {
		s.i++
	}
	if s.i < len(s.b) && s.b[s.i] == '0' {
		s.i++
	} else if s.digits() == 0 {
		return s.syntax("invalid number")
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if s.digits() == 0 {
			return s.syntax("invalid number")
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if s.digits() == 0 {
			return s.syntax("invalid number")
		}
	}
	return nil
}

func (s *scanner) literal(word string) error {
	if !bytes.HasPrefix(s.b[s.i:], []byte(word)) {
		return s.syntax(fmt.Sprintf("invalid literal, want %s", word))
	}
	s.i += len(word)
	return nil
}

var gzipReaders sync.Pool

// gunzip decompresses b. Its gzip trailer states the size it inflates to:
// over lim.maxBody it is refused before anything is inflated; otherwise that
// many bytes are reserved from lim.inflate (waiting while other bodies
// inflate, until ctx ends) and b may not inflate past them. The returned
// release gives the reservation back; call it once the inflated bytes are
// no longer needed. (One gzip member is expected, as every gzip library
// writes by default; a body of several members inflates past its trailer's
// size and is refused.)
func gunzip(ctx context.Context, b []byte, lim limits) (out []byte, release func(), err error) {
	if len(b) < 18 { // 10-byte header, 8-byte trailer
		return nil, nil, badRequest("body starts like gzip but is too short to be gzip data (%d bytes)", len(b))
	}
	size := int64(binary.LittleEndian.Uint32(b[len(b)-4:])) // ISIZE: the inflated size mod 2^32
	if size > lim.maxBody {
		return nil, nil, badRequest("gzip body inflates to %d bytes (its trailer says), over the limit of %d bytes", size, lim.maxBody)
	}
	release = func() {}
	if lim.inflate != nil {
		if _, err := lim.inflate.acquire(size, ctx.Done()); err != nil {
			return nil, nil, fmt.Errorf("wait for memory to inflate a gzip body of %d bytes: %w", size, context.Cause(ctx))
		}
		release = func() { lim.inflate.release(size) }
	}
	out, err = inflate(b, size)
	if err != nil {
		release()
		return nil, nil, err
	}
	return out, release, nil
}

// inflate decompresses b, which may inflate to at most size bytes.
func inflate(b []byte, size int64) ([]byte, error) {
	zr, _ := gzipReaders.Get().(*gzip.Reader)
	var err error
	if zr == nil {
		zr, err = gzip.NewReader(bytes.NewReader(b))
	} else {
		err = zr.Reset(bytes.NewReader(b))
	}
	if err != nil {
		return nil, badRequest("body starts like gzip but is not gzip data: %v", err)
	}
	defer gzipReaders.Put(zr)
	out := bytes.NewBuffer(make([]byte, 0, size))
	n, err := io.Copy(out, io.LimitReader(zr, size+1))
	if err != nil {
		return nil, badRequest("gzip body is corrupt: %v", err)
	}
	if n > size {
		return nil, badRequest("gzip body inflates past the %d bytes its trailer states (several gzip members?): send one gzip member", size)
	}
	return out.Bytes(), nil
}

// gzipWriters compress at gzip.BestSpeed: messages are small, and the
// default level clears 640 KiB of match tables on every Reset, which cost
// more than a whole RPC round trip of this package without gzip (measured:
// 0.58x the raw echo's calls per second at the default level).
var gzipWriters = sync.Pool{New: func() any {
	zw, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed)
	return zw
}}

func gzipBytes(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzipWriters.Get().(*gzip.Writer)
	zw.Reset(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	gzipWriters.Put(zw)
	return buf.Bytes()
}

// encodeRequest builds a request body {"data": v}; v may be json.RawMessage.
func encodeRequest(v any) ([]byte, error) {
	data, err := marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode request data of type %T as JSON: %w", v, err)
	}
	out := make([]byte, 0, len(data)+10)
	out = append(out, `{"data":`...)
	out = append(out, data...)
	return append(out, '}'), nil
}

// marshal is json.Marshal without its HTML escaping: <, > and & travel as
// themselves, as the seed's Python clients send them, and a
// json.RawMessage passed through comes out as it came in but for
// whitespace.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// wireError is the error member of a failure reply.
// It has the members lib-python-amqp-worker's ErrResponse always sends
// (type, message, args, trace; trace empty in production), so Python
// callers that read them find them.
type wireError struct {
	Type    string `json:"type"`
	Message string `json:"message"`
	Args    []any  `json:"args"`
	Trace   string `json:"trace"`
	ID      string `json:"id,omitempty"`
	GoType  string `json:"go_type,omitempty"`
}

// failure is a failure reply body as it travels.
type failure struct {
	Success bool      `json:"success"` // always false
	Error   wireError `json:"error"`
}

// encodeSuccess builds {"success": true, "data": data}; data must be JSON.
func encodeSuccess(data []byte) []byte {
	if len(data) == 0 {
		data = []byte("null")
	}
	out := make([]byte, 0, len(data)+27)
	out = append(out, `{"success":true,"data":`...)
	out = append(out, data...)
	return append(out, '}')
}

// encodeFailure builds {"success": false, "error": {...}}.
func encodeFailure(e wireError) []byte {
	b, err := marshal(failure{Error: e})
	if err != nil { // strings only: cannot happen, but never send nothing
		return []byte(`{"success":false,"error":{"type":"Error","message":"unencodable error","args":["unencodable error"],"trace":""}}`)
	}
	return b
}

// decodeReply parses a reply body (plain or gzip) for route. A failure
// reply becomes a *RemoteError.
func decodeReply(route string, body []byte, lim limits) (json.RawMessage, error) {
	if bytes.HasPrefix(body, gzipMagic) {
		inflated, release, err := gunzip(context.Background(), body, lim)
		if err != nil {
			return nil, fmt.Errorf("reply from route %q: %w", route, err)
		}
		defer release()
		body = inflated
	}
	var success, data, errMember json.RawMessage
	sc := scanner{b: body, maxDepth: lim.maxDepth}
	sc.space()
	err := errors.New("not an object")
	if sc.i < len(body) && body[sc.i] == '{' {
		err = sc.object(1, func(key []byte, start, end int) {
			switch {
			case isKey(key, "success"):
				success = body[start:end]
			case isKey(key, "data"):
				data = body[start:end]
			case isKey(key, "error"):
				errMember = body[start:end]
			}
		})
		if err == nil {
			err = sc.end()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("reply from route %q is not a JSON envelope: %.100q: %w", route, body, err)
	}
	if string(success) == "true" {
		if data == nil {
			data = json.RawMessage("null")
		}
		return data, nil
	}
	var we wireError
	if errMember == nil || json.Unmarshal(errMember, &we) != nil {
		return nil, &RemoteError{Route: route, Type: TypeError, Message: "failure reply without a valid error member"}
	}
	return nil, &RemoteError{Route: route, Type: we.Type, Message: we.Message, Args: we.Args, ID: we.ID, GoType: we.GoType, Trace: we.Trace}
}

// Encoding is how a [Client] encodes the bodies it sends.
type Encoding int

const (
	// Gzip is the JSON gzip-compressed, content type application/octet-stream,
	// as lib-python-amqp-worker sends it and requires it.
	Gzip Encoding = iota
	// JSON is plain JSON, content type application/json.
	JSON
)

// encode puts body in e, returning it and its content type.
func (e Encoding) encode(body []byte) ([]byte, string) {
	if e == Gzip {
		return gzipBytes(body), ContentGzip
	}
	return body, ContentJSON
}
