"""A real HTTP server on 127.0.0.1 with Range support and scripted faults, for the download tests."""

from __future__ import annotations

import http.server
import re
import threading


class FileServer:
    """An HTTP server on an ephemeral port serving ``files`` with Range support and scripted faults.

    ``drops``: how many of the next responses are cut after ``drop_after`` body bytes (connection closed);
    ``ignore_range``: answer every request with 200 and the whole file; ``claim_extra``: Content-Length claims
    this many bytes more than are sent. ``ranges`` records the Range header of every request (None if absent).
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.ranges: list[str | None] = []
        self.drops, self.drop_after, self.ignore_range, self.claim_extra = 0, 0, False, 0
        self.no_length = False  # send no Content-Length (the body then ends where the connection closes)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.ranges.append(self.headers.get("Range"))
                data = owner.files.get(self.path.lstrip("/"))
                if data is None or len(owner.ranges) > 20:  # a client looping on retries fails instead of hanging
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range") and not owner.ignore_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"])[1])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if not owner.no_length:
                    self.send_header("Content-Length", str(len(body) + owner.claim_extra))
                self.end_headers()
                if owner.drops > 0:
                    owner.drops -= 1
                    body = body[:owner.drop_after]
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"
