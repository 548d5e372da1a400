"""Where everything lives on the model volume. The single source of these names.

::

    <models root>/                      A2F_MODEL_DATA_PATH, default /data/models
      <model>/                          a model folder: a plain directory, or (when model-sync
                                        manages it) a symlink to .a2f/versions/<model>/<version>/,
                                        swapped atomically; <model>/model.json stays valid
        model.json, network.onnx, ...   the published model files (NVIDIA's folder format)
        network.trt                     TensorRT engine  (engine-builder)
        network.trt.json                its engine record: ONNX hash, target fingerprint
        .gpu_arch                       the seed's marker: compute capability, e.g. "sm_75"
        network.ort                     ONNX Runtime optimised model (engine-builder)
        network.ort.json                its engine record
        .a2f-version.json               version record (model-sync): version id, source objects
      .a2f/                             service state, never a model
        versions/<model>/<version>/     immutable published versions (model-sync)
        staging/                        downloads in progress (model-sync), removed at start
        locks/<model>.build.lock        one builder per model at a time (engine-builder)
        timing-cache/<target>.cache     TensorRT timing caches, per target (engine-builder)
        hash-cache.json                 content hashes keyed by file identity
        engines/<onnx-sha>-<target-fp>.<ext>   content-addressed engine cache (engine-builder),
                                        hardlinked/copied into version folders, + its record

Names that start with a dot are never model folders. Temporary files are named by
:func:`temp_name` and recognised (with other tools' temp names) by :func:`is_temp_name`.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from a2f_volume.scan import list_dir, warn_unreadable

MODEL_JSON = "model.json"
ONNX_NAME = "network.onnx"
TRT_ENGINE_NAME = "network.trt"
ORT_ENGINE_NAME = "network.ort"
ENGINE_RECORD_SUFFIX = ".json"
GPU_ARCH_MARKER = ".gpu_arch"
VERSION_RECORD = ".a2f-version.json"
LEASE_FILE = ".a2f-lease"  # in each version directory: readers hold a shared flock on it
STATE_DIR = ".a2f"
VERSIONS_DIR = "versions"
STAGING_DIR = "staging"
LOCKS_DIR = "locks"
TIMING_CACHE_DIR = "timing-cache"
HASH_CACHE = "hash-cache.json"
ENGINES_DIR = "engines"

BACKEND_TENSORRT = "tensorrt"
BACKEND_ONNXRUNTIME = "onnxruntime"
BACKENDS = (BACKEND_TENSORRT, BACKEND_ONNXRUNTIME)

_TEMP_MARK = ".a2f-tmp-"
# Our own temp names, plus what aws-cli (`name.a1B2c3D4`), s5cmd (`name123456`), rclone
# (`name.XXXX.partial`), editors and generic tools leave behind while writing.
_FOREIGN_TEMP = re.compile(
    r"(\.partial|\.part|\.tmp|\.temp|\.swp|~|\.download|\.crdownload)$"
    r"|^\.#"
    r"|\.(onnx|trt|ort|json|npz)\.[A-Za-z0-9]{6,10}$"
    r"|\.(onnx|trt|ort|json|npz)[0-9]{3,}$",
)


def temp_name(final_name: str) -> str:
    """A unique hidden temporary name for a file that will be renamed to ``final_name``."""
    return f".{final_name}{_TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def is_temp_name(name: str) -> bool:
    """True for names of files still being written (ours or other tools'): watchers skip them."""
    base = os.path.basename(name)
    return _TEMP_MARK in base or bool(_FOREIGN_TEMP.search(base))


def state_dir(models_root: str | os.PathLike[str]) -> Path:
    """The service-state directory of a volume (never a model)."""
    return Path(models_root) / STATE_DIR


def versions_dir(models_root: str | os.PathLike[str], model: str) -> Path:
    return state_dir(models_root) / VERSIONS_DIR / model


def staging_dir(models_root: str | os.PathLike[str]) -> Path:
    return state_dir(models_root) / STAGING_DIR


def locks_dir(models_root: str | os.PathLike[str]) -> Path:
    return state_dir(models_root) / LOCKS_DIR


def timing_cache_dir(models_root: str | os.PathLike[str]) -> Path:
    return state_dir(models_root) / TIMING_CACHE_DIR


def hash_cache_path(models_root: str | os.PathLike[str]) -> Path:
    return state_dir(models_root) / HASH_CACHE


def engines_dir(models_root: str | os.PathLike[str]) -> Path:
    """Content-addressed engine cache shared by every version of every model."""
    return state_dir(models_root) / ENGINES_DIR


def build_lock_path(models_root: str | os.PathLike[str], model: str) -> Path:
    """``.a2f/locks/<model>.build.lock``: one builder per model at a time."""
    return locks_dir(models_root) / f"{model}.build.lock"


def cached_engine_path(
    models_root: str | os.PathLike[str], onnx_sha256: str, target_fingerprint: str, backend: str
) -> Path:
    """``.a2f/engines/<onnx-sha>-<target-fp>.<ext>`` (ext ``trt`` or ``ort``)."""
    ext = ModelPaths(Path(".")).engine(backend).suffix
    return engines_dir(models_root) / f"{onnx_sha256}-{target_fingerprint}{ext}"


def is_model_name(name: str) -> bool:
    """Model folder names: visible, not temporary, no path separators."""
    return bool(name) and not name.startswith(".") and "/" not in name and not is_temp_name(name)


def list_model_dirs(models_root: str | os.PathLike[str]) -> list[Path]:
    """Every model folder under the root (directories or symlinks holding ``model.json``).

    Entries that cannot be read (a root-owned ``lost+found``) are skipped with one warning
    each (:mod:`a2f_volume.scan`).
    """
    found = []
    for entry in list_dir(models_root):
        if not is_model_name(entry.name):
            continue
        try:
            if (entry / MODEL_JSON).is_file():
                found.append(entry)
        except OSError as err:
            warn_unreadable(entry, err)
    return found


def model_entries(directory: str | os.PathLike[str]) -> list[Path]:
    """Directories (or symlinks to them) with model-style names in ``directory``, readable
    ones only (others are skipped with one warning each)."""
    found = []
    for entry in list_dir(directory):
        if not is_model_name(entry.name):
            continue
        try:
            if entry.is_dir():
                os.stat(entry / ".")  # readable enough to look inside? (search permission)
                found.append(entry)
        except OSError as err:
            warn_unreadable(entry, err)
    return found


@dataclass(frozen=True)
class ModelPaths:
    """The files of one model folder that services other than the loader care about."""

    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def model_json(self) -> Path:
        return self.folder / MODEL_JSON

    @property
    def onnx(self) -> Path:
        return self.folder / ONNX_NAME

    def engine(self, backend: str) -> Path:
        """Engine file of a backend: ``network.trt`` (TensorRT) or ``network.ort`` (ORT)."""
        if backend == BACKEND_TENSORRT:
            return self.folder / TRT_ENGINE_NAME
        if backend == BACKEND_ONNXRUNTIME:
            return self.folder / ORT_ENGINE_NAME
        raise ValueError(f"unknown backend {backend!r}, expected one of {BACKENDS}")

    def engine_record(self, backend: str) -> Path:
        """Machine-readable record beside the engine (``network.trt.json``)."""
        eng = self.engine(backend)
        return eng.with_name(eng.name + ENGINE_RECORD_SUFFIX)

    @property
    def gpu_arch_marker(self) -> Path:
        return self.folder / GPU_ARCH_MARKER

    @property
    def version_record(self) -> Path:
        return self.folder / VERSION_RECORD

    def resolved(self) -> Path:
        """The real directory behind the folder (a version directory when model-sync manages it)."""
        return self.folder.resolve()
