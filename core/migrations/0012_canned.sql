-- Canned replies: texts agents insert and adapt. `{{name}}` and `{{ticket}}` are filled in by
-- the console with the customer's name and the ticket number.
CREATE TABLE canned_replies (
    id          uuid PRIMARY KEY,
    title       text NOT NULL UNIQUE,
    body        text NOT NULL,
    tags        text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
