package db

import "context"

type txKey struct{}

// WithTx returns a copy of ctx that carries tx, for code that runs inside a
// transaction it did not open: a queue handler behind the idempotent inbox
// (package outbox) gets its transaction this way. Only pass such a ctx to
// calls that run before the transaction function returns.
func WithTx(ctx context.Context, tx *Tx) context.Context {
	return context.WithValue(ctx, txKey{}, tx)
}

// TxFrom returns the transaction ctx carries ([WithTx]), or nil and false.
func TxFrom(ctx context.Context) (*Tx, bool) {
	tx, ok := ctx.Value(txKey{}).(*Tx)
	return tx, ok && tx != nil
}
