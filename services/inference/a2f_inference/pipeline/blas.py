"""The BLAS thread count of the process (post-processing's many small matrix products)."""

from __future__ import annotations

import logging

from threadpoolctl import threadpool_info, threadpool_limits

logger = logging.getLogger(__name__)


def limit_blas_threads(threads: int = 1) -> dict[str, int]:
    """Set the BLAS libraries of this process (OpenBLAS/MKL behind NumPy) to ``threads``.

    Post-processing makes many small matrix products per frame. Multithreaded OpenBLAS
    spin-waits for its workers and collapses (10x slower measured) when the CPU is shared
    with the network's own thread pool or other processes, so the inference server calls
    this once at start-up with 1. The network (ONNX Runtime / TensorRT) keeps its own
    threads. Returns the previous thread count per library.
    """
    before = {str(i["internal_api"]): int(i["num_threads"]) for i in threadpool_info()
              if i.get("user_api") == "blas"}  # fmt: skip
    threadpool_limits(limits=threads, user_api="blas")
    logger.info("BLAS threads set to %d (were %s)", threads, before or "none found")
    return before
