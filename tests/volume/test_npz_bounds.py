"""The loader checks npz member names and declared shapes before it reads array data, so a
small compressed file cannot make it allocate memory for arrays it rejects anyway."""

from __future__ import annotations

import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from a2f_volume.errors import ModelFolderError
from a2f_volume.model_folder import NPZ_MAX_ARRAY_BYTES, load_model_folder

EXTRA_BYTES = 128 << 20


def add_zero_member(npz: Path, name: str, nbytes: int) -> None:
    """Append ``name`` (float32 zeros of ``nbytes``) to an npz, streamed: never in memory."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (nbytes // 4,)}
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(npz, "a", compression=zipfile.ZIP_DEFLATED) as zf, \
            zf.open(name + ".npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        for _ in range(nbytes // len(chunk)):
            f.write(chunk)


def test_extra_huge_member_is_rejected_by_name_before_its_data_is_read(
        small_regression: Path) -> None:
    npz = small_regression / "model_data.npz"
    add_zero_member(npz, "padding", EXTRA_BYTES)
    assert npz.stat().st_size < EXTRA_BYTES // 100  # compressed: small on disk
    tracemalloc.start()
    try:
        with pytest.raises(ModelFolderError) as err:
            load_model_folder(small_regression)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "padding" in str(err.value) and "model_data.npz" in str(err.value)
    assert peak < EXTRA_BYTES // 4, f"peak {peak / 2**20:.0f} MiB while rejecting"


def test_member_declaring_more_than_the_bound_is_rejected_from_its_header(
        small_regression: Path) -> None:
    npz = small_regression / "bs_skin.npz"
    declared = NPZ_MAX_ARRAY_BYTES + 4
    header = {"descr": "<f4", "fortran_order": False, "shape": (declared // 4,)}
    with zipfile.ZipFile(npz, "a", compression=zipfile.ZIP_DEFLATED) as zf, \
            zf.open("huge.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)  # a header only: no data at all
    with pytest.raises(ModelFolderError) as err:
        load_model_folder(small_regression)
    assert "huge" in str(err.value) and f"at most {NPZ_MAX_ARRAY_BYTES} bytes" in str(err.value)
