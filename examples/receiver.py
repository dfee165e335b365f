"""A callback receiver for trying async mode by hand: prints each POST, answers 204.

Run it beside the counter example::

    python examples/receiver.py                      # listens on 127.0.0.1:9000
    COUNTER_CALLBACK_ALLOWLIST=http://127.0.0.1:9000 python examples/counter.py

then start a job whose result is POSTed here::

    curl -X POST -H "Authorization: Bearer $TOKEN" \\
        -d '{"params": {"start": 3}, "callbackUrl": "http://127.0.0.1:9000/done"}' \\
        http://127.0.0.1:8080/run/countdown
"""

from __future__ import annotations

import contextlib
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class PrintCallback(BaseHTTPRequestHandler):
    """Print the path, the webhook headers and the body of every POST."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        webhook = {k: v for k, v in self.headers.items() if k.lower().startswith("webhook-")}
        print(f"POST {self.path} {webhook or ''}\n{body}", flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the body printed above says enough


def main() -> None:
    """Serve until Ctrl-C on the address given as the first argument (default 127.0.0.1:9000)."""
    host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9000").rpartition(":")
    server = HTTPServer((host or "127.0.0.1", int(port)), PrintCallback)
    print(f"receiving callbacks on http://{host or '127.0.0.1'}:{port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
