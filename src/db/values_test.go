package db_test

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/shopspring/decimal"

	"example.com/service/src/db"
)

// entrySchema is a ledger table in the manner of cheese-drawer's
// transaction-service: the seed's key name _id, money as numeric, days as
// date, instants as timestamptz, each also nullable.
const entrySchema = `
CREATE TABLE entry (
	"_id" uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	ref varchar(64) NOT NULL UNIQUE,
	account int NOT NULL DEFAULT 0,
	amount numeric(30, 10) NOT NULL,
	fee numeric,
	day date NOT NULL,
	settled date,
	at timestamptz NOT NULL DEFAULT now(),
	seen timestamptz,
	note text
);`

type Entry struct {
	ID      uuid.UUID     `db:"_id,key" json:"_id"`
	Ref     string        `db:"ref" json:"ref"`
	Account int           `db:"account" json:"account"`
	Amount  db.Decimal    `db:"amount" json:"amount"`
	Fee     *db.Decimal   `db:"fee" json:"fee"`
	Day     db.Date       `db:"day" json:"day"`
	Settled *db.Date      `db:"settled" json:"settled"`
	At      db.Timestamp  `db:"at,default" json:"at"`
	Seen    *db.Timestamp `db:"seen" json:"seen"`
	Note    *string       `db:"note" json:"note"`
}

func dec(s string) db.Decimal { return decimal.RequireFromString(s) }

// python39ISO is what Python 3.9's datetime.fromisoformat accepts: no "Z",
// a fraction of 3 or 6 digits or none.
var python39ISO = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?([+-]\d\d:\d\d)?$`)

// JSON and Array take the driver's text or bytes; NULL and a JSON null
// scan to "no value", and a value of another type is an error naming it.
func TestScanText(t *testing.T) {
	type attrs struct{ Color string }
	for _, src := range []any{`{"Color": "red"}`, []byte(`{"Color": "red"}`)} {
		var j db.JSON[attrs]
		if err := j.Scan(src); err != nil || !j.Valid || j.V.Color != "red" {
			t.Errorf("JSON.Scan(%T) = %+v, %v; want red, valid", src, j, err)
		}
	}
	for _, src := range []any{nil, "null", []byte("null")} {
		j := db.NewJSON(attrs{Color: "stale"})
		if err := j.Scan(src); err != nil || j.Valid || j.V.Color != "" {
			t.Errorf("JSON.Scan(%#v) = %+v, %v; want the zero JSON", src, j, err)
		}
	}
	var j db.JSON[attrs]
	if err := j.Scan(42); err == nil || !strings.Contains(err.Error(), "scan json: got int from the driver") {
		t.Errorf("JSON.Scan(42): %v, want an error naming int", err)
	}
	if err := j.Scan(`{"Color": 1}`); err == nil || !strings.Contains(err.Error(), "scan json into") {
		t.Errorf("JSON.Scan of a mistyped field: %v, want an error", err)
	}

	a := db.Array[string]{"stale"}
	if err := a.Scan(`{a,"b c"}`); err != nil || len(a) != 2 || a[1] != "b c" {
		t.Errorf("Array.Scan = %q, %v; want [a, b c]", a, err)
	}
	if err := a.Scan(nil); err != nil || a != nil {
		t.Errorf("Array.Scan(nil) = %q, %v; want nil", a, err)
	}
	if err := a.Scan(3.5); err == nil || !strings.Contains(err.Error(), "scan array: got float64 from the driver") {
		t.Errorf("Array.Scan(3.5): %v, want an error naming float64", err)
	}
}

func TestDateText(t *testing.T) {
	for in, want := range map[string]db.Date{
		"2024-02-29": {2024, time.February, 29}, "0001-01-01": {1, time.January, 1}, "9999-12-31": {9999, time.December, 31},
	} {
		got, err := db.ParseDate(in)
		if err != nil || got != want || got.String() != in {
			t.Errorf("ParseDate(%q) = %v (%v), want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"2023-02-29", "2024-2-29", "29/02/2024", "2024-02-29T00:00:00Z", "", "20240229", " 2024-02-29"} {
		if _, err := db.ParseDate(bad); err == nil || !strings.Contains(err.Error(), "YYYY-MM-DD") {
			t.Errorf("ParseDate(%q): %v, want an error naming the form", bad, err)
		}
	}
	if _, err := json.Marshal(db.Date{}); err == nil {
		t.Error("the zero Date (year 0) was written as JSON; Python cannot read year 0")
	}
	if got := (db.Date{2024, time.February, 28}).AddDays(2); got != (db.Date{2024, time.March, 1}) {
		t.Errorf("2024-02-28 + 2 days = %v", got)
	}
	var d db.Date
	if err := json.Unmarshal([]byte(`null`), &d); err != nil || !d.IsZero() {
		t.Errorf("JSON null into a Date: %v, %v; want it left zero", d, err)
	}
}

func TestTimestampText(t *testing.T) {
	at := time.Date(2024, 2, 29, 23, 59, 59, 123456789, time.FixedZone("CET", 3600))
	ts := db.NewTimestamp(at)
	b, err := json.Marshal(ts)
	if err != nil || string(b) != `"2024-02-29T22:59:59.123456+00:00"` {
		t.Errorf("JSON of %v = %s, %v; want UTC with six fractional digits", at, b, err)
	}
	whole, _ := json.Marshal(db.NewTimestamp(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)))
	for _, s := range []string{string(b), string(whole)} {
		if !python39ISO.MatchString(strings.Trim(s, `"`)) {
			t.Errorf("%s is not readable by Python 3.9's datetime.fromisoformat", s)
		}
	}
	// Any RFC 3339 is read; finer digits than microseconds are dropped.
	for in, want := range map[string]string{
		`"2024-02-29T22:59:59.123456789Z"`:   "2024-02-29T22:59:59.123456+00:00",
		`"2024-02-29T23:59:59.5+01:00"`:      "2024-02-29T22:59:59.500000+00:00",
		`"2024-02-29T22:59:59+00:00"`:        "2024-02-29T22:59:59.000000+00:00",
		`"2024-02-29T22:59:59.123456+00:00"`: "2024-02-29T22:59:59.123456+00:00", // Python's isoformat()
		`"2024-03-01T04:29:59.000001+05:30"`: "2024-02-29T22:59:59.000001+00:00",
	} {
		var got db.Timestamp
		if err := json.Unmarshal([]byte(in), &got); err != nil || got.String() != want {
			t.Errorf("Timestamp from %s = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{`"2024-02-29T22:59:59"`, `"2024-02-29"`, `1709247599`, `"yesterday"`} {
		var got db.Timestamp
		if err := json.Unmarshal([]byte(bad), &got); err == nil {
			t.Errorf("Timestamp from %s = %v, want an error (no offset, or not RFC 3339)", bad, got)
		}
	}
}

func TestDecimalJSON(t *testing.T) {
	// Numbers are read from their text: nothing goes through a float.
	var v struct {
		A, B, C db.Decimal
		D       *db.Decimal
	}
	in := `{"A": 12345678901234567890.1234567890, "B": "9007199254740993", "C": 1e30, "D": null}`
	if err := json.Unmarshal([]byte(in), &v); err != nil {
		t.Fatal(err)
	}
	if v.A.String() != "12345678901234567890.123456789" || v.B.String() != "9007199254740993" ||
		v.C.String() != "1000000000000000000000000000000" || v.D != nil {
		t.Errorf("decoded %v %v %v %v", v.A, v.B, v.C, v.D)
	}
	out, _ := json.Marshal(v)
	if want := `{"A":"12345678901234567890.123456789","B":"9007199254740993","C":"1000000000000000000000000000000","D":null}`; string(out) != want {
		t.Errorf("encoded %s, want %s", out, want)
	}
}

func TestDatesDecimalsTimestampsStored(t *testing.T) {
	c := newClient(t, entrySchema)
	ctx := context.Background()
	entries := db.MustModel[Entry](c, "entry")

	before := time.Now().Add(-time.Minute)
	e, err := entries.Create(ctx, Entry{Ref: "a", Amount: dec("12345678901234567890.1234567890"), Day: db.Date{2024, time.February, 29}})
	if err != nil {
		t.Fatal(err)
	}
	if e.ID == uuid.Nil || e.At.Before(before) || e.At.Location() != time.UTC {
		t.Errorf("create: _id %v, at %v; want the defaults filled, at in UTC", e.ID, e.At)
	}
	if e.Fee != nil || e.Settled != nil || e.Seen != nil {
		t.Errorf("create: NULL columns came back %v %v %v", e.Fee, e.Settled, e.Seen)
	}
	if n := count(t, c, "entry", `"_id" = $1 AND amount = '12345678901234567890.123456789' AND day = '2024-02-29'
		AND fee IS NULL AND settled IS NULL AND seen IS NULL`, e.ID); n != 1 {
		t.Fatal("the stored row does not hold the exact amount, the date and the NULLs")
	}

	seen := time.Date(2025, 6, 30, 12, 0, 0, 987654321, time.FixedZone("", -7*3600))
	fee := dec("0.10")
	settled := db.Date{2025, time.July, 1}
	seenTS := db.Timestamp{Time: seen}
	u, err := entries.Update(ctx, e.ID, map[string]any{"fee": &fee, "settled": &settled, "seen": &seenTS})
	if err != nil {
		t.Fatal(err)
	}
	if !u.Fee.Equal(fee) || *u.Settled != settled || !u.Seen.Equal(db.NewTimestamp(seen).Time) {
		t.Errorf("update: fee %v settled %v seen %v", u.Fee, u.Settled, u.Seen)
	}
	if n := count(t, c, "entry", `fee = 0.1 AND settled = '2025-07-01' AND seen = '2025-06-30T19:00:00.987654Z'`); n != 1 {
		t.Error("the stored row does not hold the fee, the date and the instant to the microsecond (the nanoseconds dropped)")
	}

	// Read back and through JSON: every value as it was written.
	r, err := entries.Read(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"_id":"` + e.ID.String() + `","ref":"a","account":0,"amount":"12345678901234567890.123456789","fee":"0.1",` +
		`"day":"2024-02-29","settled":"2025-07-01","at":"` + e.At.String() + `","seen":"2025-06-30T19:00:00.987654+00:00","note":null}`
	if string(b) != want {
		t.Errorf("JSON of the row:\n got %s\nwant %s", b, want)
	}
	var back Entry
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !back.Amount.Equal(r.Amount) || back.Day != r.Day || !back.At.Equal(r.At.Time) || !back.Seen.Equal(r.Seen.Time) || !back.Fee.Equal(*r.Fee) {
		t.Errorf("JSON round trip: %+v, want %+v", back, r)
	}

	// Changes that arrive as JSON, as a Python service sends them: Decimal as
	// a number, isoformat() dates and datetimes; null clears.
	changes, err := entries.Changes(map[string]json.RawMessage{
		"amount": json.RawMessage(`-0.0000000001`), "day": json.RawMessage(`"2025-01-01"`),
		"settled": json.RawMessage(`null`), "seen": json.RawMessage(`"2025-01-01T00:00:00.000001+02:00"`),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := entries.Update(ctx, e.ID, changes); err != nil {
		t.Fatal(err)
	}
	if n := count(t, c, "entry", `amount = -0.0000000001 AND day = '2025-01-01' AND settled IS NULL AND seen = '2024-12-31T22:00:00.000001Z'`); n != 1 {
		t.Error("changes from JSON were not stored as given")
	}
	for column, bad := range map[string]string{"day": `"2025-02-30"`, "seen": `"2025-01-01T00:00:00"`, "amount": `"12,50"`, "day_x": `1`} {
		_, err := entries.Changes(map[string]json.RawMessage{column: json.RawMessage(bad)})
		var ie *db.InvalidError
		if !errors.As(err, &ie) || ie.Column != column {
			t.Errorf("change %s = %s: %v, want an InvalidError naming the column", column, bad, err)
		}
	}

	// NULL into a non-pointer field is an error that says what to do.
	type strict struct {
		ID  uuid.UUID  `db:"_id,key"`
		Fee db.Decimal `db:"fee"`
		Day db.Date    `db:"settled"`
	}
	_, err = db.MustModel[strict](c, "entry").Read(ctx, e.ID)
	if err == nil || !strings.Contains(err.Error(), "*db.Date") {
		t.Errorf("NULL into db.Date: %v, want an error suggesting *db.Date", err)
	}
}
