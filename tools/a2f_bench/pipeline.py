"""``a2f-bench pipeline``: the pipeline library against the network alone.

N streams of synthetic speech go through sessions and the batch scheduler (windowing, batched
ONNX Runtime inference, post-processing and the blendshape solve); then the network alone
runs on the same sequence of batch sizes, in the same process, right after, by as many
workers side by side as the pipeline's scheduler has. Frames per second per core of both and
their ratio are reported. Inference workers and ONNX Runtime intra-op threads per worker are
set explicitly (``--workers``, ``--threads``; default the server's automatic CPU plan) and
their product is reported as the cores used.

The pipeline runs the model as the server would on ONNX Runtime: a diffusion model through
its composed serving graph (:mod:`a2f_engine.serving_plan`; the noise policy of ``--noise``),
a regression model on its network. The network-alone baseline always runs the model's
ORIGINAL ``network.onnx`` on the same batch sizes, fed the noise the policy supplies
(``constant``: the resident tensor repeated over the batch; ``fresh``: the pool mix built
once per batch size, outside the timing), so moving work into the engine cannot improve the
ratio. ``host_cpu_ms_per_frame`` is the process CPU time spent outside the engine's run
calls per output frame: the engine's share is the CPU time of the threads inside ``run``
(exact with one intra-op thread per worker, the automatic plan; with more, the intra-op
pool's CPU counts as host time, an over-estimate).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info

from a2f_bench.standins import standin_folder
from a2f_engine.base import Engine
from a2f_engine.blas import configure_blas_threads
from a2f_engine.noise import NoisePolicy, draw_pool_mix, pool_noise
from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine, cpu_plan
from a2f_engine.serving_graph import ServingGraphInfo, resident_inputs
from a2f_engine.serving_plan import composed_onnxruntime, uses_serving_graph
from a2f_inference.audio import speech_like, to_pcm16
from a2f_inference.pipeline import BatchScheduler, BatchStats, ModelRuntime
from a2f_inference.pipeline.runtime import batch_axis
from a2f_volume.model_folder import ModelFolder, load_model_folder

logger = logging.getLogger(__name__)


class _BatchLog:
    """Scheduler observer that keeps the batch sizes and engine time."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.inference_s = 0.0
        self.postprocess_s = 0.0
        self.engine_cpu_s = 0.0

    def on_batch(self, stats: BatchStats) -> None:
        self.sizes.append(int(stats.size))
        self.inference_s += float(stats.inference_s)
        self.postprocess_s += float(stats.postprocess_s)


class _TimedEngine:
    """An engine that adds up the CPU time of the threads inside its ``run`` calls."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.backend, self.inputs, self.outputs = inner.backend, inner.inputs, inner.outputs
        self.max_batch = inner.max_batch
        self._lock = threading.Lock()
        self.cpu_s = 0.0

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        c0 = time.thread_time()
        try:
            return self.inner.run(feeds)
        finally:
            spent = time.thread_time() - c0
            with self._lock:
                self.cpu_s += spent

    def set_resident_input(self, name: str, value: np.ndarray) -> None:
        self.inner.set_resident_input(name, value)

    def close(self) -> None:
        self.inner.close()


def _run_pipeline(runtime: ModelRuntime, clips: list[bytes], chunk_bytes: int, max_wait_s: float,
                  workers: int = 1) -> tuple[int, float, float, _BatchLog]:
    """All clips through one scheduler; returns (frames, wall s, cpu s, batch log); the
    batch log's ``engine_cpu_s`` is the CPU time inside the engine's run calls."""
    timed = runtime.engine if isinstance(runtime.engine, _TimedEngine) else None
    engine_cpu0 = timed.cpu_s if timed is not None else 0.0
    log = _BatchLog()
    sched = BatchScheduler(runtime, max_wait_s=max_wait_s, observer=log, workers=workers)
    sessions = [runtime.open_stream(None, None, input_rate=16000, seed=i)
                for i in range(len(clips))]
    frames = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    sched.start()
    try:
        longest = max(len(c) for c in clips)
        for pos in range(0, longest, chunk_bytes):  # round-robin, as fast as possible
            for s, c in zip(sessions, clips, strict=True):
                if pos < len(c):
                    s.push_audio(c[pos : pos + chunk_bytes])
                frames += len(s.take_frames())
        for s in sessions:
            s.end_of_audio()
        for s in sessions:
            while not s.done:
                s.wait(5.0)
                if s.error is not None:
                    raise s.error
                frames += len(s.take_frames())
    finally:
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        log.engine_cpu_s = (timed.cpu_s - engine_cpu0) if timed is not None else 0.0
        for s in sessions:
            s.close()
        sched.stop()
    return frames, wall, cpu, log


def _feeds(engine: Engine, batch: int, rng: np.random.Generator,
           noise: NoiseSource | None = None) -> dict[str, np.ndarray]:
    out = {}
    for spec in engine.inputs:
        shape = list(spec.shape)
        shape[batch_axis(spec)] = batch
        if spec.name == "noise" and noise is not None:
            out[spec.name] = noise(batch, rng)
        else:
            out[spec.name] = rng.standard_normal([max(1, d) for d in shape], dtype=np.float32)
    return out


class NoiseSource:
    """The noise the chosen policy supplies to the network, for the baseline's batches."""

    def __init__(self, info: ServingGraphInfo) -> None:
        self.info = info
        self.resident = resident_inputs(info)

    def __call__(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        if "constant_noise" in self.resident:  # the resident tensor, once per item
            return np.repeat(self.resident["constant_noise"], batch, axis=0)
        pool = self.resident["noise_pool"]
        steps_1, frames = self.info.noise_shape[:2]
        rows, mix = draw_pool_mix(rng, batch, steps_1, frames, self.info.pool_rows)
        return pool_noise(pool, rows, mix)


def _engines(folder: ModelFolder, max_batch: int, threads: int, noise: NoisePolicy
             ) -> tuple[Engine, ServingGraphInfo | None, NoiseSource | None]:
    """The pipeline's engine (the serving graph where the server would use one on ONNX
    Runtime), its graph description, and the noise the baseline network gets."""
    if not uses_serving_graph(folder.kind, "onnxruntime"):
        return OnnxRuntimeEngine(folder.onnx_path, max_batch=max_batch,
                                 intra_op_threads=threads), None, None
    engine, info = composed_onnxruntime(folder, noise, max_batch=max_batch,
                                        intra_op_threads=threads)
    return engine, info, NoiseSource(info)


def _run_network(engine: Engine, sizes: list[int], workers: int = 1,
                 noise: NoiseSource | None = None) -> tuple[float, float]:
    """The engine alone over the given batch sizes, shared out to ``workers`` threads running
    side by side as the scheduler's workers do; returns (wall s, cpu s)."""
    rng = np.random.default_rng(0)
    # one set of inputs per worker and size: concurrent runs never share an array
    cache = [{b: _feeds(engine, b, rng, noise) for b in sorted(set(sizes))}
             for _ in range(workers)]
    lock = threading.Lock()
    todo = iter(sizes)

    def work(feeds: dict[int, dict[str, np.ndarray]]) -> None:
        while True:
            with lock:
                b = next(todo, None)
            if b is None:
                return
            engine.run(feeds[b])

    cpu0, t0 = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=work, args=(c,)) for c in cache]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, time.process_time() - cpu0


def bench_pipeline(model: Path, *, streams: int, seconds: float, threads: int,
                   max_batch: int | None, max_wait_s: float, chunk_s: float,
                   repeat: int = 5, workers: int = 1, noise: NoisePolicy = "constant",
                   noise_seed: int = 0) -> dict[str, Any]:
    """Run the benchmark and return its figures (``threads``: intra-op threads of each of
    the ``workers`` inference workers; ``noise``: the diffusion noise policy)."""
    folder = load_model_folder(model)
    mb = max_batch or folder.max_batch
    inner, info, noise_source = _engines(folder, mb, threads, noise)
    engine = _TimedEngine(inner)
    network = (OnnxRuntimeEngine(folder.onnx_path, max_batch=mb, intra_op_threads=threads)
               if info is not None else inner)
    try:
        runtime = ModelRuntime(folder, engine, max_batch=mb, serving=info,
                               noise_seed=noise_seed)
        clips = [to_pcm16(speech_like(seconds, 16000, seed=i)) for i in range(streams)]
        chunk = max(2, 2 * round(chunk_s * 16000))
        logger.info("warm-up: one short stream")
        _run_pipeline(runtime, [to_pcm16(speech_like(1.0, 16000, seed=99))], chunk, max_wait_s,
                      workers)
        logger.info("pipeline: %d streams x %.1f s of audio, max batch %d, %d worker(s) x %d "
                    "ORT thread(s), best of %d rounds", streams, seconds, runtime.max_batch,
                    workers, threads, repeat)
        best: tuple[int, float, float, _BatchLog] | None = None
        net_wall = net_cpu = float("inf")
        rounds: list[float] = []
        for r in range(repeat):
            frames, wall, cpu, blog = _run_pipeline(runtime, clips, chunk, max_wait_s, workers)
            logger.info("round %d: pipeline %d frames in %.2f s (%d batches, mean %.1f "
                        "windows); network alone on the same batch sizes...", r + 1, frames,
                        wall, len(blog.sizes), float(np.mean(blog.sizes)) if blog.sizes else 0.0)
            nw, nc = _run_network(network, blog.sizes, workers, noise_source)
            logger.info("round %d: network %.2f s, ratio %.3f", r + 1, nw, nw / wall)
            rounds.append(nw / wall)
            if best is None or wall < best[1]:
                best = (frames, wall, cpu, blog)
            if nw < net_wall:
                net_wall, net_cpu = nw, nc
        assert best is not None
        frames, wall, cpu, blog = best
    finally:
        engine.close()
        if network is not inner:
            network.close()
    cores = threads * workers
    pipe_fps = frames / wall
    net_fps = frames / net_wall if net_wall > 0 else float("inf")
    return {
        "model": str(model),
        "kind": folder.kind,
        "serving_graph": info is not None,
        "noise": (info.noise if info is not None else None),
        "host_cpu_ms_per_frame": 1000.0 * max(0.0, cpu - blog.engine_cpu_s) / max(1, frames),
        "streams": streams,
        "seconds_per_stream": seconds,
        "frames": frames,
        "batches": len(blog.sizes),
        "mean_batch": float(np.mean(blog.sizes)) if blog.sizes else 0.0,
        "max_batch": runtime.max_batch,
        "workers": workers,
        "ort_intra_op_threads": threads,
        "blas_threads": _blas_threads(),
        "cores_used": cores,
        "pipeline": {"wall_s": wall, "cpu_s": cpu, "fps": pipe_fps,
                     "fps_per_core": pipe_fps / cores,
                     "engine_s": blog.inference_s, "postprocess_s": blog.postprocess_s,
                     "engine_cpu_s": blog.engine_cpu_s,
                     "frames_per_cpu_s": frames / cpu if cpu > 0 else 0.0,
                     "realtime_streams_per_core": pipe_fps / cores / 30.0},
        "network": {"wall_s": net_wall, "cpu_s": net_cpu, "fps": net_fps,
                    "fps_per_core": net_fps / cores,
                    "frames_per_cpu_s": frames / net_cpu if net_cpu > 0 else 0.0},
        "ratio_pipeline_to_network": float(np.median(rounds)),
        "ratio_best_of_each": pipe_fps / net_fps if net_fps else 0.0,
        "ratio_per_round": rounds,
    }


def _blas_threads() -> int | None:
    counts = [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else None


def _print_report(r: dict[str, Any]) -> None:
    p, n = r["pipeline"], r["network"]
    print(f"model {r['model']} ({r['kind']}), {r['streams']} streams x "
          f"{r['seconds_per_stream']:.1f} s, {r['frames']} frames, {r['batches']} batches "
          f"(mean {r['mean_batch']:.1f}, max {r['max_batch']})")
    print(f"cores used: {r['cores_used']} ({r['workers']} inference worker(s) x "
          f"{r['ort_intra_op_threads']} ONNX Runtime intra-op thread(s); BLAS threads "
          f"{r['blas_threads']})")
    print(f"pipeline : {p['fps']:9.1f} frames/s  {p['fps_per_core']:9.1f} frames/s/core  "
          f"{p['frames_per_cpu_s']:9.1f} frames/cpu-s  (engine {p['engine_s']:.2f} s, "
          f"post-processing {p['postprocess_s']:.2f} s, wall {p['wall_s']:.2f} s)")
    print(f"network  : {n['fps']:9.1f} frames/s  {n['fps_per_core']:9.1f} frames/s/core  "
          f"{n['frames_per_cpu_s']:9.1f} frames/cpu-s  (wall {n['wall_s']:.2f} s)")
    print(f"host CPU outside the engine: {r['host_cpu_ms_per_frame']:.3f} ms per output frame "
          f"(serving graph: {r['serving_graph']}, noise {r['noise']})")
    print(f"ratio pipeline / network: {r['ratio_pipeline_to_network']:.3f} (median of the "
          f"rounds: {', '.join(f'{x:.3f}' for x in r['ratio_per_round'])}; best of each "
          f"{r['ratio_best_of_each']:.3f})")


def cmd_pipeline(args: argparse.Namespace) -> int:
    if args.model:
        model = Path(args.model)
    else:
        model = standin_folder(args.kind, args.size)
    workers, threads = cpu_plan(args.workers, args.threads)
    if args.blas_threads > 0:
        configure_blas_threads(args.blas_threads)  # as the server does: see the docs
    report = bench_pipeline(model, streams=args.streams, seconds=args.seconds, threads=threads,
                            max_batch=args.max_batch, max_wait_s=args.max_wait_s,
                            chunk_s=args.chunk_s, repeat=args.repeat, workers=workers,
                            noise=args.noise, noise_seed=args.noise_seed)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0
