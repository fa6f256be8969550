-- simple: the seed's minimal example table. Every column but the key is
-- nullable; the Go side (Simple) uses pointer fields and a nil slice for NULL.
CREATE TABLE simple (
    "id" uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    "string" varchar(255),
    "integer" smallint,
    "array" varchar(255)[]
);
