package worker

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"unicode/utf8"
)

// Error types on the wire that this package produces itself.
const (
	TypeBadRequest = "BadRequest" // the request could not be decoded or had the wrong shape
	TypeError      = "Error"      // any error without a type of its own
)

var (
	// ErrBadRequest marks an error as the caller's fault: its reply type is
	// "BadRequest", and a queue worker dead-letters the message at once
	// instead of retrying. Wrap it: fmt.Errorf("item %q: %w", id, worker.ErrBadRequest).
	// Any error whose [Typed] type is "BadRequest" is treated the same way,
	// and a [RemoteError] of type "BadRequest" matches it with errors.Is.
	ErrBadRequest = errors.New("bad request")

	// ErrNoRoute is returned by Call and Publish when no queue exists for
	// the route: the broker returned the message as unroutable.
	ErrNoRoute = errors.New("no queue for route")

	// ErrConnectionLost is returned by Call when the connection dropped
	// after the request was sent and before its reply arrived; the request
	// may or may not have run.
	ErrConnectionLost = errors.New("connection lost before the reply arrived")
)

// Typed is implemented by errors that choose their reply type, e.g. a
// database "not found" error returning "NotFound". The first error in the
// chain (errors.As) that implements it decides the type.
type Typed interface {
	ErrorType() string
}

// Error is an error with a reply type, for handlers that want one without
// declaring an error type. Create it with [Errorf].
type Error struct {
	Type string
	Err  error
}

// Errorf returns an *Error of the given reply type whose message is
// fmt.Sprintf(format, args...); %w wraps as in fmt.Errorf.
func Errorf(typ, format string, args ...any) error {
	return &Error{Type: typ, Err: fmt.Errorf(format, args...)}
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// ErrorType returns the reply type the error was created with.
func (e *Error) ErrorType() string { return e.Type }

// DefaultErrorType names err on the wire: the type of the first error in
// its chain that implements [Typed], else "BadRequest" for
// [ErrBadRequest], else "Error". Pass your own to [WithErrorType] to name
// the errors of your packages, falling back to this.
func DefaultErrorType(err error) string {
	var t Typed
	if errors.As(err, &t) {
		if s := t.ErrorType(); s != "" {
			return s
		}
	}
	if errors.Is(err, ErrBadRequest) {
		return TypeBadRequest
	}
	return TypeError
}

// RemoteError is a failure reply: the handler of Route failed with an error
// of type Type. Check it with errors.As; a type of "BadRequest" also matches
// [ErrBadRequest] with errors.Is. It implements [Typed], so a service that
// relays it keeps the type.
type RemoteError struct {
	Route   string
	Type    string // e.g. "NotFound", "BadRequest", "Error"
	Message string
	Args    []any  // the exception's args, as a Python service sends them (this package's: [Message])
	ID      string // the id the remote service logged the error under
	GoType  string // development mode only
	Trace   string // development mode only
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("route %q failed: %s: %s", e.Route, e.Type, e.Message)
}

// ErrorType returns e.Type.
func (e *RemoteError) ErrorType() string { return e.Type }

// Is reports whether target is ErrBadRequest and e is of type "BadRequest".
func (e *RemoteError) Is(target error) bool {
	return target == ErrBadRequest && e.Type == TypeBadRequest
}

// badRequest returns an error of type BadRequest whose message is
// fmt.Sprintf(format, args...) (%w wraps).
func badRequest(format string, args ...any) error {
	return &badRequestError{err: fmt.Errorf(format, args...)}
}

type badRequestError struct{ err error }

func (e *badRequestError) Error() string        { return e.err.Error() }
func (e *badRequestError) Unwrap() error        { return e.err }
func (e *badRequestError) Is(target error) bool { return target == ErrBadRequest }

// Error texts are bounded where they travel: a handler's error may repeat
// its input, and an input can be megabytes.
const (
	maxReplyText  = 4096 // bytes of an error message in a reply
	maxHeaderText = 1024 // bytes of an error message in a dead letter's headers
	maxLogText    = 2048 // bytes of an error in a log line
)

// outcome is how a failed delivery is reported: a type and public message
// for the caller (the reply, or a dead letter's headers), the whole error
// for the log, both under one id. It is an error itself, wrapping the one
// it describes, so the middleware that logs it hands it to the reply.
type outcome struct {
	err      error
	Type     string // the reply type
	Public   string // what the caller is told
	Internal string // what the log is told
	ID       string // ties the two together
	Panic    *panicError
	GoType   string // the innermost error's Go type (for development replies)
	Chain    string // the Go types of the error chain, outermost first
}

func (o *outcome) Error() string { return o.Internal }
func (o *outcome) Unwrap() error { return o.err }

// describe reports err, once: an outcome already made is returned as it
// is. An error of type "Error" (no type of its own) or a panic is an
// internal failure: in production its text (a driver's message, an
// address, a query) stays in the log and the caller gets "internal error"
// and the id. Any other error's message is meant for the caller and is told
// as it is; in development every message is.
func (s *server) describe(err error) *outcome {
	return describe(err, s.opts.errorType, s.opts.development)
}

func describe(err error, errorType func(error) string, development bool) *outcome {
	var done *outcome
	if errors.As(err, &done) {
		return done
	}
	o := &outcome{err: err, Type: errorType(err), Internal: err.Error(), ID: randomHex(8)}
	var pe *panicError
	if errors.As(err, &pe) {
		o.Panic = pe
	}
	var chain []string
	for e := err; e != nil; e = errors.Unwrap(e) {
		chain = append(chain, reflect.TypeOf(e).String())
	}
	o.GoType = chain[len(chain)-1]
	o.Chain = "error chain: " + strings.Join(chain, " -> ")
	if (o.Type != TypeError && o.Panic == nil) || development {
		o.Public = o.Internal
	} else {
		o.Public = "internal error (error id " + o.ID + "); the service's log has the details"
	}
	return o
}

// truncate cuts s to at most n bytes on a UTF-8 boundary, saying how much
// was cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	suffix := fmt.Sprintf("... (%d bytes in all)", len(s))
	cut := max(n-len(suffix), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + suffix
}
