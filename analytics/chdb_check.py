"""Runs Switchboard's ClickHouse SQL on current ClickHouse (chdb, in process).

Reads JSON on stdin: {"files": [[name, sql], ...], "queries": [[name, sql], ...]}. Applies every
statement of every file (comment lines dropped, split on ';', as analytics/src/schema.rs does),
inserts a few events shaped like the real ones (twice: a replay must not count twice), runs every
query and prints one JSON line per query. Any error exits non-zero with the statement.
"""
import json
import sys
import time

from chdb import session as chs


def statements(sql):
    body = "\n".join(l for l in sql.splitlines() if not l.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def main():
    spec = json.load(sys.stdin)
    s = chs.Session()
    s.query("CREATE DATABASE IF NOT EXISTS sb")
    s.query("USE sb")
    for name, sql in spec["files"]:
        for stmt in statements(sql):
            try:
                s.query(stmt)
            except Exception as e:  # noqa: BLE001 - report which statement failed
                print(f"{name}: {e}\n{stmt}", file=sys.stderr)
                sys.exit(1)
    now = int(time.time())
    rows = []
    for i, (channel, category) in enumerate([("chat", "delivery"), ("email", "refund")]):
        t = f"t{i}"
        ev = lambda n, schema, kind, dt, payload: (f"{t}-{n}", schema, 1, "", t, t, kind, now - 3600 + dt, (now - 3600 + dt) * 1000, json.dumps(payload, separators=(",", ":")))
        rows += [
            ev(0, "ticket_event", "created", 0, {"ticket_id": t, "kind": "created", "channel": channel, "category": category, "priority": "high"}),
            ev(1, "ticket_event", "message_added", 60, {"ticket_id": t, "kind": "message_added", "direction": "outbound", "channel": channel}),
            ev(2, "ticket_event", "resolved", 600, {"ticket_id": t, "kind": "resolved"}),
            ev(3, "sla_event", "met", 60, {"ticket_id": t, "kind": "met", "metric": "first_response"}),
            ev(4, "enrichment_result", "enrichment_result", 1, {"ticket_id": t, "category": category, "sentiment": {"label": "negative", "score": -0.5}}),
        ]
    values = ",".join(
        "(" + ",".join(json.dumps(v) if isinstance(v, (int, float)) else "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'" for v in r) + ", now())"
        for r in rows
    )
    cols = "(event_id, schema, version, topic, key, ticket_id, kind, occurred_at, occurred_ms, payload, ingested_at)"
    for _ in range(2):  # the second insert is a replay
        s.query(f"INSERT INTO events {cols} VALUES {values}")
    for name, sql in spec["queries"]:
        try:
            out = s.query(sql, "JSONCompact")
        except Exception as e:  # noqa: BLE001
            print(f"query {name}: {e}\n{sql}", file=sys.stderr)
            sys.exit(1)
        print(json.dumps({"name": name, "data": json.loads(str(out))["data"]}))
    print(json.dumps({"name": "version", "data": json.loads(str(s.query("SELECT version()", "JSONCompact")))["data"]}))


if __name__ == "__main__":
    main()
