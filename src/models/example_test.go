package models_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"time"

	"example.com/service/src/db"
	"example.com/service/src/models"
	"example.com/service/src/testenv"
)

// exampleClient opens a fresh database holding the models' schema; the
// returned function closes the client and drops the database.
func exampleClient() (*db.Client, func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name, drop, err := testenv.ScratchDatabase("modelsexample_")
	if err != nil {
		cancel()
		log.Fatalf("models example: %v", err) //nolint:gocritic // cancel ran
	}
	c, err := db.Open(ctx, db.Config{URL: testenv.PostgresURL(name)})
	if err == nil {
		err = loadSchema(ctx, c)
	}
	if err != nil {
		_ = drop()
		cancel()
		log.Fatalf("models example: %v", err) //nolint:gocritic // cancel ran; one line, not a panic's goroutine dump
	}
	return c, func() {
		_ = c.Close()
		_ = drop()
	}
}

func ExampleExampleItems_AllByString() {
	client, done := exampleClient()
	defer done()
	ctx := context.Background()

	items := models.NewExampleItems(client)
	for _, s := range []string{"apple", "pear", "apple"} {
		if _, err := items.Create(ctx, models.ExampleItem{String: s, JSON: json.RawMessage(`{"ripe": true}`)}); err != nil {
			panic(err)
		}
	}
	apples, err := items.AllByString(ctx, "apple")
	if err != nil {
		panic(err)
	}
	fmt.Println(len(apples), apples[0].String, string(apples[0].JSON))
	// Output: 2 apple {"ripe": true}
}
