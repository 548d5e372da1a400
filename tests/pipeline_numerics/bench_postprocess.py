"""Post-processing + solve cost against the network alone, on full-size stand-in folders.

Usage (prints figures; no assertions)::

    .venv/bin/python tests/pipeline_numerics/bench_postprocess.py [--kind regression|diffusion]
        [--folder PATH] [--seconds 3]

Without ``--folder`` a full-size stand-in is generated into a temporary directory. The
network runs in ONNX Runtime (CPU) at batch 30 on a synthetic speech-like signal; its
outputs are recorded and replayed through :class:`FramePostprocessor`, so the solve sees
realistic frame-to-frame changes. ``ratio`` is the serial pipeline's throughput
(network then post-processing, one after the other) over the network alone.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from a2f_bench.postprocess import benchmark_postprocess
from a2f_volume.model_folder import ModelFolder, load_model_folder

BATCH = 30


def _speechlike(seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000.0
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    voiced = 0.3 * np.sin(2 * np.pi * (140 + 40 * np.sin(2 * np.pi * 0.5 * t)) * t)
    return ((voiced + 0.05 * rng.standard_normal(t.size)) * env).astype(np.float32)


def _regression_rows(model: ModelFolder, seconds: float) -> tuple[float, np.ndarray]:
    sess = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    audio = _speechlike(10.0, np.random.default_rng(0))
    half = model.audio.buffer_ofs
    ap = model.audio
    assert model.regression is not None
    n_frames = int(audio.size / 16000 * 30)
    windows = np.zeros((n_frames, 1, ap.buffer_len), dtype=np.float32)
    for k in range(n_frames):
        c = int(k * 16000 / 30)
        lo = c - half
        seg = audio[max(lo, 0) : c + half]
        windows[k, 0, max(0, -lo) : max(0, -lo) + seg.size] = seg
    emo = np.zeros((BATCH, 1, model.regression.emotion_size), dtype=np.float32)
    rows = []
    for b in range(0, n_frames - BATCH + 1, BATCH):
        out = sess.run(None, {"input": windows[b : b + BATCH], "emotion": emo})[0]
        rows.append(out[:, 0])
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = (done // BATCH * BATCH) % (n_frames - BATCH)
        sess.run(None, {"input": windows[b : b + BATCH], "emotion": emo})
        done += BATCH
    return done / (time.perf_counter() - t0), np.concatenate(rows)


def _diffusion_rows(model: ModelFolder, seconds: float) -> tuple[float, np.ndarray]:
    d = model.diffusion
    assert d is not None
    sess = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    audio = _speechlike(4.0, rng)
    ident = np.zeros((1, len(model.identities)), dtype=np.float32)
    ident[0, 0] = 1.0
    latents = np.zeros((d.num_diffusion_steps, d.num_gru_layers, 1, d.gru_latent_dim), np.float32)
    rows, done, t0 = [], 0, time.perf_counter()
    k = 0
    while time.perf_counter() - t0 < seconds or k < 2:
        start = -16000 + 8000 * k
        win = np.zeros(16000, dtype=np.float32)
        lo, hi = max(start, 0), min(start + 16000, audio.size)
        if hi > lo:
            win[lo - start : hi - start] = audio[lo:hi]
        noise = rng.standard_normal(
            (1, d.num_diffusion_steps + 1, d.num_frames, d.frame_size), dtype=np.float32
        )
        pred, latents = sess.run(
            None,
            {
                "window": win[None], "identity": ident,
                "emotion": np.zeros((1, d.center, 10), np.float32),
                "input_latents": latents, "noise": noise,
            },
        )  # fmt: skip
        rows.append(pred[0, d.left_truncate : d.left_truncate + d.center])
        done += d.center
        k += 1
    return done / (time.perf_counter() - t0), np.concatenate(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("regression", "diffusion"), default="regression")
    ap.add_argument("--folder", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            from a2f_standin.generate import generate

            folder = Path(tmp) / args.kind
            generate(args.kind, folder, size="full")
        model = load_model_folder(folder)
        measure = _regression_rows if model.kind == "regression" else _diffusion_rows
        net_fps, rows = measure(model, args.seconds)
        frames = max(300, int(args.seconds * 1000))
        post_fps = benchmark_postprocess(model, frames=frames, batch=BATCH, rows=rows)
        walk_fps = benchmark_postprocess(model, frames=frames, batch=BATCH)
        ratio = 1.0 / (1.0 + net_fps / post_fps)
        print(f"kind={model.kind} batch={BATCH}")
        print(f"network alone:                     {net_fps:9.0f} frames/s")
        print(f"post-processing + solve (net rows): {post_fps:9.0f} frames/s "
              f"({1e6 / post_fps:.0f} us/frame)")  # fmt: skip
        print(f"post-processing + solve (random walk rows): {walk_fps:9.0f} frames/s")
        print(f"serial pipeline / network alone:   {ratio:9.2f}")


if __name__ == "__main__":
    main()
