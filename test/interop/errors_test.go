//go:build interop

package interop

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"example.com/service/test/stack"
)

// TestErrorEnvelopes sends the same request, shaped exactly as the Python
// library's client sends it, to the seed's will-error route on a Python
// service built with the library and on the Go service (development and
// production mode), and compares the replies field by field, the AMQP
// properties included. The Python reply is the reference.
func TestErrorEnvelopes(t *testing.T) {
	pyEnv := stack.Env{VHost: stack.NewVHost(t)}
	svc := startPython(t, pyEnv.VHost, "service.py", "--rpc", "will-error=will-error")
	if err := svc.ready(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	devEnv, prodEnv := stack.NewEnv(t, bins), stack.NewEnv(t, bins)
	stack.Start(t, bins, devEnv)
	stack.Start(t, bins, prodEnv, "MODE=production")
	pyCh, devCh, prodCh := pyEnv.Channel(t), devEnv.Channel(t), prodEnv.Channel(t)

	body := []byte(`{"data": "foo"}`)
	_, py, err := aioPikaCall(pyCh, "will-error", body, true, 10*time.Second)
	if err != nil {
		t.Fatalf("the Python service did not answer will-error: %v", err)
	}
	pyEnvl, err := parseEnvelope(py.body)
	if err != nil {
		t.Fatalf("the Python service's reply: %v", err)
	}
	type goReply struct {
		mode string
		req  amqp.Publishing
		raw  rawReply
		env  envelope
		err  error
	}
	var goReplies []goReply
	for mode, ch := range map[string]*amqp.Channel{"development": devCh, "production": prodCh} {
		req, raw, err := aioPikaCall(ch, "will-error", body, true, 10*time.Second)
		r := goReply{mode: mode, req: req, raw: raw, err: err}
		if err == nil {
			r.env, r.err = parseEnvelope(raw.body)
		}
		goReplies = append(goReplies, r)
	}
	slices.SortFunc(goReplies, func(a, b goReply) int { return strings.Compare(a.mode, b.mode) })

	// compare runs one field's check on both modes' replies.
	compare := func(field string, f func(g goReply) (note string, err error)) {
		cell(t, field, func() (string, error) {
			var notes, errs []string
			for _, g := range goReplies {
				if g.err != nil {
					errs = append(errs, g.mode+": "+g.err.Error())
					continue
				}
				note, err := f(g)
				if err != nil {
					errs = append(errs, g.mode+": "+err.Error())
				}
				if note != "" {
					notes = append(notes, g.mode+": "+note)
				}
			}
			if len(errs) > 0 {
				return "", fmt.Errorf("%s", strings.Join(errs, "; "))
			}
			return strings.Join(notes, "; "), nil
		})
	}
	same := func(what string, pyV, goV any) error {
		if fmt.Sprint(pyV) != fmt.Sprint(goV) {
			return fmt.Errorf("%s is %q, the Python library's is %q", what, fmt.Sprint(goV), fmt.Sprint(pyV))
		}
		return nil
	}

	compare("AMQP type", func(g goReply) (string, error) { return "", same("type", py.Type, g.raw.Type) })
	compare("AMQP content_type", func(g goReply) (string, error) {
		return "", same("content_type", py.ContentType, g.raw.ContentType)
	})
	compare("AMQP correlation_id", func(g goReply) (string, error) {
		if g.raw.CorrelationId != g.req.CorrelationId {
			return "", fmt.Errorf("correlation_id is %q, the request's was %q", g.raw.CorrelationId, g.req.CorrelationId)
		}
		return "", nil
	})
	compare("AMQP delivery_mode", func(g goReply) (string, error) {
		return "", same("delivery_mode", py.DeliveryMode, g.raw.DeliveryMode)
	})
	compare("AMQP timestamp, headers, message_id (informative)", func(g goReply) (string, error) {
		return fmt.Sprintf("Python timestamp %v headers %v message_id %q; Go timestamp %v headers %v message_id %q",
			!py.Timestamp.IsZero(), py.Headers, py.MessageId, !g.raw.Timestamp.IsZero(), g.raw.Headers, g.raw.MessageId), nil
	})
	compare("body gzip-compressed like the request", func(g goReply) (string, error) {
		if !isGzip(g.raw.Body) {
			return "", fmt.Errorf("the reply body is not gzip")
		}
		return "", nil
	})
	compare("envelope members", func(g goReply) (string, error) {
		return "", same("top-level members", pyEnvl.keys, g.env.keys)
	})
	compare("success", func(g goReply) (string, error) { return "", same("success", pyEnvl.Success, g.env.Success) })
	compare("error.type", func(g goReply) (string, error) { return "", same("error.type", pyEnvl.str("type"), g.env.str("type")) })
	compare("error.message", func(g goReply) (string, error) {
		m := g.env.str("message")
		if !strings.Contains(m, "Just an exception") || !strings.Contains(m, "foo") {
			return "", fmt.Errorf("error.message %q lacks %q or the data", m, "Just an exception")
		}
		return fmt.Sprintf("Python %q (repr), Go %q", pyEnvl.str("message"), m), nil
	})
	compare("error.args", func(g goReply) (string, error) {
		if k := jsonKind(g.env.Error["args"]); k != "array" {
			return "", fmt.Errorf("error.args is %s, the Python library sends an array (%s)", k, pyEnvl.Error["args"])
		}
		var args []any
		if err := decodeExact(g.env.Error["args"], &args); err != nil || len(args) == 0 || !strings.Contains(fmt.Sprint(args[0]), "Just an exception") {
			return "", fmt.Errorf("error.args is %s, want the message as its first element, as Python's %s", g.env.Error["args"], pyEnvl.Error["args"])
		}
		return "", nil
	})
	compare("error.trace", func(g goReply) (string, error) {
		if k := jsonKind(g.env.Error["trace"]); k != "string" {
			return "", fmt.Errorf("error.trace is %s, the Python library always sends a string", k)
		}
		return "", nil
	})
	compare("error members beyond the Python library's (informative)", func(g goReply) (string, error) {
		var extra []string
		for k := range g.env.Error {
			if pyEnvl.Error[k] == nil {
				extra = append(extra, k)
			}
		}
		slices.Sort(extra)
		if len(extra) == 0 {
			return "none", nil
		}
		return "Go adds " + strings.Join(extra, ", "), nil
	})

	// A request the library cannot decode.
	cell(t, "undecodable request (gzip of invalid JSON)", func() (string, error) {
		bad := []byte(`{"data": not json`)
		note := "the Python library sends no reply"
		if _, pyBad, err := aioPikaCall(pyCh, "will-error", bad, true, 3*time.Second); err == nil {
			note = fmt.Sprintf("the Python library answers AMQP type %q: %s", pyBad.Type, tail(string(pyBad.body), 120))
		}
		var errs []string
		for mode, ch := range map[string]*amqp.Channel{"development": devCh, "production": prodCh} {
			_, raw, err := aioPikaCall(ch, "will-error", bad, true, 5*time.Second)
			if err == nil {
				var e envelope
				if e, err = parseEnvelope(raw.body); err == nil {
					err = wantFailure(e, "")
				}
				if err == nil && raw.Type != "result" && raw.Type != "error" {
					err = fmt.Errorf("the reply has AMQP type %q: aio-pika's RPC refuses it", raw.Type)
				}
			}
			if err != nil {
				errs = append(errs, mode+": "+err.Error())
			}
		}
		slices.Sort(errs)
		if len(errs) > 0 {
			return note, fmt.Errorf("%s", strings.Join(errs, "; "))
		}
		return note, nil
	})
}

func isGzip(b []byte) bool { return len(b) > 1 && b[0] == 0x1f && b[1] == 0x8b }
