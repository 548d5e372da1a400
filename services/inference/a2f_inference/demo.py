"""``a2f-demo``: speech in, blendshape animation out, on stand-in models, in one command.

It generates small stand-in model folders (regression and diffusion) under
``.a2f-local/demo/standins/`` on first use, synthesises a speech-like signal (or reads
``--wav``), runs it through the pipeline (:func:`run_pipeline_demo`), prints a summary
(frames, duration, the largest weight of each active blendshape, JawOpen over time as a text
plot) and writes ``animation_frames.csv`` (columns ``timeCode``, ``blendShapes.<Name>``, like
NVIDIA's sample client) per model kind. Through the server (the default) an Audio2Emotion
stand-in serves beside the face models, and the emotion the face model received is shown
next to JawOpen.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2f_inference.audio import WavFormatError, read_wav, speech_like, to_pcm16, write_wav

logger = logging.getLogger(__name__)

DEFAULT_WORK_DIR = ".a2f-local/demo"
KINDS = ("regression", "diffusion")


# -- the demo --------------------------------------------------------------------------------
@dataclass
class DemoResult:
    """One model kind's run."""

    kind: str
    model_dir: Path
    names: tuple[str, ...]
    times: np.ndarray  # [F]
    weights: np.ndarray  # [F, 68]
    audio_s: float
    wall_s: float
    csv_path: Path


def standin_dir(work_dir: Path, kind: str) -> Path:
    """The small stand-in of ``kind`` under ``work_dir`` (generated on first use)."""
    from a2f_standin import generate

    final = work_dir / "standins" / f"{kind}-small"
    if (final / "model.json").is_file():
        return final
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    logger.info("generating the small %s stand-in into %s", kind, final)
    generate(kind, tmp, size="small")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    return final


def a2e_standin_dir(work_dir: Path) -> Path:
    """The small Audio2Emotion stand-in under ``work_dir`` (generated on first use)."""
    from a2f_standin.emotion import generate_emotion

    final = work_dir / "standins" / "a2e-small"
    if (final / "model.json").is_file():
        return final
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    logger.info("generating the small Audio2Emotion stand-in into %s", final)
    generate_emotion(tmp, size="small")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    return final


def emotion_beside_jaw(times: Sequence[float], jaw: np.ndarray,
                       smoothed: Sequence[tuple[float, dict[str, float]]],
                       a2e: Sequence[tuple[float, dict[str, float]]], step_s: float = 0.5
                       ) -> str:
    """Every ``step_s``: JawOpen as a bar, the strongest emotion fed to the face model
    (``a2f_smoothed_output``) and the strongest emotion A2E heard (``a2e_output``)."""
    def top(values: dict[str, float]) -> str:
        if not values or max(values.values()) <= 0:
            return "-"
        name = max(values, key=lambda n: values[n])
        return f"{name} {values[name]:.2f}"

    lines = ["   time  JawOpen               emotion fed to the face   heard by A2E"]
    next_t = 0.0
    for i, t in enumerate(times):
        if t + 1e-9 < next_t or i >= len(smoothed):
            continue
        next_t += step_s
        bar = "#" * round(float(jaw[i]) * 12)
        heard = top(a2e[i][1]) if i < len(a2e) else "(no A2E model)"
        lines.append(f"{t:6.2f}s  {jaw[i]:.2f} {bar:<12}  {top(smoothed[i][1]):<24}  {heard}")
    return "\n".join(lines)


def write_csv(path: Path, names: Sequence[str], times: np.ndarray, weights: np.ndarray) -> None:
    """``timeCode`` then ``blendShapes.<Name>`` columns, one row per frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["timeCode", *(f"blendShapes.{n}" for n in names)])
        for t, row in zip(times, weights, strict=True):
            wr.writerow([f"{t:.6f}", *(f"{v:.6f}" for v in row)])
    os.replace(tmp, path)


def run_pipeline_demo(kind: str, model_dir: Path, pcm: bytes, rate: int, out_dir: Path, *,
                      fps: float = 30.0, threads: int = 0) -> DemoResult:
    """Run one clip through the pipeline on ``model_dir`` and write the CSV into ``out_dir``."""
    from a2f_engine.onnxruntime_engine import OnnxRuntimeEngine
    from a2f_inference.pipeline import ModelRuntime, run_offline
    from a2f_volume.model_folder import load_model_folder

    folder = load_model_folder(model_dir)
    engine = OnnxRuntimeEngine(folder.onnx_path, max_batch=folder.max_batch,
                               intra_op_threads=threads)
    try:
        runtime = ModelRuntime(folder, engine)
        t0 = time.perf_counter()
        frames = run_offline(runtime, pcm, rate, output_fps=fps, chunk_bytes=2 * rate // 10)
        wall = time.perf_counter() - t0
    finally:
        engine.close()
    times = np.array([f.time_code_s for f in frames])
    weights = (np.stack([f.weights for f in frames]) if frames
               else np.zeros((0, len(runtime.blendshape_names)), dtype=np.float32))
    csv_path = out_dir / kind / "animation_frames.csv"
    write_csv(csv_path, runtime.blendshape_names, times, weights)
    return DemoResult(kind, model_dir, runtime.blendshape_names, times, weights,
                      len(pcm) / 2 / rate, wall, csv_path)


def text_plot(times: np.ndarray, values: np.ndarray, width: int = 60, height: int = 8) -> str:
    """A small text plot of one curve (value 0..max over time)."""
    if values.size == 0:
        return "(no frames)"
    cols = np.array_split(np.arange(values.size), min(width, values.size))
    col_vals = np.array([values[c].max() for c in cols])
    top = max(float(col_vals.max()), 1e-6)
    lines = []
    for level in range(height, 0, -1):
        thr = top * (level - 0.5) / height
        label = f"{top * level / height:5.2f} |" if level in (height, 1) else "      |"
        lines.append(label + "".join("#" if v >= thr else " " for v in col_vals))
    lines.append("      +" + "-" * len(col_vals))
    lines.append(f"       0 s{' ' * max(1, len(col_vals) - 12)}{times[-1]:.1f} s")
    return "\n".join(lines)


def summary(res: DemoResult) -> str:
    out = [f"== {res.kind} ({res.model_dir})",
           f"frames {len(res.times)}, audio {res.audio_s:.2f} s, "
           f"{len(res.times) / max(res.audio_s, 1e-9):.1f} fps, pipeline {res.wall_s:.2f} s "
           f"({res.audio_s / max(res.wall_s, 1e-9):.1f}x real time)"]
    if len(res.times):
        mx = res.weights.max(axis=0)
        order = np.argsort(-mx)
        active = [f"{res.names[i]} {mx[i]:.2f}" for i in order if mx[i] >= 0.01]
        out.append("max weight per blendshape (>= 0.01): " + (", ".join(active) or "none"))
        jaw = res.names.index("JawOpen")
        out.append("JawOpen over time:")
        out.append(text_plot(res.times, res.weights[:, jaw]))
    out.append(f"CSV: {res.csv_path}")
    return "\n".join(out)


# -- through the gRPC server -------------------------------------------------------------------
SERVER_MODEL_NAMES = {"regression": "a23", "diffusion": "multi-diffusion"}
ESPEAK_TEXT = ("Hello! This animation was made by the open Audio2Face serving stack, "
               "streamed over g R P C, one frame at a time.")


def speech_wav(work: Path, seconds: float) -> tuple[Path, str]:
    """A speech WAV for the server demo: espeak-ng when installed, else the synthetic voice."""
    import shutil
    import subprocess

    path = work / "speech.wav"
    work.mkdir(parents=True, exist_ok=True)
    espeak = shutil.which("espeak-ng")
    if espeak:
        try:
            subprocess.run([espeak, "-w", str(path), ESPEAK_TEXT], check=True,
                           capture_output=True, timeout=60)
            return path, "espeak-ng"
        except (OSError, subprocess.SubprocessError) as err:
            logger.warning("espeak-ng failed (%s); using the synthetic voice", err)
    write_wav(path, to_pcm16(speech_like(seconds, 16000)), 16000)
    return path, "synthetic voice"


def run_server_demo(work: Path, kinds: Sequence[str], wav: Path | None, seconds: float) -> int:
    """Serve the stand-ins with ``a2f-inference`` on 127.0.0.1 (in-process, ONNX Runtime) and
    stream speech through the ``a2f-client`` code, once per model kind."""
    import asyncio

    from a2f_inference.client import run_client
    from a2f_inference.server.app import BackgroundServer
    from a2f_inference.server.config import ServerConfig

    root = work / "models"
    root.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        link = root / SERVER_MODEL_NAMES[kind]
        target = standin_dir(work, kind).resolve()
        if not link.exists() or link.resolve() != target:
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target, target_is_directory=True)
    a2e_link, a2e_target = root / "a2e", a2e_standin_dir(work).resolve()
    if not a2e_link.exists() or a2e_link.resolve() != a2e_target:
        if a2e_link.is_symlink() or a2e_link.exists():
            a2e_link.unlink()
        a2e_link.symlink_to(a2e_target, target_is_directory=True)
    if wav is None:
        wav, source = speech_wav(work, seconds)
    else:
        source = str(wav)
    default = SERVER_MODEL_NAMES[kinds[0]]
    config = ServerConfig(models_root=root, model_path=root / default / "model.json",
                          host="127.0.0.1", port=0, metrics_port=0, grace_s=5.0)
    failures = 0
    with BackgroundServer(config) as bg:
        assert bg.server is not None
        print(f"a2f-inference is serving {', '.join(bg.server.registry.names())} on "
              f"{bg.address} (metrics on 127.0.0.1:{bg.server.metrics_port}/metrics)")
        print(f"  try: grpcurl -plaintext {bg.address} list")
        for kind in kinds:
            model = SERVER_MODEL_NAMES[kind]
            print(f"== {kind}: a2f-client {wav} --server {bg.address} --model {model} "
                  f"--realtime ({source})")
            result, _ = asyncio.run(run_client(
                wav, bg.address, model=model, out=work / "output" / "server" / kind,
                realtime=True))
            if not result.ok:
                failures += 1
                continue
            first = (result.frame_arrival_s[0] - result.started_s) * 1000 \
                if result.frame_arrival_s else float("nan")
            w = np.asarray(result.weights, dtype=np.float32)
            jaw = result.blend_shapes.index("JawOpen")
            early = bool(result.frame_arrival_s) and \
                result.frame_arrival_s[0] < result.audio_done_s
            print(f"first frame after {first:.0f} ms, while audio was still streaming: {early}")
            print("JawOpen over time:")
            print(text_plot(np.asarray(result.time_codes), w[:, jaw]))
            rec = result.emotions.records
            print(emotion_beside_jaw(result.time_codes, w[:, jaw],
                                     rec["a2f_smoothed_output"], rec["a2e_output"]))
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="a2f-demo",
        description="Run speech through the Audio2Face-3D pipeline on stand-in models and "
                    "print the animation.")
    p.add_argument("--wav", help="16-bit mono PCM WAV to animate (default: a synthetic voice)")
    p.add_argument("--seconds", type=float, default=4.0,
                   help="length of the synthetic voice in seconds (default 4)")
    p.add_argument("--kind", choices=(*KINDS, "both"), default="both",
                   help="which stand-in model(s) to run (default both)")
    p.add_argument("--model", help="a model folder to use instead of the stand-in")
    p.add_argument("--fps", type=float, default=30.0, help="output frame rate (default 30)")
    p.add_argument("--pipeline-only", action="store_true",
                   help="run the pipeline library directly instead of starting the gRPC "
                        "server and streaming through the client (the default)")
    p.add_argument("--work-dir", default=os.environ.get("A2F_DEMO_DIR", DEFAULT_WORK_DIR),
                   help=f"where stand-ins and CSVs go (env A2F_DEMO_DIR, default "
                        f"{DEFAULT_WORK_DIR})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(args.work_dir)
    if not args.pipeline_only and not args.model:
        kinds = KINDS if args.kind == "both" else (args.kind,)
        return run_server_demo(work, kinds, Path(args.wav) if args.wav else None, args.seconds)
    if args.wav:
        try:
            pcm, rate = read_wav(args.wav)
        except (WavFormatError, FileNotFoundError) as err:
            print(f"a2f-demo: {err}", file=sys.stderr)
            return 2
    else:
        rate = 16000
        pcm = to_pcm16(speech_like(args.seconds, rate))
    out_dir = work / "output"
    if args.model:
        from a2f_volume.model_folder import load_model_folder

        runs: list[tuple[str, Path]] = [(load_model_folder(args.model).kind, Path(args.model))]
    else:
        kinds = KINDS if args.kind == "both" else (args.kind,)
        runs = [(k, standin_dir(work, k)) for k in kinds]
    for kind, model_dir in runs:
        res = run_pipeline_demo(kind, model_dir, pcm, rate, out_dir, fps=args.fps)
        print(summary(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
