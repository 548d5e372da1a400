"""The inference server: one ``grpc.aio`` server with every service, plus Prometheus.

Lifecycle: :meth:`InferenceServer.start` listens at once with health NOT_SERVING, loads the
models in a worker thread, then reports SERVING. With hot reload on (the default) a
:class:`~a2f_inference.server.reload.ModelReloader` then keeps watching the volume and swaps
new versions in for new streams; every model also has its own health service name
(``a2f.model.<name>``). :meth:`InferenceServer.stop` (SIGTERM) turns health NOT_SERVING,
refuses new streams, lets open streams finish within the grace period, then releases the
models. Both are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from prometheus_client import CollectorRegistry, start_http_server

from a2f_inference.proto_gen.nvidia_audio2face_3d import audio2face_pb2_grpc
from a2f_inference.protocol import LIVENESS_SERVICE
from a2f_inference.server.config import ServerConfig
from a2f_inference.server.limits import server_options
from a2f_inference.server.listeners import (
    ADMIN_SERVICES,
    CONTROLLER_SERVICE,
    add_admin_services,
    add_health_and_reflection,
    describe_security,
    listen,
    tls_certificates,
)
from a2f_inference.server.metrics import InferenceMetrics
from a2f_inference.server.modes import as_engine_policy, needs_built_engine
from a2f_inference.server.registry import ModelRegistry, Served
from a2f_inference.server.reload import ModelReloader, ReloadStatus, health_service_name
from a2f_inference.server.servicers import A2FControllerServicer

log = logging.getLogger(__name__)

SERVICE_NAMES = (CONTROLLER_SERVICE, *ADMIN_SERVICES)
# Responses are one frame each; the receive cap comes from the limits (server_options).
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class InferenceServer:
    """Runs on the current asyncio loop; construct, ``await start()``, ``await stop()``."""

    def __init__(self, config: ServerConfig, metrics_registry: CollectorRegistry | None = None,
                 registry: ModelRegistry | None = None) -> None:
        self.config = config
        self.metrics = InferenceMetrics(metrics_registry)
        self.registry = registry or ModelRegistry(config, self.metrics)
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self._server: grpc.aio.Server | None = None
        self.admin_port = 0
        self._admin_server: grpc.aio.Server | None = None
        self._metrics_http: Any = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._health_models: set[str] = set()
        self.reloader: ModelReloader[Served] | None = None
        if config.hot_reload != "off":
            self.reloader = ModelReloader(
                config.models_root, self.registry, self.registry.load_version,
                check_engine=self.registry.engines,
                require_built_engine=needs_built_engine(as_engine_policy(config.engine_policy)),
                poll_interval_s=config.reload_poll_s, debounce_s=config.reload_debounce_s,
                use_inotify=config.hot_reload == "inotify", metrics=self.metrics,
                on_change=self._model_changed)
        self.metrics.watch_versions(self._version_rows)

    async def start(self, load_models: bool = True) -> None:
        certs = tls_certificates(self.config, self.metrics)
        server = grpc.aio.server(options=[
            *server_options(self.config),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ])
        audio2face_pb2_grpc.add_A2FControllerServiceServicer_to_server(
            A2FControllerServicer(self.registry, self.config, self.metrics), server)
        admin_here = not self.config.admin_address
        if admin_here:
            add_admin_services(server, self.registry, self.config, self._reload_status())
        add_health_and_reflection(server, self.health, SERVICE_NAMES, with_reflection=admin_here)
        address = f"{self.config.host}:{self.config.port}"
        self.port = listen(server, address, certs)
        if not admin_here:
            await self._start_admin_listener()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await server.start()
        self._server = server
        log.info("listening on %s:%d (gRPC, %s)", self.config.host, self.port,
                 describe_security(certs))
        if self.config.metrics_port >= 0:
            http, _thread = start_http_server(self.config.metrics_port, addr=self.config.host,
                                              registry=self.metrics.registry)
            self._metrics_http = http
            self.metrics_port = int(http.server_port)
            log.info("Prometheus metrics on %s:%d/metrics", self.config.host, self.metrics_port)
        self._loop = asyncio.get_running_loop()
        if load_models:
            if self.reloader is not None:
                await asyncio.to_thread(self._start_reloader)
            else:
                await asyncio.to_thread(self.registry.load_all)
        await self.refresh_health()

    def _reload_status(self) -> Callable[[], Mapping[str, ReloadStatus]] | None:
        return self.reloader.status if self.reloader is not None else None

    async def _start_admin_listener(self) -> None:
        """``ModelAdmin``, ``GetConfigs``, reflection and health on ``admin_address``
        (plaintext: see :mod:`a2f_inference.server.listeners`)."""
        admin = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        add_admin_services(admin, self.registry, self.config, self._reload_status())
        add_health_and_reflection(admin, self.health, ADMIN_SERVICES, with_reflection=True)
        self.admin_port = listen(admin, self.config.admin_address, None)
        await admin.start()
        self._admin_server = admin
        log.info("admin listener on %s:%d (ModelAdmin, GetConfigs, reflection, health; "
                 "plaintext)", self.config.admin_address.rpartition(":")[0], self.admin_port)

    async def refresh_health(self) -> None:
        """SERVING while the default model is loaded (and not shutting down), else NOT_SERVING.

        Call again after the registry changed (hot reload)."""
        if self._stopping:
            return
        names = self.registry.names()
        known = set(self.reloader.status()) if self.reloader is not None else set()
        # per model: a2f.model.<name>; NOT_SERVING for a model found but not served (the
        # reason is in ModelAdmin and the log)
        self._health_models |= known
        for name in set(names) | self._health_models:
            await self.health.set(health_service_name(name),
                                  health_pb2.HealthCheckResponse.SERVING if name in names
                                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        self._health_models |= set(names)
        if self.config.default_model in names:
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info("serving models %s (default %s)", names, self.config.default_model)
        else:
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            log.error("not ready: the default model %r is not loaded (loaded: %s); check "
                      "A2F_MODEL_PATH and the models root %s", self.config.default_model,
                      names or "none", self.config.models_root)

    async def _set_health(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _not_ready_but_alive(self) -> None:
        """Draining: every service name NOT_SERVING except liveness (the process still
        answers; a liveness failure would restart the container mid-drain)."""
        for name in ("", *SERVICE_NAMES, *(health_service_name(m) for m in self._health_models)):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def _start_reloader(self) -> None:
        """Watch the volume; return once the first pass loaded (or gave up on) every model."""
        assert self.reloader is not None
        self.reloader.start()
        self.reloader.wait_idle(timeout_s=24 * 3600.0)

    def _model_changed(self, name: str, serving: bool) -> None:
        """Reloader thread: a model started or stopped being served."""
        loop = self._loop
        if loop is not None and not loop.is_closed() and not self._stopping:
            asyncio.run_coroutine_threadsafe(self.refresh_health(), loop)

    def _version_rows(self) -> list[tuple[str, str, str, int]]:
        """(model, version, state, open streams) of every version in memory or loading."""
        rows = []
        for st in self.registry.states():
            if st.serving is not None:
                rows.append((st.name, st.serving.version, "serving", st.serving.open_streams))
            rows.extend((st.name, d.version, "draining", d.open_streams) for d in st.draining)
        if self.reloader is not None:
            rows.extend((name, rs.loading_version, "loading", 0)
                        for name, rs in self.reloader.status().items() if rs.loading_version)
        return rows

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, no new streams, open streams get ``grace_s``, then everything stops."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.config.grace_s if grace_s is None else grace_s
        try:
            await self._not_ready_but_alive()
            self.registry.stop_accepting()
            if self.reloader is not None:
                await asyncio.to_thread(self.reloader.stop)
            log.info("shutting down: %d open stream(s), grace %.1fs",
                     self.registry.open_streams, grace)
            if self._admin_server is not None:
                await self._admin_server.stop(0)
            if self._server is not None:
                await self._server.stop(grace)
        finally:
            await asyncio.to_thread(self.registry.close)
            if self._metrics_http is not None:
                self._metrics_http.shutdown()
                self._metrics_http.server_close()
            log.info("stopped")
            self._stopped.set()

    async def wait_closed(self) -> None:
        await self._stopped.wait()


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; the process exit code."""
    server = InferenceServer(config)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    await server.start()
    await stop_requested.wait()
    log.info("signal received: draining")
    await server.stop()
    return 0


class BackgroundServer:
    """The server on its own thread and loop: for benchmarks, the demo and tests."""

    def __init__(self, config: ServerConfig,
                 metrics_registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self._metrics_registry = metrics_registry or CollectorRegistry()
        self.server: InferenceServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="a2f-server",
                                        daemon=True)

    def start(self) -> InferenceServer:
        self._thread.start()
        self.server = InferenceServer(self.config, self._metrics_registry)
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result()
        return self.server

    @property
    def address(self) -> str:
        assert self.server is not None
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host
        return f"{host}:{self.server.port}"

    def stop(self, grace_s: float = 1.0) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace_s), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
