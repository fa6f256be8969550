-- outbox: messages a transaction recorded to publish after it commits
-- (outbox.Add). The relay (outbox.Relay) takes them oldest first with
-- FOR UPDATE SKIP LOCKED, publishes each with a publisher confirm, and
-- deletes it in the same transaction: a row exists until its message was
-- confirmed by the broker. exchange '' is the default exchange, where the
-- routing key is a queue route's name.
CREATE TABLE outbox (
    "id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "exchange" varchar(255) NOT NULL DEFAULT '',
    "routing_key" varchar(255) NOT NULL,
    "message_id" varchar(255) NOT NULL,
    "headers" jsonb,
    "data" jsonb NOT NULL,
    "created_at" timestamptz NOT NULL DEFAULT now(),
    -- A message whose publish failed (no such queue, say) waits with
    -- backoff, so it does not hold up the rows behind it.
    "attempts" integer NOT NULL DEFAULT 0,
    "last_error" text,
    "publish_after" timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX outbox_publish_after_idx ON outbox ("publish_after", "id");
