-- Custom fields (issue 15): defined by admins, set on tickets by agents, rules and the API,
-- validated on every write by `tickets::fields`. A removed field is deactivated, so the values
-- tickets already hold stay readable in history.
CREATE TABLE fields (
    id uuid PRIMARY KEY,
    key text NOT NULL UNIQUE,
    name text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('text', 'number', 'dropdown', 'multi_select', 'date', 'checkbox')),
    options text[] NOT NULL DEFAULT '{}',
    required_to_resolve boolean NOT NULL DEFAULT false,
    position integer NOT NULL DEFAULT 0,
    active boolean NOT NULL DEFAULT true,
    version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

ALTER TABLE tickets ADD COLUMN fields jsonb NOT NULL DEFAULT '{}';
CREATE INDEX tickets_fields ON tickets USING gin (fields jsonb_path_ops);
