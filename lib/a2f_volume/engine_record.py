"""The engine record beside each engine, and the one rule that says an engine may be served.

``network.trt`` / ``network.ort`` is accompanied by ``network.trt.json`` / ``network.ort.json``::

    {"format": 1, "model": "mark", "backend": "onnxruntime", "engine_file": "network.ort",
     "engine_sha256": "...", "engine_size": 123, "onnx_sha256": "...", "onnx_size": 456,
     "target_fingerprint": "0123abcd...", "target": {...every field...},
     "built_at": "2026-...Z", "build_seconds": 1.2, "verification": {...},
     "trtexec_command": "trtexec --onnx=... (TensorRT only)", "source": "build"}

``source`` says where the engine came from: ``build`` (built and verified here) or ``cache``
(downloaded from the shared engine cache in S3, then verified here exactly like a build).

An engine is valid (:func:`valid_engine`) only if all of these hold: the record parses and is
of this format; it names this backend and this engine file; the ONNX beside it has exactly the
recorded SHA-256 (content, never mtime or size); the current target has exactly the recorded
fingerprint; and the engine file has exactly the recorded size and SHA-256. The engine-builder
publishes the engine first and the record last, each by an atomic rename, so every state a
reader can observe (including after a ``kill -9``) is either the complete new pair, the
complete old pair, or a mismatched pair that this rule rejects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from a2f_volume.hashing import HashCache
from a2f_volume.layout import ModelPaths
from a2f_volume.publish import atomic_write_json, read_json

logger = logging.getLogger(__name__)

RECORD_FORMAT = 1


class TargetLike(Protocol):
    """What a target must offer (``a2f_engine.targets.Target`` does)."""

    @property
    def backend(self) -> str: ...

    @property
    def fingerprint(self) -> str: ...

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class EngineRecord:
    """Machine-readable description of one published engine."""

    model: str
    backend: str
    engine_file: str
    engine_sha256: str
    engine_size: int
    onnx_sha256: str
    onnx_size: int
    target_fingerprint: str
    target: Mapping[str, Any]
    built_at: str
    build_seconds: float
    verification: Mapping[str, Any] = field(default_factory=dict)
    trtexec_command: str = ""
    builder: str = "a2f-engine-builder"
    format: int = RECORD_FORMAT
    #: the engine runs a composed serving graph: its description (``ServingGraphInfo``
    #: JSON); empty for an engine of the unmodified network
    serving_graph: Mapping[str, Any] = field(default_factory=dict)
    source: str = "build"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = dict(self.target)
        d["verification"] = dict(self.verification)
        d["serving_graph"] = dict(self.serving_graph)
        return d

    @classmethod
    def from_json(cls, doc: Any) -> EngineRecord:
        """Parse a record; raises ValueError naming what is wrong."""
        if not isinstance(doc, Mapping):
            raise ValueError(f"record is {type(doc).__name__}, expected a JSON object")
        if doc.get("format") != RECORD_FORMAT:
            raise ValueError(f"record format {doc.get('format')!r}, expected {RECORD_FORMAT}")
        kwargs: dict[str, Any] = {}
        for name, typ in (("model", str), ("backend", str), ("engine_file", str),
                          ("engine_sha256", str), ("engine_size", int), ("onnx_sha256", str),
                          ("onnx_size", int), ("target_fingerprint", str), ("target", Mapping),
                          ("built_at", str), ("build_seconds", (int, float))):
            v = doc.get(name)
            if not isinstance(v, typ) or isinstance(v, bool):
                raise ValueError(f"record field {name!r} is {v!r}, expected {typ}")
            kwargs[name] = v
        kwargs["verification"] = dict(doc.get("verification") or {})
        kwargs["trtexec_command"] = str(doc.get("trtexec_command") or "")
        kwargs["builder"] = str(doc.get("builder") or "")
        serving = doc.get("serving_graph") or {}
        if not isinstance(serving, Mapping):
            raise ValueError(f"record field 'serving_graph' is {serving!r}, expected an object")
        kwargs["serving_graph"] = dict(serving)
        kwargs["source"] = str(doc.get("source") or "build")
        return cls(**kwargs)

    def with_model(self, model: str) -> EngineRecord:
        d = self.to_json()
        d["model"] = model
        return EngineRecord.from_json(d)


def read_record(path: str | os.PathLike[str]) -> EngineRecord:
    """Read and parse a record file (OSError / ValueError on failure)."""
    return EngineRecord.from_json(read_json(path))


def write_record(path: str | os.PathLike[str], record: EngineRecord) -> None:
    """Publish a record atomically."""
    atomic_write_json(path, record.to_json())


@dataclass(frozen=True)
class EngineCheck:
    """Outcome of :func:`check_engine`: the record when valid, else None and the reason."""

    record: EngineRecord | None
    reason: str

    @property
    def valid(self) -> bool:
        return self.record is not None


def check_engine_file(engine: Path, record_path: Path, backend: str, onnx: Path | None,
                      target: TargetLike, hash_cache: HashCache) -> EngineCheck:
    """The validity rule for any engine file and its record (folder or engine cache).

    ``onnx`` None skips the ONNX comparison (for the content-addressed cache, whose name
    already holds the ONNX hash, which the caller compares).
    """
    if not engine.is_file():
        return EngineCheck(None, f"no engine at {engine}")
    try:
        rec = read_record(record_path)
    except FileNotFoundError:
        return EngineCheck(None, f"no engine record at {record_path}")
    except (OSError, ValueError) as err:
        return EngineCheck(None, f"unreadable engine record {record_path}: {err}")
    if rec.backend != backend:
        return EngineCheck(None, f"record is for backend {rec.backend}, not {backend}")
    if rec.engine_file != engine.name:
        return EngineCheck(None, f"record names {rec.engine_file}, not {engine.name}")
    if rec.target_fingerprint != target.fingerprint:
        return EngineCheck(None, f"target changed: engine built for fingerprint "
                                 f"{rec.target_fingerprint}, this target is {target.fingerprint}")
    if onnx is not None:
        if not onnx.is_file():
            return EngineCheck(None, f"ONNX not found: {onnx}")
        try:
            onnx_sha = hash_cache.sha256(onnx)
        except OSError as err:
            return EngineCheck(None, f"cannot read {onnx}: {err}")
        if onnx_sha != rec.onnx_sha256:
            return EngineCheck(None, f"ONNX bytes changed: {onnx} has sha256 {onnx_sha[:12]}, "
                                     f"engine built from {rec.onnx_sha256[:12]}")
    try:
        size = engine.stat().st_size
        if size != rec.engine_size:
            return EngineCheck(None, f"engine {engine} has {size} bytes, "
                                     f"record says {rec.engine_size}")
        eng_sha = hash_cache.sha256(engine)
    except OSError as err:
        return EngineCheck(None, f"cannot read engine {engine}: {err}")
    if eng_sha != rec.engine_sha256:
        return EngineCheck(None, f"engine {engine} does not match its record (sha256 "
                                 f"{eng_sha[:12]} != {rec.engine_sha256[:12]})")
    return EngineCheck(rec, f"engine {engine} is valid for ONNX {rec.onnx_sha256[:12]} "
                            f"and target {rec.target_fingerprint}")


def check_engine(model_paths: ModelPaths, backend: str, target: TargetLike,
                 hash_cache: HashCache | None = None) -> EngineCheck:
    """Whether the model's engine for ``backend`` may be served on ``target``, and why."""
    cache = hash_cache if hash_cache is not None else HashCache()
    return check_engine_file(model_paths.engine(backend), model_paths.engine_record(backend),
                             backend, model_paths.onnx, target, cache)


def valid_engine(model_paths: ModelPaths, backend: str, target: TargetLike,
                 hash_cache: HashCache | None = None) -> EngineRecord | None:
    """The engine's record if the engine is valid (see module doc), else None.

    The reason for None is logged at DEBUG; use :func:`check_engine` to get it.
    """
    res = check_engine(model_paths, backend, target, hash_cache)
    if res.record is None:
        logger.debug("%s: %s", model_paths.name, res.reason)
    return res.record
