"""A small OpenAI-compatible images server on loopback, answering in each form servers use.

`POST /v1/images/generations` answers the scenario named by the prompt: `b64_json` of a PNG,
JPEG, WebP or SVG (or of garbage), a `data:` URL, or a `url` to a file this server also serves
under `/files/` — signed-looking (`?sig=…`), failing once, missing, oversized, or cut short.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, urlsplit

from PIL import Image

SIGNATURE = "sig=SECRET-SIGNATURE-0123456789"
SVG_SIZED = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="120" height="80px">'
    b'<rect width="120" height="80"/></svg>'
)
SVG_VIEWBOX = b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 300 200"><circle r="5"/></svg>'
SVG_UNSIZED = b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="5"/></svg>'


def raster(fmt: str, width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 20)).save(out, format=fmt)
    return out.getvalue()


PNG, JPEG, WEBP, GIF = (
    raster("PNG", 64, 48),
    raster("JPEG", 40, 30),
    raster("WEBP", 20, 10),
    raster("GIF", 16, 12),
)
#: files served under /files/NAME: bytes, and how the first request for each goes
FILES = {"fox.png": PNG, "flaky.gif": GIF, "cut.jpg": JPEG, "big.png": PNG * 400}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class FakeImages:
    """The server's state: its URL, and how many times each path was asked for."""

    url: str = ""
    hits: Counter = field(default_factory=Counter)

    def item(self, scenario: str) -> dict:
        """The `data` entry the images answer carries for `scenario`."""
        b64_items = {
            "b64-png": PNG,
            "b64-jpeg": JPEG,
            "b64-webp": WEBP,
            "b64-svg": SVG_SIZED,
            "b64-svg-viewbox": SVG_VIEWBOX,
            "b64-svg-unsized": SVG_UNSIZED,
            "b64-garbage": b"this is not an image at all",
            "b64-html": b"<html><body>not an image</body></html>",
        }
        if scenario in b64_items:
            return {"b64_json": b64(b64_items[scenario])}
        if scenario == "data-base64":
            return {"url": f"data:image/png;base64,{b64(PNG)}"}
        if scenario == "data-percent":
            return {"url": "data:image/svg+xml," + quote(SVG_VIEWBOX.decode())}
        name = {
            "url-png": "fox.png",
            "url-flaky": "flaky.gif",
            "url-404": "missing.png",
            "url-big": "big.png",
            "url-big-chunked": "big.png",
            "url-cut-once": "cut.jpg",
        }[scenario]
        mode = "chunked" if scenario == "url-big-chunked" else "plain"
        return {"url": f"{self.url}/files/{name}?mode={mode}&{SIGNATURE}"}


class FakeHandler(BaseHTTPRequestHandler):
    """Answers for the `state` of the server it belongs to (set on a subclass per server)."""

    protocol_version = "HTTP/1.1"
    state: FakeImages

    def log_message(self, *_args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        answer = {"created": 1, "data": [self.state.item(body["prompt"])]}
        self._send(200, json.dumps(answer).encode(), "application/json")

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        name = parts.path.removeprefix("/files/")
        self.state.hits[name] += 1
        first = self.state.hits[name] == 1
        data = FILES.get(name)
        if data is None:
            self._send(404, b"no such file", "text/plain")
        elif name == "flaky.gif" and first:
            self._send(500, b"try again", "text/plain")
        elif name == "cut.jpg" and first:
            self._send_cut(data)
        elif "mode=chunked" in parts.query:
            self._send_chunked(data)
        else:
            self._send(200, data, "application/octet-stream")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_cut(self, data: bytes) -> None:
        """Promise the whole file, send a tenth of it, hang up."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 10])
        self.close_connection = True

    def _send_chunked(self, data: bytes) -> None:
        """No Content-Length: the size is known only by reading."""
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(data), 8192):
            chunk = data[start : start + 8192]
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


@contextmanager
def fake_images_server() -> Iterator[FakeImages]:
    """The fake on a free loopback port, shut down at the end."""
    state = FakeImages()
    handler = type("Handler", (FakeHandler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
