-- transaction: money that moved on a bank account, in the shape of
-- cheese-drawer's Python transaction-service (the fleet's measure of what a
-- port needs): numeric money, dates, an instant, the seed's key name _id.
-- plaid_transaction_id is unique, so a re-import upserts on it.
CREATE TABLE "transaction" (
    "_id" uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    "amount" numeric(11, 2) NOT NULL,
    "pending" boolean NOT NULL,
    "payee" varchar(255) NOT NULL,
    "date_authorized" date NOT NULL,
    "date" date NOT NULL,
    "spent_from_id" uuid,
    "account_id" uuid NOT NULL,
    "category" varchar(63)[] NOT NULL,
    "location" jsonb NOT NULL,
    "plaid_transaction_id" varchar(127) NOT NULL UNIQUE,
    "created_at" timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX transaction_account_date_idx ON "transaction" ("account_id", "date");
