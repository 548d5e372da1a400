"""The server on a read-only model volume, as the inference container mounts it: it loads and
leases the versions model-sync published (lease files included) and needs no write access.

The read-only view is a real read-only bind mount (root only; skipped with the reason
otherwise, since ``chmod`` does not bind root)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from a2f_volume import versions
from a2f_volume.layout import LEASE_FILE
from a2f_volume.leases import ensure_lease_files

from .conftest import REGRESSION, one_stream, run, run_server


@pytest.fixture
def read_only_root(tmp_path: Path) -> Iterator[Path]:
    """A managed models root (one stand-in model adopted as a version, lease files made as
    model-sync makes them), seen through a read-only bind mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root and the mount command")
    from a2f_standin.generate import generate

    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    generate("regression", rw / REGRESSION, size="small")
    versions.adopt(rw, REGRESSION)
    assert ensure_lease_files(rw) == 1
    bound = subprocess.run(["mount", "--bind", str(rw), str(ro)], capture_output=True,
                           text=True, timeout=30)
    if bound.returncode != 0:
        pytest.skip(f"bind mounts are not allowed here: {bound.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True,
                       timeout=30, check=True)
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True, timeout=30, check=True)


def test_server_loads_and_leases_models_on_a_read_only_volume(
        read_only_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    vdir = versions.version_dir_of(read_only_root / REGRESSION)
    assert vdir is not None and (vdir / LEASE_FILE).is_file()
    with pytest.raises(OSError):
        (vdir / "probe").write_bytes(b"")  # really read-only
    with caplog.at_level(logging.WARNING, logger="a2f_volume.leases"), \
            run_server(read_only_root, model_path=read_only_root / REGRESSION / "model.json",
                       hot_reload="poll") as srv:
        assert run(one_stream(srv.address, 1.0, model=REGRESSION)).ok
    assert not [r for r in caplog.records if "cannot lease" in r.getMessage()]
