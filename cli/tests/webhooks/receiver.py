"""A webhook receiver for the outbound-webhook test: verifies every delivery with the Standard
Webhooks reference package (PyPI `standardwebhooks`), not with Switchboard's code.

usage: receiver.py PORT STATE_DIR

STATE_DIR/secrets.json maps a path to the secrets to try (read at every request); each request
is appended to STATE_DIR/log.jsonl with the secrets (their indexes) that verified it. Paths:
/ok/<name> answers 204; /flaky/<name> answers 503 to its first two requests per webhook-id;
/down/<name> answers 500 until STATE_DIR/up-<name> exists; /slow/<name> waits 6 s, then 204.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

PORT, STATE = int(sys.argv[1]), sys.argv[2]
LOCK = threading.Lock()
SEEN = {}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ready")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode("utf-8")
        headers = {k.lower(): v for k, v in self.headers.items()}
        with open(os.path.join(STATE, "secrets.json")) as f:
            secrets = json.load(f).get(self.path, [])
        verified, errors = [], []
        for i, s in enumerate(secrets):
            try:
                Webhook(s).verify(body, headers)
                verified.append(i)
            except Exception as e:  # the reason goes to the log
                errors.append(f"{type(e).__name__}: {e}")
        kind, _, name = self.path.strip("/").partition("/")
        msg_id = headers.get("webhook-id", "")
        with LOCK:
            n = SEEN.get((self.path, msg_id), 0) + 1
            SEEN[(self.path, msg_id)] = n
        status = 204
        if kind == "flaky" and n <= 2:
            status = 503
        elif kind == "down" and not os.path.exists(os.path.join(STATE, f"up-{name}")):
            status = 500
        elif kind == "slow":
            time.sleep(6)
        try:
            event_type = json.loads(body).get("type")
        except ValueError:
            event_type = None
        record = {
            "path": self.path,
            "id": msg_id,
            "type": event_type,
            "status": status,
            "verified": verified,
            "errors": errors,
            "signatures": len(headers.get("webhook-signature", "").split(" ")),
            "at": time.time(),
            "body": body,
        }
        with LOCK:
            with open(os.path.join(STATE, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
        self.send_response(status)
        self.end_headers()
        if status != 204:
            self.wfile.write(b"try again later \x01\xff")


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
