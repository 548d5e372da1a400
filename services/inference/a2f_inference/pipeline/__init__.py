"""The audio -> animation library (no gRPC): resampling, windowing, emotions,
post-processing, blendshape solve, per-stream sessions and the cross-stream batch scheduler.

Typical use::

    runtime = ModelRuntime(load_model_folder(path), OnnxRuntimeEngine(path / "network.onnx"))
    scheduler = BatchScheduler(runtime, on_ready=wake)
    scheduler.start()
    session = runtime.open_stream(None, {"face_params": {...}}, input_rate=16000)
    session.push_audio(pcm); session.end_of_audio()
    frames = session.take_frames()  # as they come; ``session.done`` at the end
"""

from a2f_inference.pipeline.frames import Frame
from a2f_inference.pipeline.runtime import ModelRuntime
from a2f_inference.pipeline.scheduler import (
    BatchScheduler,
    BatchStats,
    SchedulerObserver,
    run_offline,
)
from a2f_inference.pipeline.stream import StreamParams, StreamSession

__all__ = [
    "BatchScheduler",
    "BatchStats",
    "Frame",
    "ModelRuntime",
    "SchedulerObserver",
    "StreamParams",
    "StreamSession",
    "run_offline",
]
