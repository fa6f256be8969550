// Package redact keeps passwords out of errors and logs: it masks the
// password of every URL in a text, and wraps a slog.Handler so that no log
// record carries one.
package redact

import (
	"context"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
)

// userinfo matches the user:password@ part of a URL in running text: a
// scheme, "://", a user, ":" and a password up to the last "@" before the
// host. The password may hold any character but "@" and whitespace, since a
// URL that does not parse (a bad % escape, say) is still someone's secret.
var userinfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://[^:@/\s"']*):([^@\s"']*)@`)

// Mask is what a password is replaced with.
const Mask = "xxxxx"

// URLs returns s with the password of every URL in it replaced by Mask.
func URLs(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	return userinfo.ReplaceAllString(s, "${1}:"+Mask+"@")
}

// URL returns the URL s with its password replaced by Mask, for errors
// and logs. A string that does not parse as a URL ("://secret") may hold a
// password anywhere: it is replaced as a whole by [Unparsable].
func URL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return Unparsable
	}
	return u.Redacted()
}

// Unparsable is what [URL] shows instead of a URL that does not parse.
const Unparsable = "<a URL that does not parse>"

// keyValue matches a password in libpq's key=value form ("password=...").
var keyValue = regexp.MustCompile(`(?i)\b(password|passwd|pass|pwd)=('[^']*'|"[^"]*"|\S+)`)

// minSecret is the shortest secret Secrets masks by value: shorter ones
// ("guest") are development defaults, and masking them would mangle
// ordinary words (a user named guest).
const minSecret = 8

// Secrets returns s with the passwords of its URLs and of key=value pairs
// masked, and each of secrets (of at least 8 bytes) replaced by Mask
// wherever else it appears.
func Secrets(s string, secrets ...string) string {
	s = URLs(s)
	if strings.Contains(s, "=") {
		s = keyValue.ReplaceAllString(s, "${1}="+Mask)
	}
	for _, secret := range secrets {
		if len(secret) >= minSecret {
			s = strings.ReplaceAll(s, secret, Mask)
		}
	}
	return s
}

// Handler returns a handler that passes every record to h with the
// passwords of URLs, and the given secrets, masked in its message and in
// every string and error attribute (groups included).
func Handler(h slog.Handler, secrets ...string) slog.Handler {
	return &handler{h: h, secrets: secrets}
}

type handler struct {
	h       slog.Handler
	secrets []string
}

func (r *handler) Enabled(ctx context.Context, l slog.Level) bool { return r.h.Enabled(ctx, l) }

func (r *handler) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, Secrets(rec.Message, r.secrets...), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(r.attr(a))
		return true
	})
	return r.h.Handle(ctx, out)
}

func (r *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	clean := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		clean[i] = r.attr(a)
	}
	return &handler{h: r.h.WithAttrs(clean), secrets: r.secrets}
}

func (r *handler) WithGroup(name string) slog.Handler {
	return &handler{h: r.h.WithGroup(name), secrets: r.secrets}
}

func (r *handler) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, Secrets(v.String(), r.secrets...))
	case slog.KindGroup:
		group := v.Group()
		clean := make([]any, len(group))
		for i, g := range group {
			clean[i] = r.attr(g)
		}
		return slog.Group(a.Key, clean...)
	case slog.KindAny:
		if err, ok := v.Any().(error); ok {
			return slog.String(a.Key, Secrets(err.Error(), r.secrets...))
		}
		if s, ok := v.Any().(interface{ String() string }); ok {
			return slog.String(a.Key, Secrets(s.String(), r.secrets...))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
