package models

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"example.com/service/src/db"
)

// Transaction is a row of the table transaction (transaction.sql), the
// record of cheese-drawer's transaction-service. In JSON, as a route
// returns it: "_id", "amount" as a decimal string ("12.5"), dates as
// "YYYY-MM-DD", "created_at" as RFC 3339; a Python caller's Decimal sent as
// a number is read exactly.
type Transaction struct {
	ID                 uuid.UUID         `db:"_id,key" json:"_id"` // zero: the database picks one
	Amount             db.Decimal        `db:"amount" json:"amount"`
	Pending            bool              `db:"pending" json:"pending"`
	Payee              string            `db:"payee" json:"payee"`
	DateAuthorized     db.Date           `db:"date_authorized" json:"date_authorized"` // when the charge was authorized
	Date               db.Date           `db:"date" json:"date"`                       // when it posted (or occurred, while pending)
	SpentFromID        *uuid.UUID        `db:"spent_from_id" json:"spent_from_id"`     // the budget item; nullable
	AccountID          uuid.UUID         `db:"account_id" json:"account_id"`
	Category           db.Array[string]  `db:"category" json:"category"`
	Location           db.JSON[Location] `db:"location" json:"location"`
	PlaidTransactionID string            `db:"plaid_transaction_id" json:"plaid_transaction_id"`
	CreatedAt          db.Timestamp      `db:"created_at,default" json:"created_at"` // zero: now()
}

// Location is where a transaction happened; every field may be missing.
type Location struct {
	Address     *string  `json:"address"`
	City        *string  `json:"city"`
	Region      *string  `json:"region"`
	PostalCode  *string  `json:"postal_code"`
	Country     *string  `json:"country"`
	Latitude    *float64 `json:"latitude"`
	Longitude   *float64 `json:"longitude"`
	StoreNumber *string  `json:"store_number"`
}

// MaxTransactionsPage is the most transactions one page holds, as in
// transaction-service (its read.all refuses a count over 50).
const MaxTransactionsPage = 50

// Transactions is the model of the table transaction: the built-in
// operations of the embedded db.Model plus the queries below.
type Transactions struct {
	*db.Model[Transaction]
}

// NewTransactions returns the model of the table transaction on c.
func NewTransactions(c *db.Client) *Transactions {
	return &Transactions{db.MustModel[Transaction](c, "transaction")}
}

// In returns the model running inside tx.
func (m *Transactions) In(tx *db.Tx) *Transactions { return &Transactions{m.Model.In(tx)} }

// Page returns count transactions (1 to MaxTransactionsPage; 0 means the
// maximum) after skipping offset, newest date first, as transaction-service's
// transaction.get does. A count over the maximum is an *db.InvalidError.
func (m *Transactions) Page(ctx context.Context, count, offset int) ([]Transaction, error) {
	if count > MaxTransactionsPage {
		return nil, &db.InvalidError{Table: m.Table(), Reason: fmt.Sprintf("count %d: at most %d transactions per page", count, MaxTransactionsPage)}
	}
	if count == 0 {
		count = MaxTransactionsPage
	}
	return m.List(ctx, db.ListOptions{OrderBy: []db.Order{db.Desc("date")}, Limit: count, Offset: offset})
}

// ForAccount returns a page of the account's transactions dated from..to
// (inclusive), oldest first.
func (m *Transactions) ForAccount(ctx context.Context, account uuid.UUID, from, to db.Date, offset int) ([]Transaction, error) {
	return m.List(ctx, db.ListOptions{
		Where:   []db.Cond{db.Eq("account_id", account), db.Ge("date", from), db.Le("date", to)},
		OrderBy: []db.Order{db.Asc("date")},
		Limit:   MaxTransactionsPage, Offset: offset,
	})
}

// Import stores transactions fetched from the bank in one statement: a new
// plaid_transaction_id is inserted, a known one updates what the bank may
// still change (amount, pending, payee, dates, category, location); the key,
// the account and the budget item assigned here are kept. It returns every
// row as stored.
func (m *Transactions) Import(ctx context.Context, ts []Transaction) ([]Transaction, error) {
	return m.Upsert(ctx, ts, db.OnConflict{
		Columns: []string{"plaid_transaction_id"},
		Update:  []string{"amount", "pending", "payee", "date_authorized", "date", "category", "location"},
	})
}
