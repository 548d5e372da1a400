"""The audio -> animation library (no gRPC): resampling, windowing, emotions,
post-processing, blendshape solve, per-stream sessions and the cross-stream batch scheduler.

Typical use::

    runtime = ModelRuntime(load_model_folder(path), OnnxRuntimeEngine(path / "network.onnx"))
    scheduler = BatchScheduler(runtime)  # attaches itself to the runtime
    scheduler.start()
    session = runtime.open_stream(None, {"face_params": {...}}, input_rate=16000,
                                  on_ready=wake)  # called on a worker thread
    session.push_audio(pcm); session.end_of_audio()
    frames = session.take_frames()  # as they come; ``session.done`` at the end
"""

from a2f_inference.pipeline.batching import BatchStats, SchedulerObserver
from a2f_inference.pipeline.frames import Frame
from a2f_inference.pipeline.offline import run_offline
from a2f_inference.pipeline.runtime import ModelRuntime, StreamScheduler
from a2f_inference.pipeline.scheduler import BatchScheduler
from a2f_inference.pipeline.session import (
    ReadyCallback,
    StreamError,
    StreamOwner,
    StreamSession,
    WorkItem,
)
from a2f_inference.pipeline.stream_params import StreamParams

__all__ = [
    "BatchScheduler",
    "BatchStats",
    "Frame",
    "ModelRuntime",
    "ReadyCallback",
    "SchedulerObserver",
    "StreamError",
    "StreamOwner",
    "StreamParams",
    "StreamScheduler",
    "StreamSession",
    "WorkItem",
    "run_offline",
]
