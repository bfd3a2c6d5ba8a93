-- The knowledge base's record. Postgres owns the articles (the API writes here); every
-- processors instance keeps its vector index (Qdrant) in step by `revision`: each change takes
-- the next value of `kb_revision`, and a deletion is a tombstone (`deleted_at`) so the index
-- learns of it. `version` is the optimistic-concurrency counter the API checks on update.
CREATE SEQUENCE kb_revision;

CREATE TABLE kb_articles (
    id          uuid PRIMARY KEY,
    title       text NOT NULL,
    category    text,
    intent      text,
    question    text,
    body        text NOT NULL,
    source      text,
    published   boolean NOT NULL DEFAULT true,
    version     bigint NOT NULL DEFAULT 1,
    revision    bigint NOT NULL DEFAULT nextval('kb_revision'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    search      tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A') ||
        setweight(to_tsvector('english', coalesce(question, '')), 'B') ||
        setweight(to_tsvector('english', body), 'C')
    ) STORED
);

CREATE INDEX kb_articles_search ON kb_articles USING gin (search) WHERE deleted_at IS NULL;
CREATE INDEX kb_articles_revision ON kb_articles (revision);
