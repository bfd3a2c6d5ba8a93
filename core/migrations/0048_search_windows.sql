-- Search's recent window (issue 15, three common words at 10M tickets): a partial `rum` index
-- over the newest messages, built at run time by the serving role's window job
-- (`serving::search_window`) because its cutoff moves. A row here names a valid window; search
-- reads the newest row, queries the window's index first and the whole-table index only for
-- what the window lacks.
CREATE TABLE search_windows (
    index_name text PRIMARY KEY,
    since timestamptz NOT NULL,
    rows bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
