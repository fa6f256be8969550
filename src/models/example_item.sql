-- example_item: items the service looks up by their "string" field
-- (ExampleItems.AllByString), hence the index on it.
CREATE TABLE example_item (
    "_id" uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    "string" varchar(255) NOT NULL,
    "integer" smallint NOT NULL DEFAULT 0,
    "json" jsonb
);

CREATE INDEX example_item_string_idx ON example_item ("string");
