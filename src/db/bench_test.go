package db_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"example.com/service/src/db"
	"example.com/service/src/testenv"
)

// Benchmarks of the model next to raw pgxpool running the same statements
// on the same server in the same run. Each benchmark reports model-ops/s,
// raw-ops/s and ratio (model / raw); ns/op covers both sides.
//
//	go test -run '^$' -bench . -benchtime 3s ./src/db/

const benchSchema = `CREATE TABLE bench_item (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	"string" varchar(255) NOT NULL,
	"integer" smallint NOT NULL,
	"json" jsonb
)`

type benchItem struct {
	ID      uuid.UUID       `db:"id"`
	String  string          `db:"string"`
	Integer int16           `db:"integer"`
	JSON    json.RawMessage `db:"json"`
}

// The statements the model builds for bench_item, written out for pgxpool.
const (
	rawInsert = `INSERT INTO "bench_item" ("string", "integer", "json") VALUES ($1, $2, $3) RETURNING "id", "string", "integer", "json"`
	rawSelect = `SELECT "id", "string", "integer", "json" FROM "bench_item" WHERE "id" = $1`
)

type benchEnv struct {
	model *db.Model[benchItem]
	pool  *pgxpool.Pool
	ids   []uuid.UUID
}

func newBenchEnv(b *testing.B) *benchEnv {
	c := newClient(b, benchSchema)
	cfg := c.Config()
	pc, err := pgxpool.ParseConfig(cfg.ConnString())
	if err != nil {
		b.Fatal(err)
	}
	pc.MaxConns = db.DefaultMaxOpenConns // the same pool size as the Client's
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	e := &benchEnv{model: db.MustModel[benchItem](c, "bench_item"), pool: pool}
	for i := range 1000 {
		it, err := e.model.Create(context.Background(), benchItem{String: fmt.Sprint("seed", i), Integer: int16(i), JSON: json.RawMessage(`{"n": 1}`)})
		if err != nil {
			b.Fatal(err)
		}
		e.ids = append(e.ids, it.ID)
	}
	return e
}

// compare runs b.N operations through model and b.N through raw, with conc
// goroutines each, alternating the two in rounds so that drift of the
// machine hits both alike, and reports both rates and their ratio.
func compare(b *testing.B, conc int, model, raw func(ctx context.Context, i int) error) {
	ctx := context.Background()
	// Warm both pools and statement caches.
	for i := range 2 * conc {
		if err := model(ctx, i); err != nil {
			b.Fatal(err)
		}
		if err := raw(ctx, i); err != nil {
			b.Fatal(err)
		}
	}
	run := func(op func(context.Context, int) error, n int, next *atomic.Int64) time.Duration {
		var wg sync.WaitGroup
		var failed atomic.Value
		start := time.Now()
		for range conc {
			wg.Go(func() {
				for {
					i := int(next.Add(1))
					if i > n {
						return
					}
					if err := op(ctx, i); err != nil {
						failed.Store(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if err, ok := failed.Load().(error); ok {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	// Short rounds: the machine is shared, and its load changes on a scale
	// of milliseconds to seconds; both sides must see the same conditions.
	round := 25 * conc
	var modelTime, rawTime time.Duration
	var mNext, rNext atomic.Int64
	b.ResetTimer()
	for done, r := 0, 0; done < b.N; r++ {
		n := min(done+round, b.N)
		if r%2 == 0 {
			modelTime += run(model, n, &mNext)
			rawTime += run(raw, n, &rNext)
		} else {
			rawTime += run(raw, n, &rNext)
			modelTime += run(model, n, &mNext)
		}
		done = n
	}
	b.StopTimer()
	mRate := float64(b.N) / modelTime.Seconds()
	rRate := float64(b.N) / rawTime.Seconds()
	b.ReportMetric(mRate, "model-ops/s")
	b.ReportMetric(rRate, "raw-ops/s")
	b.ReportMetric(mRate/rRate, "ratio")
}

func BenchmarkCreate(b *testing.B) {
	e := newBenchEnv(b)
	payload := json.RawMessage(`{"n": 1}`)
	model := func(ctx context.Context, i int) error {
		it, err := e.model.Create(ctx, benchItem{String: "model", Integer: int16(i), JSON: payload})
		if err == nil && it.ID == uuid.Nil {
			err = fmt.Errorf("no id")
		}
		return err
	}
	raw := func(ctx context.Context, i int) error {
		var it benchItem
		err := e.pool.QueryRow(ctx, rawInsert, "raw", int16(i), payload).Scan(&it.ID, &it.String, &it.Integer, &it.JSON)
		if err == nil && it.ID == uuid.Nil {
			err = fmt.Errorf("no id")
		}
		return err
	}
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprint("concurrency=", conc), func(b *testing.B) { compare(b, conc, model, raw) })
	}
}

func BenchmarkRead(b *testing.B) {
	e := newBenchEnv(b)
	model := func(ctx context.Context, i int) error {
		id := e.ids[i%len(e.ids)]
		it, err := e.model.Read(ctx, id)
		if err == nil && it.ID != id {
			err = fmt.Errorf("read %v, got %v", id, it.ID)
		}
		return err
	}
	raw := func(ctx context.Context, i int) error {
		id := e.ids[i%len(e.ids)]
		var it benchItem
		err := e.pool.QueryRow(ctx, rawSelect, id).Scan(&it.ID, &it.String, &it.Integer, &it.JSON)
		if err == nil && it.ID != id {
			err = fmt.Errorf("read %v, got %v", id, it.ID)
		}
		return err
	}
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprint("concurrency=", conc), func(b *testing.B) { compare(b, conc, model, raw) })
	}
}

var _ = testenv.Name
