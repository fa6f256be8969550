package worker

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

func TestDecodeBody(t *testing.T) {
	lim := limits{maxBody: 1 << 10, maxDepth: 4}
	cases := []struct {
		name, enc string
		body      []byte
		data      string // wanted data; "" means an error
		gz        bool
		errPart   string
	}{
		{"object", "", []byte(`{"data": {"a": 1}}`), `{"a": 1}`, false, ""},
		{"null data", "", []byte(`{"data": null}`), `null`, false, ""},
		{"string", "", []byte(` {"data":"x"} `), `"x"`, false, ""},
		{"gzip", "", gz([]byte(`{"data":[1,2]}`)), `[1,2]`, true, ""},
		{"gzip declared", "gzip", gz([]byte(`{"data":1}`)), `1`, true, ""},
		{"gzip declared, plain body", "gzip", []byte(`{"data":1}`), "", false, "not gzip data"},
		{"unknown encoding", "br", []byte(`{"data":1}`), "", false, `unknown content encoding "br"`},
		{"missing data", "", []byte(`{"x":1}`), "", false, `no "data" member`},
		{"not json", "", []byte(`hi`), "", false, "not JSON"},
		{"array", "", []byte(`[1]`), "", false, "not an object"},
		{"bad utf-8", "", []byte("{\"data\":\"a\xffb\"}"), "", false, "offset 10"},
		{"too deep", "", []byte(`{"data":[[[[1]]]]}`), "", false, "nested more than 4"},
		{"brackets in strings do not count", "", []byte(`{"data":"[[[[[[\"]]"}`), `"[[[[[[\"]]"`, false, ""},
		{"too big", "", []byte(`{"data":"` + strings.Repeat("a", 2000) + `"}`), "", false, "over the limit"},
		{"gzip bomb", "", gz([]byte(`{"data":"` + strings.Repeat("a", 1<<20) + `"}`)), "", true, "over the limit"},
		{"truncated gzip", "", gz([]byte(`{"data":1}`))[:12], "", true, "gzip"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data, isGz, err := decodeBody(context.Background(), tc.body, tc.enc, lim)
			if tc.data != "" {
				if err != nil || string(data) != tc.data || isGz != tc.gz {
					t.Fatalf("= %s, gz %v, %v; want %s, gz %v", data, isGz, err, tc.data, tc.gz)
				}
				return
			}
			if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), tc.errPart) {
				t.Fatalf("err = %v, want BadRequest containing %q", err, tc.errPart)
			}
			if DefaultErrorType(err) != TypeBadRequest {
				t.Fatalf("errorType = %q", DefaultErrorType(err))
			}
		})
	}
}

type notFound struct{ id int }

func (e notFound) Error() string     { return fmt.Sprintf("item %d not found", e.id) }
func (e notFound) ErrorType() string { return "NotFound" }

func TestErrorType(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{errors.New("x"), TypeError},
		{fmt.Errorf("load: %w", notFound{3}), "NotFound"},
		{Errorf("Conflict", "name %q taken", "a"), "Conflict"},
		{fmt.Errorf("id: %w", ErrBadRequest), TypeBadRequest},
		{&RemoteError{Type: "NotFound"}, "NotFound"}, // relayed errors keep their type
	}
	for _, tc := range cases {
		if got := DefaultErrorType(tc.err); got != tc.want {
			t.Errorf("DefaultErrorType(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	if !errors.Is(&RemoteError{Type: TypeBadRequest}, ErrBadRequest) || errors.Is(&RemoteError{Type: "X"}, ErrBadRequest) {
		t.Error("RemoteError.Is(ErrBadRequest) is wrong")
	}
}

func TestReplyRoundTrip(t *testing.T) {
	data, err := decodeReply("r", encodeSuccess([]byte(`{"a":[1,2]}`)), defaultLimits)
	if err != nil || string(data) != `{"a":[1,2]}` {
		t.Fatalf("success: %s, %v", data, err)
	}
	data, err = decodeReply("r", gz(encodeSuccess(nil)), defaultLimits)
	if err != nil || string(data) != `null` {
		t.Fatalf("gzip null success: %s, %v", data, err)
	}
	_, err = decodeReply("r", encodeFailure(wireError{Type: "NotFound", Message: "no \"x\"", Args: []any{`no "x"`}}), defaultLimits)
	var re *RemoteError
	if !errors.As(err, &re) || !reflect.DeepEqual(*re, RemoteError{Route: "r", Type: "NotFound", Message: `no "x"`, Args: []any{`no "x"`}}) {
		t.Fatalf("failure: %#v", err)
	}
	// The members lib-python-amqp-worker always sends: type, message, args, trace.
	if got := string(encodeFailure(wireError{Type: "T", Message: "m", Args: []any{"m"}})); got != `{"success":false,"error":{"type":"T","message":"m","args":["m"],"trace":""}}` {
		t.Fatalf("failure envelope = %s", got)
	}
	// A Python service's envelope, args and all.
	_, err = decodeReply("r", []byte(`{"success": false, "error": {"type": "ValueError", "message": "ValueError('bad', 3)", "args": ["bad", 3], "trace": "Traceback..."}}`), defaultLimits)
	if !errors.As(err, &re) || re.Type != "ValueError" || len(re.Args) != 2 || re.Args[0] != "bad" || re.Trace != "Traceback..." {
		t.Fatalf("Python failure: %#v", err)
	}
}

// <, > and & travel as themselves, not as \u003c escapes: data passed
// through a service comes out as it came in.
func TestNoHTMLEscaping(t *testing.T) {
	const in = `{"q":"a<b && c>d"}`
	req, err := encodeRequest(json.RawMessage(in))
	if err != nil || string(req) != `{"data":`+in+`}` {
		t.Fatalf("request = %s, %v", req, err)
	}
	out, err := Func(func(_ context.Context, m map[string]string) (map[string]string, error) { return m, nil }).
		Serve(context.Background(), &Request{Data: json.RawMessage(in)})
	if err != nil || string(out) != in {
		t.Fatalf("Func result = %s, %v", out, err)
	}
	if got := string(encodeFailure(wireError{Type: "T", Message: "x < y"})); !strings.Contains(got, `"x < y"`) {
		t.Fatalf("failure envelope = %s", got)
	}
}

func TestFuncAdapter(t *testing.T) {
	h := Func(func(_ context.Context, in struct{ N int }) (int, error) { return in.N * 2, nil })
	out, err := h.Serve(context.Background(), &Request{Data: json.RawMessage(`{"N": 21}`)})
	if err != nil || string(out) != "42" {
		t.Fatalf("= %s, %v", out, err)
	}
	_, err = h.Serve(context.Background(), &Request{Data: json.RawMessage(`{"N": "x"}`)})
	if !errors.Is(err, ErrBadRequest) || err.Error() != "data.N is a JSON string, want int" {
		t.Fatalf("shape error = %v", err)
	}
	_, err = h.Serve(context.Background(), &Request{Data: json.RawMessage(`[]`)})
	if !errors.Is(err, ErrBadRequest) {
		t.Fatalf("array into struct = %v", err)
	}
	j := Job(func(_ context.Context, s string) error { return Errorf("Conflict", "dup %s", s) })
	_, err = j.Serve(context.Background(), &Request{Data: json.RawMessage(`"a"`)})
	if DefaultErrorType(err) != "Conflict" || err.Error() != "dup a" {
		t.Fatalf("job error = %v", err)
	}
}

// FuzzDecodeRequest feeds arbitrary bodies to the request decoder. It must
// never panic, every failure must be a BadRequest, and whatever decodes must
// survive a round trip: re-encoded as a request (plain and gzip), it decodes
// to the same data.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{`{"data":{"a":1}}`, `{"data":null}`, `{"data":"\u00e9"}`, `[1]`, `{"x":1}`, `{"data":[[[[]]]]}`, "{\"data\":\"\xff\"}"} {
		f.Add([]byte(s), "")
		f.Add(gz([]byte(s)), "")
	}
	f.Add([]byte(`{"data":1}`), "br")
	lim := limits{maxBody: 1 << 16, maxDepth: 32}
	f.Fuzz(func(t *testing.T, body []byte, enc string) {
		data, _, err := decodeBody(context.Background(), body, enc, lim)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("failure is not a BadRequest: %v", err)
			}
			// What encoding/json takes as an envelope with data, within the
			// limits, the scanner takes too.
			var m map[string]json.RawMessage
			if enc == "" && !bytes.HasPrefix(body, gzipMagic) && len(body) <= int(lim.maxBody) && utf8.Valid(body) &&
				json.Unmarshal(body, &m) == nil && m["data"] != nil && depthOf(body) <= lim.maxDepth {
				t.Fatalf("encoding/json reads %q as an envelope with data, the scanner refused it: %v", body, err)
			}
			return
		}
		if !json.Valid(data) {
			t.Fatalf("decoded data is not JSON: %q", data)
		}
		// The hand-written envelope scanner agrees with encoding/json.
		plain := body
		if bytes.HasPrefix(body, gzipMagic) {
			plain, _, _ = gunzip(context.Background(), body, lim)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(plain, &m); err != nil || !bytes.Equal(compact(m["data"]), compact(data)) {
			t.Fatalf("scanner found data %q, encoding/json %q (%v)", data, m["data"], err)
		}
		req, err := encodeRequest(data)
		if err != nil {
			t.Fatalf("decoded data %q does not re-encode: %v", data, err)
		}
		for _, b := range [][]byte{req, gzipBytes(req)} {
			again, _, err := decodeBody(context.Background(), b, "", limits{maxBody: 1 << 20, maxDepth: 33})
			if err != nil {
				t.Fatalf("re-encoded %q does not decode: %v", b, err)
			}
			if !bytes.Equal(compact(data), compact(again)) {
				t.Fatalf("round trip changed data: %s -> %s", data, again)
			}
		}
	})
}

func compact(b []byte) []byte {
	var buf bytes.Buffer
	_ = json.Compact(&buf, b)
	return buf.Bytes()
}

// depthOf is the deepest nesting of objects and arrays in b, outside
// strings.
func depthOf(b []byte) int {
	depth, deepest, inString, escaped := 0, 0, false, false
	for _, c := range b {
		switch {
		case inString && escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case inString && c == '"':
			inString = false
		case inString:
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
			deepest = max(deepest, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	return deepest
}
