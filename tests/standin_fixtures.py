"""Stand-in model folder fixtures shared by every test suite.

* ``small_regression`` / ``small_diffusion``: a fresh private copy (safe to modify) of a
  small stand-in folder generated once per session.
* ``standin_full``: a session fixture returning ``get(kind) -> Path`` for full-size folders,
  cached under ``.a2f-local/standins/<kind>-full-seed<N>`` keyed by
  :data:`a2f_standin.GENERATOR_VERSION`, so repeated runs skip regeneration. Treat those
  folders as read-only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from a2f_standin import GENERATOR_VERSION, generate
from a2f_volume.lock import FileLock

REPO_ROOT = Path(__file__).resolve().parents[1]
VERSION_FILE = ".standin-version"


def standin_cache_root() -> Path:
    """Where full-size stand-ins are cached (env A2F_STANDIN_CACHE overrides)."""
    env = os.environ.get("A2F_STANDIN_CACHE")
    return Path(env) if env else REPO_ROOT / ".a2f-local" / "standins"


def cached_standin(kind: str, size: str = "full", seed: int = 0) -> Path:
    """The cached stand-in folder for (kind, size, seed), generated on first use."""
    root = standin_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{kind}-{size}-seed{seed}"
    stamp = f"{GENERATOR_VERSION}\n"
    with FileLock(root / f".{final.name}.lock"):
        marker = final / VERSION_FILE
        if marker.is_file() and marker.read_text() == stamp:
            return final
        work = root / f".{final.name}.building-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        generate(kind, work, size=size, seed=seed)
        (work / VERSION_FILE).write_text(stamp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    return final


@pytest.fixture(scope="session")
def small_standin_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("standins")
    return {k: generate(k, base / k, size="small", seed=0) for k in ("regression", "diffusion")}


def _fresh_copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


@pytest.fixture
def small_regression(small_standin_sources: dict[str, Path], tmp_path: Path) -> Path:
    """A private small regression stand-in folder (model.json inside)."""
    return _fresh_copy(small_standin_sources["regression"], tmp_path / "standin-regression")


@pytest.fixture
def small_diffusion(small_standin_sources: dict[str, Path], tmp_path: Path) -> Path:
    """A private small diffusion stand-in folder (model.json inside)."""
    return _fresh_copy(small_standin_sources["diffusion"], tmp_path / "standin-diffusion")


@pytest.fixture(scope="session")
def standin_full() -> Callable[[str], Path]:
    """``standin_full(kind)``: the cached full-size folder of ``kind`` (read-only)."""
    return cached_standin
