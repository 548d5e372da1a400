"""One whole clip through a stream, start to end (tests, the demo, the server's warm-up)."""

from __future__ import annotations

import time

from a2f_inference.pipeline.frames import Frame
from a2f_inference.pipeline.runtime import ModelRuntime
from a2f_inference.pipeline.scheduler import BatchScheduler
from a2f_inference.pipeline.stream_params import StreamParams
from a2f_volume.errors import DeadlineExceededError


def run_offline(runtime: ModelRuntime, pcm: bytes, rate: int, *, identity: str | None = None,
                params: StreamParams | dict[str, object] | None = None,
                output_fps: float = 30.0, constant_noise: bool = False, seed: int | None = None,
                emotions: list[tuple[float, dict[str, float]]] | None = None,
                chunk_bytes: int | None = None, timeout_s: float = 600.0) -> list[Frame]:
    """Run one whole clip through a stream and return every frame (for tests and the demo).

    Uses the runtime's running scheduler, or a temporary one. ``chunk_bytes`` feeds the PCM in
    pieces of that size (default: all at once).
    """
    own: BatchScheduler | None = None
    sched = runtime.scheduler
    if sched is None or not sched.running:
        own = BatchScheduler(runtime)
        own.start()
    session = runtime.open_stream(identity, params, input_rate=rate, output_fps=output_fps,
                                  constant_noise=constant_noise, seed=seed)
    frames: list[Frame] = []
    try:
        if emotions:
            session.push_emotions(emotions)
        step = chunk_bytes or max(1, len(pcm))
        for i in range(0, len(pcm), step):
            session.push_audio(pcm[i : i + step])
            frames.extend(session.take_frames())
        session.end_of_audio()
        deadline = time.monotonic() + timeout_s
        while True:
            frames.extend(session.take_frames())
            if session.error is not None:
                raise session.error
            if session.done:
                return frames
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceededError(
                    f"offline run on {runtime.name!r} took over {timeout_s:g} s")
            session.wait(min(left, 1.0))
    finally:
        session.close()
        if own is not None:
            own.stop()
            if sched is not None and not sched.stopped:
                runtime.attach(sched)  # give the runtime back to its (not yet started) owner
