"""Fixtures of the server tests: small stand-in models and a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from a2f_inference.audio import synthetic_speech
from a2f_inference.client import (
    StreamResult,
    build_requests,
    call_metadata,
    stream_audio,
)
from a2f_inference.proto_gen.nvidia_audio2face_3d import audio2face_pb2_grpc
from a2f_inference.server.app import BackgroundServer, InferenceServer
from a2f_inference.server.config import ServerConfig

REGRESSION = "a23"
DIFFUSION = "multi-diffusion"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def standin_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models root with a small regression (``a23``) and a small diffusion stand-in."""
    from a2f_standin.generate import generate

    root = tmp_path_factory.mktemp("models")
    generate("regression", root / REGRESSION, size="small")
    generate("diffusion", root / DIFFUSION, size="small")
    return root


def server_config(root: Path, **overrides: Any) -> ServerConfig:
    values: dict[str, Any] = dict(
        models_root=root, model_path=root / DIFFUSION / "model.json", host="127.0.0.1",
        port=0, metrics_port=-1, idle_timeout_s=30.0, max_clip_s=300.0, grace_s=2.0,
        ort_threads=1)
    values.update(overrides)
    return ServerConfig(**values)


class RunningServer:
    def __init__(self, bg: BackgroundServer, registry: CollectorRegistry) -> None:
        self.bg = bg
        self.metrics_registry = registry

    @property
    def address(self) -> str:
        return self.bg.address

    @property
    def server(self) -> InferenceServer:
        assert self.bg.server is not None
        return self.bg.server

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        v = self.metrics_registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v


@contextlib.contextmanager
def run_server(root: Path, **overrides: Any) -> Iterator[RunningServer]:
    reg = CollectorRegistry()
    bg = BackgroundServer(server_config(root, **overrides), reg)
    bg.start()
    try:
        yield RunningServer(bg, reg)
    finally:
        bg.stop(grace_s=1.0)


@pytest.fixture(scope="module")
def server(standin_root: Path) -> Iterator[RunningServer]:
    """One server for a test module: short idle timeout and clip limit for the bad-input cases."""
    with run_server(standin_root, idle_timeout_s=1.5, max_clip_s=20.0, max_streams=16) as srv:
        yield srv


async def one_stream(address: str, seconds: float = 2.0, *, rate: int = 16000,
                     model: str | None = None, identity: str | None = None,
                     pace_s: float = 0.0, chunk_s: float = 0.5, **kw: Any) -> StreamResult:
    pcm = synthetic_speech(seconds, rate)
    async with grpc.aio.insecure_channel(address) as ch:
        stub = audio2face_pb2_grpc.A2FControllerServiceStub(ch)
        return await stream_audio(stub, build_requests(pcm, rate, chunk_s=chunk_s, **kw),
                                  metadata=call_metadata(model, identity), pace_s=pace_s,
                                  timeout_s=60)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
