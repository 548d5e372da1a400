"""One loaded model version: its folder, its engine and the streams open on it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from a2f_engine.base import Engine, TensorSpec
from a2f_engine.serving_graph import ServingGraphInfo
from a2f_inference.pipeline.a2e_runtime import EmotionRuntime
from a2f_inference.pipeline.params import OUTPUT_BLENDSHAPE_NAMES
from a2f_inference.pipeline.postprocess import FramePostprocessor
from a2f_inference.pipeline.row_layout import diffusion_shapes
from a2f_inference.pipeline.serving import ServingGraph
from a2f_inference.pipeline.session import ReadyCallback, StreamSession
from a2f_inference.pipeline.stream_params import MAX_FPS, MIN_FPS, NETWORK_RATE_HZ, StreamParams
from a2f_volume.errors import InvalidArgumentError, ModelFolderError
from a2f_volume.model_folder import ModelFolder, load_model_folder

logger = logging.getLogger(__name__)

#: Batch axis of tensors whose batch dimension is not the first one (spec section 2).
_BATCH_AXIS_BY_NAME = {"input_latents": 2, "output_latents": 2}


def batch_axis(spec: TensorSpec) -> int:
    """The batch axis of an engine tensor (its dynamic axis; known names otherwise)."""
    ax = spec.batch_axis
    if ax >= 0:
        return ax
    return _BATCH_AXIS_BY_NAME.get(spec.name, 0)


class StreamScheduler(Protocol):
    """What a runtime needs of the scheduler serving its streams (a
    :class:`~a2f_inference.pipeline.scheduler.BatchScheduler`)."""

    def submit(self, session: StreamSession) -> None:
        """``session`` may have ready windows (any thread)."""
        ...

    @property
    def running(self) -> bool: ...

    @property
    def stopped(self) -> bool: ...


class ModelRuntime:
    """A model version ready to serve streams: ``open_stream`` creates sessions.

    ``folder`` is a loaded :class:`ModelFolder` (or a path, loaded here); ``engine`` runs its
    network. ``max_batch`` defaults to the folder's ``trt_info`` ``MAX_BATCH_SIZE``, capped
    by the engine's own limit. A :class:`~a2f_inference.pipeline.scheduler.BatchScheduler`
    attaches itself (:meth:`attach`) and serves every stream opened on it; the runtime is
    the sessions' :class:`~a2f_inference.pipeline.session.StreamOwner`.

    ``serving``: the engine runs this composed serving graph instead of the network
    (:mod:`~a2f_inference.pipeline.serving`); its resident inputs are set here, once, from
    ``noise_seed``. None: the engine runs ``network.onnx`` as it is.
    """

    def __init__(self, folder: ModelFolder | str | os.PathLike[str], engine: Engine, *,
                 max_batch: int | None = None, serving: ServingGraphInfo | None = None,
                 noise_seed: int = 0) -> None:
        if not isinstance(folder, ModelFolder):
            folder = load_model_folder(folder)
        if folder.audio.samplerate != NETWORK_RATE_HZ:
            raise ModelFolderError(str(folder.path), "audio_params.samplerate",
                                   folder.audio.samplerate, f"{NETWORK_RATE_HZ}")
        self.folder = folder
        self.engine = engine
        self.name = folder.name
        self.kind = folder.kind
        self.identities: tuple[str, ...] = folder.identity_names
        self.blendshape_names: tuple[str, ...] = OUTPUT_BLENDSHAPE_NAMES
        limit = max_batch if max_batch is not None else folder.max_batch
        if limit < 1:
            raise InvalidArgumentError(f"max_batch {limit} must be >= 1")
        self.max_batch = max(1, min(limit, int(getattr(engine, "max_batch", limit) or limit)))
        self.serving = (ServingGraph(folder, engine, serving, noise_seed)
                        if serving is not None else None)
        resident = self.serving.resident if self.serving is not None else frozenset()
        self.input_specs: dict[str, TensorSpec] = {s.name: s for s in engine.inputs
                                                   if s.name not in resident}
        self.output_specs: dict[str, TensorSpec] = {s.name: s for s in engine.outputs}
        shapes: tuple[tuple[int, ...], tuple[int, ...]] = diffusion_shapes(folder)
        self.latent_shape, self.noise_shape = shapes
        self._lock = threading.Lock()
        self._sessions: set[StreamSession] = set()
        self.scheduler: StreamScheduler | None = None

    @property
    def lookahead_s(self) -> float:
        """Audio needed past a frame's time before it can be made (worst case)."""
        a = self.folder.audio
        if self.kind == "regression":
            return (a.buffer_len - a.buffer_ofs) / a.samplerate
        d = self.folder.diffusion
        assert d is not None
        native_fps = d.num_frames * a.samplerate / a.buffer_len
        return (a.buffer_len - d.left_truncate * a.samplerate / native_fps) / a.samplerate

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._sessions)

    def sessions(self) -> list[StreamSession]:
        with self._lock:
            return list(self._sessions)

    def open_stream(self, identity: str | None,
                    params: StreamParams | Mapping[str, Any] | None = None, *,
                    input_rate: int, output_fps: float = 30.0, constant_noise: bool = False,
                    seed: int | None = None, on_ready: ReadyCallback | None = None,
                    emotion_model: EmotionRuntime | None = None) -> StreamSession:
        """Open a stream.

        ``identity``: an identity of the model (case-insensitive; None = the first one).
        ``params``: a :class:`StreamParams` or its NIM dict form (validated here).
        ``input_rate``: sample rate of the PCM that will be pushed (16000..144000).
        ``output_fps``: frame rate of the output. ``constant_noise`` / ``seed``: diffusion
        noise (the same noise every inference when ``constant_noise``). ``on_ready``:
        called on a worker thread whenever the stream got frames, finished or failed.
        ``emotion_model``: an Audio2Emotion version whose smoothed output becomes the
        stream's emotion input (client keyframes then act as the preferred emotion);
        without it the keyframes are interpolated.
        Raises :class:`InvalidArgumentError` / :class:`NotFoundError` on bad input.
        """
        sp = params if isinstance(params, StreamParams) else StreamParams.from_nim(params)
        if (isinstance(output_fps, bool) or not isinstance(output_fps, int | float)
                or not MIN_FPS <= float(output_fps) <= MAX_FPS):
            raise InvalidArgumentError(
                f"output frame rate {output_fps!r} not allowed; allowed: {MIN_FPS:g}.."
                f"{MAX_FPS:g} fps")
        if isinstance(input_rate, bool) or not isinstance(input_rate, int | np.integer):
            raise InvalidArgumentError(f"input sample rate {input_rate!r} is not an integer")
        ident = self.folder.identity(identity)
        index = self.folder.identities.index(ident)
        face = sp.face_for(ident.config)
        native_fps = float(output_fps)
        if self.kind == "diffusion":
            d = self.folder.diffusion
            assert d is not None
            a = self.folder.audio
            native_fps = d.num_frames * a.samplerate / a.buffer_len
        pp = FramePostprocessor(self.folder, ident, face, sp.blendshapes, native_fps)
        session = StreamSession(self, self.folder, identity_index=index, params=sp, face=face,
                                postprocessor=pp, input_rate=int(input_rate),
                                output_fps=float(output_fps), constant_noise=constant_noise,
                                seed=seed, on_ready=on_ready, serving=self.serving,
                                emotion_model=emotion_model)
        with self._lock:
            self._sessions.add(session)
        logger.debug("stream opened on %s (identity %s, %d Hz, %.4g fps)", self.name,
                     ident.name, input_rate, output_fps)
        return session

    # -- the scheduler's side -----------------------------------------------------------------
    def attach(self, scheduler: StreamScheduler) -> None:
        """``scheduler`` serves the streams of this runtime from now on."""
        self.scheduler = scheduler

    def detach(self, scheduler: StreamScheduler) -> None:
        """``scheduler`` stopped; no-op when another one took over meanwhile."""
        if self.scheduler is scheduler:
            self.scheduler = None

    # -- StreamOwner: called by sessions -------------------------------------------------------
    def notify(self, session: StreamSession) -> None:
        """A session may have ready windows."""
        sched = self.scheduler
        if sched is not None:
            sched.submit(session)

    def forget(self, session: StreamSession) -> None:
        """A session was closed."""
        with self._lock:
            self._sessions.discard(session)
