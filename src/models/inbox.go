package models

import "time"

// InboxEntry is a row of the table inbox (inbox.sql): the message
// MessageID was handled on Route at HandledAt. Package outbox writes and
// prunes these rows; the key is (route, message_id).
type InboxEntry struct {
	Route     string    `db:"route" json:"route"`
	MessageID string    `db:"message_id" json:"message_id"`
	HandledAt time.Time `db:"handled_at,default" json:"handled_at"`
}
