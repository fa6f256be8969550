//go:build interop

package interop

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"example.com/service/src/db"
	"example.com/service/test/stack"
)

// exactIntegers are integers a float64 cannot hold, as JSON: Python's int
// holds them, so the fleet sends them.
var exactIntegers = map[string]string{
	"int53":  "9007199254740993",     // 2^53 + 1
	"i64max": "9223372036854775807",  // int64 max
	"i64min": "-9223372036854775808", // int64 min
	"big":    "1000000000000000000000000000000",
}

// exactDecimals are JSON numbers with more digits than a float64 keeps.
var exactDecimals = map[string]string{
	"d1": "0.1", "d2": "12345678901234567890.123456789", "d3": "1.10", "d4": "1e-7",
	"d5": "79228162514264337593543950335.5",
}

// roundTrip is what the Go side sends a Python echo route and must get back
// unchanged.
type roundTrip struct {
	Int53  int64         `json:"int53"`
	I64Max int64         `json:"i64max"`
	I64Min int64         `json:"i64min"`
	Big    json.Number   `json:"big"`
	Amount db.Decimal    `json:"amount"`
	Day    db.Date       `json:"day"`
	At     db.Timestamp  `json:"at"`
	Maybe  *db.Timestamp `json:"maybe"`
}

// TestNumbersAndDates sends numbers that floats cannot hold, decimals,
// dates and instants from Python through the Go service and back, and from
// Go through a Python service and back.
func TestNumbersAndDates(t *testing.T) {
	env := stack.NewEnv(t, bins)
	proc := stack.Start(t, bins, env)
	py := startPyClient(t, env.VHost)

	pyVHost := stack.Env{VHost: stack.NewVHost(t)}
	svc := startPython(t, pyVHost.VHost, "service.py", "--rpc", "py.echo=echo", "--rpc", "py.types=types", "--encoder", "transaction")
	if err := svc.ready(30 * time.Second); err != nil {
		t.Fatal(err)
	}

	// Python -> Go (dictionary echoes its object plus "bar") -> Python.
	for _, kind := range []string{"lib", "pika"} {
		desc := map[string]string{"lib": "the library's JSONGzipRPC", "pika": "the seed's pika helper"}[kind]
		check(t, fmt.Sprintf("Python (%s) -> Go -> Python: 2^53+1, int64 limits, 10^30", kind), func() error {
			data := map[string]json.Number{}
			for k, v := range exactIntegers {
				data[k] = json.Number(v)
			}
			e, err := callService(py, proc, kind, true, desc, "dictionary", data)
			if err != nil {
				return err
			}
			return sameNumbers(e, exactIntegers, true)
		})
		check(t, fmt.Sprintf("Python (%s) -> Go -> Python: dates and datetimes", kind), func() error {
			data := map[string]string{"date": "2024-02-29", "datetime": "2024-02-29T23:59:59.123456+00:00", "naive": "2024-02-29T23:59:59"}
			e, err := callService(py, proc, kind, true, desc, "dictionary", data)
			if err != nil {
				return err
			}
			return wantData(e, nil)(`{"date":"2024-02-29","datetime":"2024-02-29T23:59:59.123456+00:00","naive":"2024-02-29T23:59:59","bar":"baz"}`)
		})
	}
	check(t, "Python (pika, exact JSON text) -> Go -> Python: decimals", func() error {
		var parts []string
		for k, v := range exactDecimals {
			parts = append(parts, fmt.Sprintf("%q: %s", k, v))
		}
		body := `{"data": {` + strings.Join(parts, ", ") + `}}`
		a, err := py.do(map[string]any{"op": "call", "client": "pika", "route": "dictionary", "body": body, "timeout": 5}, 20*time.Second)
		if err != nil {
			return err
		}
		if !a.OK {
			return fmt.Errorf("the seed's pika helper raised %s", a.Exception)
		}
		e, err := parseEnvelope([]byte(a.Raw)) // the reply's text: Python's json would make floats of it
		if err != nil {
			return err
		}
		return sameNumbers(e, exactDecimals, false)
	})

	// Go -> Python (echo, types) -> Go.
	at := time.Date(2024, 2, 29, 23, 59, 59, 123456789, time.FixedZone("", 5*3600+1800))
	sent := roundTrip{
		Int53: 1<<53 + 1, I64Max: 1<<63 - 1, I64Min: -1 << 63, Big: "1000000000000000000000000000000",
		Amount: decimal.RequireFromString("12345678901234567890.12"), Day: db.Date{Year: 2024, Month: time.February, Day: 29},
		At: db.NewTimestamp(at),
	}
	client := pyVHost.Client(t)
	seed := stack.NewSeedClient(t, pyVHost)
	goCallers := []struct {
		name string
		call func(route string, req, resp any) error
	}{
		{"Go client", func(route string, req, resp any) error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return client.Call(ctx, route, req, resp)
		}},
		{"seed-style gzip client", func(route string, req, resp any) error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			r, err := seed.Call(ctx, route, req)
			if err != nil {
				return err
			}
			if !r.Success {
				return fmt.Errorf("%s answered a failure: %+v", route, r.Error)
			}
			return json.Unmarshal(r.Data, resp)
		}},
	}
	for _, gc := range goCallers {
		check(t, gc.name+" -> Python -> Go: int64 limits, 2^53+1, 10^30, Decimal, Date, Timestamp", func() error {
			var back roundTrip
			if err := gc.call("py.echo", sent, &back); err != nil {
				return undecodedBy(svc, err)
			}
			var diffs []string
			if back.Int53 != sent.Int53 || back.I64Max != sent.I64Max || back.I64Min != sent.I64Min || !sameNumber(string(back.Big), string(sent.Big)) {
				diffs = append(diffs, fmt.Sprintf("integers %d %d %d %s", back.Int53, back.I64Max, back.I64Min, back.Big))
			}
			if !back.Amount.Equal(sent.Amount) {
				diffs = append(diffs, "amount "+back.Amount.String())
			}
			if back.Day != sent.Day || !back.At.Equal(sent.At.Time) || back.Maybe != nil {
				diffs = append(diffs, fmt.Sprintf("day %v at %v maybe %v", back.Day, back.At, back.Maybe))
			}
			if len(diffs) > 0 {
				return fmt.Errorf("came back changed: %s", strings.Join(diffs, "; "))
			}
			return nil
		})
		check(t, gc.name+" -> Python date/datetime/Decimal, as transaction-service answers -> Go", func() error {
			req := map[string]any{"date": sent.Day, "timestamp": sent.At, "amount": decimal.RequireFromString("12345.67")}
			var back struct {
				Date       db.Date      `json:"date"`
				Timestamp  db.Timestamp `json:"timestamp"`
				Amount     db.Decimal   `json:"amount"`
				AmountType string       `json:"amount_type"`
				Py39       bool         `json:"timestamp_py39"`
			}
			if err := gc.call("py.types", req, &back); err != nil {
				return undecodedBy(svc, err)
			}
			var diffs []string
			if back.Date != sent.Day || !back.Timestamp.Equal(sent.At.Time) || back.Amount.String() != "12345.67" {
				diffs = append(diffs, fmt.Sprintf("Python's date.isoformat %v, datetime.isoformat %v, float(Decimal) %v read back differently", back.Date, back.Timestamp, back.Amount))
			}
			if !back.Py39 {
				diffs = append(diffs, fmt.Sprintf("Python 3.9's datetime.fromisoformat cannot read %q", sent.At))
			}
			if back.AmountType != "str" {
				diffs = append(diffs, "the Decimal reached Python as a JSON "+back.AmountType+", not a string")
			}
			if len(diffs) > 0 {
				return fmt.Errorf("%s", strings.Join(diffs, "; "))
			}
			return nil
		})
	}
}

// sameNumbers checks that the success data of e holds each of want's
// numbers with its exact value; with integers, as the same integer literal
// too (1e+30 has the value of 10^30 to Go's reader, but Python reads a float).
func sameNumbers(e envelope, want map[string]string, integers bool) error {
	data, err := wantSuccess(e)
	if err != nil {
		return err
	}
	var got map[string]json.RawMessage
	if err := json.Unmarshal(data, &got); err != nil {
		return fmt.Errorf("reply data %s is not an object", tail(string(data), 100))
	}
	var diffs []string
	for k, v := range want {
		if !sameNumber(string(got[k]), v) || integers && string(got[k]) != v {
			diffs = append(diffs, fmt.Sprintf("%s sent %s came back %s", k, v, got[k]))
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("numbers changed on the way: %s", strings.Join(slices.Sorted(slices.Values(diffs)), "; "))
	}
	return nil
}

// undecodedBy adds to err why the Python service did not answer, when it
// could not decode the request.
func undecodedBy(svc *pyProcess, err error) error {
	if fails := svc.eventsOf("decode_failed", ""); len(fails) > 0 {
		return fmt.Errorf("%w; the Python library could not decode the request: %s", err, fails[len(fails)-1].Error)
	}
	return err
}
