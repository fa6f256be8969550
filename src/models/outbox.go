package models

import (
	"encoding/json"
	"time"
)

// OutboxMessage is a row of the table outbox (outbox.sql): a message
// recorded inside a transaction, published by the relay after commit and
// then deleted. Package outbox writes and reads these rows.
type OutboxMessage struct {
	ID         int64           `db:"id,key" json:"id"`
	Exchange   string          `db:"exchange" json:"exchange"` // "" is the default exchange
	RoutingKey string          `db:"routing_key" json:"routing_key"`
	MessageID  string          `db:"message_id" json:"message_id"`
	Headers    json.RawMessage `db:"headers" json:"headers"` // a JSON object, or nil
	Data       json.RawMessage `db:"data" json:"data"`       // the message's "data"
	CreatedAt  time.Time       `db:"created_at,default" json:"created_at"`
	// Failed publishes: how many, the last one's error, and when the relay
	// tries again (backoff from 1 s, doubling, at most 5 minutes).
	Attempts     int       `db:"attempts" json:"attempts"`
	LastError    *string   `db:"last_error" json:"last_error"`
	PublishAfter time.Time `db:"publish_after,default" json:"publish_after"`
}
