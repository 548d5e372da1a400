"""BLAS threads of a service process: set once at start.

NumPy's BLAS (OpenBLAS or MKL) starts one thread per core and spin-waits for them. The
services run many small matrix products (post-processing, solve, engine verification) next
to ONNX Runtime's or TensorRT's own threads; on a shared CPU multithreaded BLAS then
collapses (post-processing measured at 150-330 frames/s with 2 BLAS threads under load
against 2200-2500 with 1, see docs/pipeline-numerics.md). Every service that does BLAS work
calls :func:`configure_blas_threads` first thing in its entry point; the images also set
``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS`` so that libraries loaded before that call start
with one thread.
"""

from __future__ import annotations

import logging
import os

from threadpoolctl import threadpool_info, threadpool_limits

from a2f_volume.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

#: Environment variable with the BLAS thread count of a service (default 1).
BLAS_THREADS_ENV = "A2F_BLAS_THREADS"
DEFAULT_BLAS_THREADS = 1
MAX_BLAS_THREADS = 256


def blas_threads_setting(environ: dict[str, str] | None = None) -> int:
    """The configured BLAS thread count: ``A2F_BLAS_THREADS`` (1..256), default 1."""
    env = os.environ if environ is None else environ
    raw = env.get(BLAS_THREADS_ENV, "").strip()
    if not raw:
        return DEFAULT_BLAS_THREADS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_BLAS_THREADS:
        raise InvalidArgumentError(
            f"{BLAS_THREADS_ENV}={raw!r}: expected an integer 1..{MAX_BLAS_THREADS}")
    return value


def configure_blas_threads(threads: int | None = None) -> dict[str, int]:
    """Limit every BLAS library loaded in this process to ``threads`` (default: the
    :func:`blas_threads_setting`). Call at service start, after NumPy is imported. Returns
    the previous count per library (empty when none is loaded)."""
    n = blas_threads_setting() if threads is None else int(threads)
    if not 1 <= n <= MAX_BLAS_THREADS:
        raise InvalidArgumentError(f"BLAS threads {n}: expected 1..{MAX_BLAS_THREADS}")
    import numpy  # noqa: F401  (loads the BLAS library the limit must reach)

    before = {str(i["internal_api"]): int(i["num_threads"]) for i in threadpool_info()
              if i.get("user_api") == "blas"}  # fmt: skip
    threadpool_limits(limits=n, user_api="blas")
    logger.info("BLAS threads set to %d (were %s)", n, before or "none loaded")
    return before


def current_blas_threads() -> dict[str, int]:
    """Thread count per loaded BLAS library."""
    return {str(i["internal_api"]): int(i["num_threads"]) for i in threadpool_info()
            if i.get("user_api") == "blas"}  # fmt: skip
