"""BLAS thread setting of the services (real threadpoolctl on this process's NumPy)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from threadpoolctl import threadpool_limits

from a2f_engine.blas import BLAS_THREADS_ENV, blas_threads_setting, configure_blas_threads
from a2f_volume.errors import InvalidArgumentError


def test_setting_default_and_bounds() -> None:
    assert blas_threads_setting({}) == 1
    assert blas_threads_setting({BLAS_THREADS_ENV: " 3 "}) == 3
    for bad in ("0", "-1", "two", "1000"):
        with pytest.raises(InvalidArgumentError, match=BLAS_THREADS_ENV):
            blas_threads_setting({BLAS_THREADS_ENV: bad})


def test_configure_limits_the_loaded_blas() -> None:
    with threadpool_limits(limits=2, user_api="blas"):  # restored after the test
        before = configure_blas_threads(1)
        from a2f_engine.blas import current_blas_threads

        now = current_blas_threads()
        if not now:
            pytest.skip("no BLAS library reported by threadpoolctl")
        assert set(now.values()) == {1}
        assert set(before) == set(now)


def test_a_process_started_with_the_env_gets_that_count() -> None:
    code = ("from a2f_engine.blas import configure_blas_threads, current_blas_threads;"
            "configure_blas_threads(); print(sorted(set(current_blas_threads().values())))")
    env = {**os.environ, BLAS_THREADS_ENV: "1", "OPENBLAS_NUM_THREADS": "4"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.strip()
    assert out in ("[1]", "[]")
