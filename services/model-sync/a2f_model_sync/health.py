"""HTTP endpoints of the daemon: ``/ready`` (startupProbe), ``/healthz``, ``/metrics``."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)


class HealthServer:
    """``/ready`` answers 200 once ``ready`` is set (the volume holds a complete version of every
    model to serve: :mod:`a2f_model_sync.readiness`), else 503.

    ``/healthz`` answers 200 while the process runs; ``/metrics`` serves ``registry``.
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        self.ready = threading.Event()
        ready, reg = self.ready, registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(reg), CONTENT_TYPE_LATEST)
                elif path == "/ready":
                    ok = ready.is_set()
                    self._send(200 if ok else 503, b"ready\n" if ok else
                               b"not ready: the volume lacks a complete model (see the log)\n")
                elif path in ("/healthz", "/live"):
                    self._send(200, b"ok\n")
                else:
                    self._send(404, b"not found: try /ready, /healthz or /metrics\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("health: %s", format % args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            name="a2f-health", daemon=True)
            self._thread.start()
            logger.info("health endpoints on port %d: /ready /healthz /metrics", self.port)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
