package db_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"example.com/service/src/db"
	"example.com/service/src/testenv"
)

func TestSummarize(t *testing.T) {
	for _, c := range []struct{ q, op, table string }{
		{`SELECT id, name FROM thing WHERE name = $1`, "SELECT", "thing"},
		{`select * from public."Thing" t join other o on o.id = t.id`, "SELECT", "public.Thing"},
		{`INSERT INTO "thing" ("name") VALUES ($1) RETURNING *`, "INSERT", "thing"},
		{`UPDATE thing SET note = 'FROM secret' WHERE id = $1`, "UPDATE", "thing"},
		{`DELETE FROM ONLY thing WHERE id = $1`, "DELETE", "thing"},
		{`-- a comment FROM nowhere
		  /* and FROM here */ SELECT count(*) FROM (SELECT 1 FROM inner_t) x, thing`, "SELECT", "inner_t"},
		{`SELECT (SELECT max(id) FROM a) AS m FROM b`, "SELECT", "b"},
		{`WITH gone AS (DELETE FROM thing RETURNING id) INSERT INTO archive SELECT id FROM gone`, "INSERT", "archive"},
		{`SELECT 'it''s FROM a string' FROM real_table`, "SELECT", "real_table"},
		{`BEGIN`, "BEGIN", ""},
		{`select 1`, "SELECT", ""},
		{``, "", ""},
	} {
		op, table := db.Summarize(c.q)
		if op != c.op || table != c.table {
			t.Errorf("Summarize(%q) = %q, %q; want %q, %q", c.q, op, table, c.op, c.table)
		}
	}
}

// TestTracer: statements made with a traced ctx become child spans named by
// operation and table, with the database attributes and never the
// statement's arguments; a failure carries its SQLSTATE; without a span in
// ctx nothing is traced.
func TestTracer(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL; skipped with -short")
	}
	testenv.RequirePostgres(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	name := testenv.CreateDatabase(t, "dbtrace_")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := db.Open(ctx, db.Config{URL: testenv.PostgresURL(name), QueryTracer: db.NewTracer(tp)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Exec(ctx, thingSchema); err != nil {
		t.Fatal(err)
	}
	if n := len(exp.GetSpans()); n != 0 {
		t.Fatalf("%d spans for statements without a span in ctx, want 0", n)
	}
	things, err := db.NewModel[Thing](c, "thing")
	if err != nil {
		t.Fatal(err)
	}
	tctx, parent := tp.Tracer("test").Start(ctx, "route")
	const secret = "secret-name-4711"
	created, err := things.Create(tctx, Thing{Name: secret})
	if err != nil {
		t.Fatal(err)
	}
	_, err = things.Create(tctx, Thing{Name: secret}) // unique violation
	if !errors.Is(err, db.ErrConflict) {
		t.Fatalf("second Create = %v, want ErrConflict", err)
	}
	if _, err := things.Read(tctx, created.ID); err != nil {
		t.Fatal(err)
	}
	parent.End()

	var names []string
	for _, s := range exp.GetSpans() {
		if s.Name == "route" {
			continue
		}
		names = append(names, s.Name)
		if s.Parent.SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("span %q's parent is %s, want the route's %s", s.Name, s.Parent.SpanID(), parent.SpanContext().SpanID())
		}
		for _, kv := range s.Attributes {
			if strings.Contains(kv.Value.String(), secret) || strings.Contains(kv.Value.String(), created.ID.String()) {
				t.Errorf("span %q attribute %s = %q holds an argument", s.Name, kv.Key, kv.Value.String())
			}
		}
		got := map[string]string{}
		for _, kv := range s.Attributes {
			got[string(kv.Key)] = kv.Value.String()
		}
		if got["db.system.name"] != "postgresql" || got["db.collection.name"] != "thing" || got["db.namespace"] != name {
			t.Errorf("span %q attributes %v; want db.system.name postgresql, db.collection.name thing, db.namespace %s", s.Name, got, name)
		}
	}
	want := []string{"INSERT thing", "INSERT thing", "SELECT thing"}
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Fatalf("spans %v, want %v", names, want)
	}
	failed := exp.GetSpans()[1]
	if failed.Status.Code != codes.Error {
		t.Errorf("the failed INSERT's status is %v, want Error", failed.Status)
	}
	for _, kv := range failed.Attributes {
		if kv.Key == "error.type" && kv.Value.AsString() != "23505" {
			t.Errorf("error.type %q, want the SQLSTATE 23505", kv.Value.AsString())
		}
	}
}
