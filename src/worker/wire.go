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

// unwrapData validates a JSON envelope {"data": ...} and returns its data.
func unwrapData(body []byte, maxDepth int) (json.RawMessage, error) {
	if !utf8.Valid(body) {
		return nil, badRequest("body is not valid UTF-8 (first bad byte at offset %d)", firstInvalidUTF8(body))
	}
	if err := checkDepth(body, maxDepth); err != nil {
		return nil, err
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, badRequest(`body is empty: send a JSON object {"data": ...}`)
	}
	if trimmed[0] != '{' {
		if !json.Valid(body) {
			return nil, badRequest(`body is not JSON: send a JSON object {"data": ...}`)
		}
		return nil, badRequest(`body is JSON but not an object: send {"data": ...}`)
	}
	if !json.Valid(body) {
		var v any
		err := json.Unmarshal(body, &v)
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return nil, badRequest("body is not JSON: %v at offset %d", syn, syn.Offset)
		}
		return nil, badRequest("body is not JSON: %v", err)
	}
	data := member(trimmed, "data")
	if data == nil {
		return nil, badRequest(`body has no "data" member: send {"data": ...}`)
	}
	return data, nil
}

// member returns the value of the top-level member name of obj, a valid
// JSON object (the last one when repeated), or nil.
func member(obj []byte, name string) json.RawMessage {
	var data json.RawMessage
	i := skipSpace(obj, 1) // past '{'
	for i < len(obj) && obj[i] != '}' {
		keyEnd := skipValue(obj, i)
		key := obj[i:keyEnd]
		i = skipSpace(obj, keyEnd)
		i = skipSpace(obj, i+1) // past ':'
		valEnd := skipValue(obj, i)
		if isKey(key, name) {
			data = obj[i:valEnd]
		}
		i = skipSpace(obj, valEnd)
		if i < len(obj) && obj[i] == ',' {
			i = skipSpace(obj, i+1)
		}
	}
	return data
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

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the end of the valid JSON value starting at b[i].
func skipValue(b []byte, i int) int {
	depth, inString, escaped := 0, false, false
	for ; i < len(b); i++ {
		c := b[i]
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
				if depth == 0 {
					return i + 1
				}
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return i + 1
			}
			if depth < 0 { // end of the enclosing object
				return i
			}
		case ',', ' ', '\t', '\n', '\r':
			if depth == 0 {
				return i
			}
		}
	}
	return i
}

func firstInvalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return -1
}

// checkDepth rejects JSON nested deeper than max levels. It does not
// validate the JSON otherwise.
func checkDepth(b []byte, max int) error {
	depth, inString, escaped := 0, false, false
	for i, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
			if depth > max {
				return badRequest("JSON nested more than %d levels deep (at offset %d)", max, i)
			}
		case '}', ']':
			depth--
		}
	}
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

var gzipWriters = sync.Pool{New: func() any { return gzip.NewWriter(nil) }}

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
type wireError struct {
	Type    string `json:"type"`
	Message string `json:"message"`
	ID      string `json:"id,omitempty"`
	GoType  string `json:"go_type,omitempty"`
	Trace   string `json:"trace,omitempty"`
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
		return []byte(`{"success":false,"error":{"type":"Error","message":"unencodable error"}}`)
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
	obj := bytes.TrimLeft(body, " \t\r\n")
	if !json.Valid(obj) || len(obj) == 0 || obj[0] != '{' {
		return nil, fmt.Errorf("reply from route %q is not a JSON envelope: %.100q", route, body)
	}
	if string(member(obj, "success")) == "true" {
		data := member(obj, "data")
		if data == nil {
			data = json.RawMessage("null")
		}
		return data, nil
	}
	var we wireError
	if e := member(obj, "error"); e == nil || json.Unmarshal(e, &we) != nil {
		return nil, &RemoteError{Route: route, Type: TypeError, Message: "failure reply without a valid error member"}
	}
	return nil, &RemoteError{Route: route, Type: we.Type, Message: we.Message, ID: we.ID, GoType: we.GoType, Trace: we.Trace}
}
