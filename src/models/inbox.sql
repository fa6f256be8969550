-- inbox: the messages an idempotent queue route (outbox.Inbox) has handled,
-- one row per route and message id, written in the same transaction as the
-- handler's own writes. A redelivered message finds its row and is acked
-- without running the handler again. Rows older than the retention
-- (INBOX_RETENTION) are pruned on a schedule, hence the index.
CREATE TABLE inbox (
    "route" varchar(255) NOT NULL,
    "message_id" varchar(255) NOT NULL,
    "handled_at" timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ("route", "message_id")
);

CREATE INDEX inbox_handled_at_idx ON inbox ("handled_at");
