"""ONNX Runtime engine: the CPU backend, and the reference TensorRT engines are checked against."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from a2f_engine.base import TensorSpec, check_resident_value
from a2f_engine.errors import EngineClosedError

_ORT_TYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64), "tensor(int32)": np.dtype(np.int32)}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, np.dtype(np.float32)), shape)


#: Most inference workers the automatic CPU plan uses (more only split the cores thinner).
AUTO_MAX_WORKERS = 4


def usable_cores(cgroup_cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity mask (a container's cpuset), capped by a
    cgroup v2 CPU quota (a Kubernetes CPU limit), rounded up."""
    try:
        n = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        n = max(1, os.cpu_count() or 1)
    try:
        with open(cgroup_cpu_max) as f:
            quota, period = f.read().split()[:2]
        if quota != "max" and int(period) > 0:
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return n


def cpu_plan(workers: int = 0, threads: int = 0, cores: int | None = None) -> tuple[int, int]:
    """``(inference workers, intra-op threads per worker)`` for ONNX Runtime on ``cores``.

    0 means automatic. Batches of the A2F networks are many small operators; splitting each
    across threads leaves cores waiting at every operator's end, while whole batches run
    side by side keep every core busy (measured on 2 cores with the full-size regression
    network: 1 worker x 2 threads about 2350 frames/s, 2 workers x 1 thread about 3300). So
    the automatic plan runs one single-threaded worker per core, up to
    :data:`AUTO_MAX_WORKERS`, and shares the remaining cores out as intra-op threads.
    """
    n = max(1, cores if cores is not None else usable_cores())
    if workers <= 0:
        workers = min(n, AUTO_MAX_WORKERS) if threads <= 0 else max(1, n // threads)
    if threads <= 0:
        threads = max(1, n // workers)
    return workers, threads


def session_options(intra_op_threads: int = 0, optimized_path: str | None = None,
                    optimize: bool = True) -> ort.SessionOptions:
    """Session options used everywhere so that build-time and run-time sessions agree."""
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    # Worker threads sleep between runs instead of spinning: a server runs many small
    # batches and the spinning threads would take the CPU that post-processing and the
    # gRPC layer need (measured: about twice the frames per CPU-second at real time).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path is not None:
        so.optimized_model_filepath = optimized_path
    return so


class OnnxRuntimeEngine:
    """Runs an ONNX (or ORT-optimised ONNX) file on the CPU execution provider."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], max_batch: int = 64,
                 intra_op_threads: int = 0, optimize: bool = True) -> None:
        self.path = os.fspath(path)
        self._session: ort.InferenceSession | None = ort.InferenceSession(
            self.path, sess_options=session_options(intra_op_threads, optimize=optimize),
            providers=["CPUExecutionProvider"])
        self.inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        self.max_batch = max_batch
        self._resident: dict[str, np.ndarray] = {}

    def set_resident_input(self, name: str, value: np.ndarray) -> None:
        """Keep ``value`` for input ``name`` and add it to every run's feeds (not copied per
        run: ONNX Runtime reads it in place)."""
        specs = {s.name: s for s in self.inputs}
        if name not in specs:
            raise ValueError(f"resident input {name!r} is not an input of {self.path}; "
                             f"inputs are {sorted(specs)}")
        self._resident[name] = check_resident_value(specs[name], value)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise EngineClosedError(f"ONNX Runtime engine {self.path} is closed")
        if self._resident:
            clash = sorted(set(feeds) & set(self._resident))
            if clash:
                raise ValueError(f"inputs {clash} are resident (set once with "
                                 "set_resident_input); run() does not take them")
            feeds = {**feeds, **self._resident}
        results = session.run(self._output_names, feeds)
        return {name: np.asarray(r) for name, r in zip(self._output_names, results, strict=True)}

    def close(self) -> None:
        # Dropping the session frees its arena; keep the object usable for introspection.
        self._session = None
        self._resident.clear()
