"""A webhook receiver for the alerting scenario: appends every POSTed body as one JSON line.

Stands in for ntfy, a chat bridge or a pager: the tests read the file to see what Alertmanager
sent. Python's standard library only (the test machine has python3, nothing else).
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LOG = Path(sys.argv[3])


class Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            record = {"path": self.path, "body": json.loads(body)}
        except ValueError:
            self.send_error(400, "body is not JSON")
            return
        with LOG.open("a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        self.send_response(200)
        self.end_headers()


if __name__ == "__main__":
    ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Sink).serve_forever()
