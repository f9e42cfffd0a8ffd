"""Real servers on 127.0.0.1 for remote-source tests: HTTP with byte ranges, and S3 (moto)."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

#: GDAL settings that keep failing remote reads quick in tests (and no extension filter:
#: CPL_VSIL_CURL_ALLOWED_EXTENSIONS stays unset)
GDAL_TEST_ENV = {
    "GDAL_HTTP_MAX_RETRY": "0",
    "GDAL_HTTP_TIMEOUT": "2",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
}


class RangeServer:
    """Serves a folder over HTTP/1.1 on 127.0.0.1, honouring Range requests.

    ``bytes_served`` counts body bytes sent per file name; ``status`` maps a path to a status
    to answer (403, 404); ``slow`` paths hang longer than any test timeout.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.bytes_served: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.slow: set[str] = set()
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                name = self.path.split("?")[0].lstrip("/")
                if name in server.slow:
                    time.sleep(8)
                if name in server.status:
                    self.send_response(server.status[name])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = server.root / name
                if not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                size = len(data)
                start, end = 0, size - 1
                ranged = self.headers.get("Range")
                if ranged and ranged.startswith("bytes="):
                    first, _, last = ranged[6:].split(",")[0].partition("-")
                    start = int(first) if first else max(0, size - int(last))
                    end = min(int(last), size - 1) if (last and first) else size - 1
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                chunk = data[start : end + 1]
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if body:
                    with server.lock:
                        server.bytes_served[name] = server.bytes_served.get(name, 0) + len(chunk)
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        self.wfile.write(chunk)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def range_server(root: Path) -> Iterator[RangeServer]:
    server = RangeServer(root)
    try:
        yield server
    finally:
        server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 and a random port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_env(endpoint: str, **extra: str) -> dict[str, str]:
    """The environment a user sets for a local S3 server (credentials are moto's any-key)."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env.update(extra)
    return env


def cli_env(**extra: str) -> dict[str, str]:
    """os.environ for a CLI subprocess: test GDAL settings, no AWS settings of the host."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(GDAL_TEST_ENV)
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env.update(extra)
    return env
