package db

import (
	"context"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// NewTracer returns a pgx query tracer, for [Config.QueryTracer], that runs
// each statement made with a traced ctx (one that carries a span, as a
// worker's handler gets it) in a child span named "OPERATION TABLE" (e.g.
// "SELECT example_item"), kind client, following OpenTelemetry's database
// semantic conventions: db.system.name postgresql, db.operation.name,
// db.collection.name, db.namespace (the database), server.address and
// server.port, and on failure error.type (the SQLSTATE when the server sent
// one) and an error status. A span never holds the statement's text or its
// arguments, which may be personal data. Statements made without a span in
// ctx are not traced, so connection checks and background work add nothing.
func NewTracer(tp trace.TracerProvider) pgx.QueryTracer {
	return &tracer{t: tp.Tracer("example.com/service/src/db")}
}

type tracer struct{ t trace.Tracer }

func (t *tracer) TraceQueryStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	op, table := Summarize(data.SQL)
	name := op
	if table != "" {
		name += " " + table
	}
	attrs := []attribute.KeyValue{
		attribute.String("db.system.name", "postgresql"),
		attribute.String("db.operation.name", op),
	}
	if table != "" {
		attrs = append(attrs, attribute.String("db.collection.name", table))
	}
	if conn != nil {
		cc := conn.Config()
		attrs = append(attrs, attribute.String("db.namespace", cc.Database),
			attribute.String("server.address", cc.Host), attribute.Int("server.port", int(cc.Port)))
	}
	ctx, _ = t.t.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx
}

func (t *tracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	if data.Err != nil {
		typ := "Error"
		if code := sqlState(data.Err); code != "" {
			typ = code
			span.SetAttributes(attribute.String("db.response.status_code", code))
		}
		span.SetAttributes(attribute.String("error.type", typ))
		span.SetStatus(codes.Error, typ)
	} else {
		span.SetAttributes(attribute.Int64("db.response.returned_rows", data.CommandTag.RowsAffected()))
	}
	span.End()
}

// Summarize returns the operation of SQL statement q (its first keyword,
// upper-cased: SELECT, INSERT, ...; for WITH the main statement's) and the
// table it works on ("" when none is found: BEGIN, SET, ...), reading only
// keywords and names: string literals and comments are skipped, never
// returned.
func Summarize(q string) (op, table string) {
	toks := sqlTokens(q)
	i := 0
	if len(toks) > 0 && toks[0].word == "WITH" {
		// Skip the common table expressions: the main statement is the
		// first keyword at parenthesis depth 0 after them.
		for i = 1; i < len(toks); i++ {
			if toks[i].depth == 0 && isStatement(toks[i].word) {
				break
			}
		}
		if i == len(toks) {
			return "WITH", ""
		}
	}
	if i >= len(toks) {
		return "", ""
	}
	op = toks[i].word
	after := ""
	switch op {
	case "SELECT", "DELETE":
		after = "FROM"
	case "INSERT", "MERGE":
		after = "INTO"
	case "UPDATE":
		if i+1 < len(toks) {
			table = toks[i+1].name
			if toks[i+1].word == "ONLY" && i+2 < len(toks) {
				table = toks[i+2].name
			}
		}
		return op, table
	default:
		return op, ""
	}
	depth := toks[i].depth
	for j := i + 1; j+1 < len(toks); j++ {
		if toks[j].depth != depth || toks[j].word != after {
			continue
		}
		next := toks[j+1]
		if next.depth > depth { // FROM (SELECT ... FROM t): the subquery's table
			depth = next.depth
			after = "FROM"
			continue
		}
		table = next.name
		if next.word == "ONLY" && j+2 < len(toks) {
			table = toks[j+2].name
		}
		break
	}
	return op, table
}

func isStatement(w string) bool {
	switch w {
	case "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE":
		return true
	}
	return false
}

// sqlToken is a keyword or name of a statement: word is it upper-cased
// (empty for a quoted name), name as written without quotes, depth its
// parenthesis depth.
type sqlToken struct {
	word, name string
	depth      int
}

// sqlTokens splits q into its keywords and names, skipping literals,
// comments, numbers, parameters and punctuation. A dotted name
// (schema.table) is one token.
func sqlTokens(q string) []sqlToken {
	var toks []sqlToken
	depth := 0
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == '(':
			depth++
			i++
		case c == ')':
			depth--
			i++
		case c == '\'': // string literal; '' escapes a quote
			for i++; i < len(q); i++ {
				if q[i] == '\'' {
					if i+1 < len(q) && q[i+1] == '\'' {
						i++
						continue
					}
					break
				}
			}
			i++
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			end := strings.Index(q[i+2:], "*/")
			if end < 0 {
				return toks
			}
			i += end + 4
		case c == '"' || isIdentStart(c):
			start := i
			var name strings.Builder
			quoted := false
			for i < len(q) {
				if q[i] == '"' {
					quoted = true
					end := strings.IndexByte(q[i+1:], '"')
					if end < 0 {
						return toks
					}
					name.WriteString(q[i+1 : i+1+end])
					i += end + 2
				} else if isIdentStart(q[i]) {
					j := i
					for j < len(q) && isIdentPart(q[j]) {
						j++
					}
					name.WriteString(q[i:j])
					i = j
				} else {
					break
				}
				if i < len(q) && q[i] == '.' {
					name.WriteByte('.')
					i++
					continue
				}
				break
			}
			if i == start { // not a name after all
				i++
				continue
			}
			t := sqlToken{name: name.String(), depth: depth}
			if !quoted {
				t.word = strings.ToUpper(t.name)
			}
			toks = append(toks, t)
		default:
			i++
		}
	}
	return toks
}

func isIdentStart(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func isIdentPart(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' || c == '$' }

// sqlState is the SQLSTATE of a server error in err's chain, "" for others.
func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}
