"""One audio stream: its buffers, windowing, emotions, GRU state and finished frames.

A :class:`StreamSession` is opened by :meth:`ModelRuntime.open_stream
<a2f_inference.pipeline.runtime.ModelRuntime.open_stream>`. The caller (the gRPC servicer,
or :func:`~a2f_inference.pipeline.offline.run_offline`) pushes PCM and emotion keyframes
and takes frames; the model's :class:`~a2f_inference.pipeline.scheduler.BatchScheduler`
pulls ready windows from the session on its worker thread, runs them batched with other
streams' windows and hands the outputs back. All public methods are thread-safe.

The session talks to the object that opened it only through :class:`StreamOwner`
(``notify``: it may have ready windows; ``forget``: it was closed), and wakes its caller
through its own ``on_ready`` callback (given at ``open_stream``) whenever frames were made
or the stream failed.

Windowing (sizes from the folder's ``audio_params``): ``RegressionClock`` / ``DiffusionClock``
(``frames.py``; diffusion frames are post-processed at 60 fps, then resampled by ``output.py``).
Emotion inputs (A2E, keyframes): ``StreamEmotions`` (``stream_emotion.py``). A serving-graph
engine (``serving.py``) changes only the per-window feeds and what post-processing receives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from a2f_inference.pipeline.a2e_runtime import EmotionRuntime
from a2f_inference.pipeline.emotion import Keyframe
from a2f_inference.pipeline.frames import DiffusionClock, Frame, RegressionClock, as_fraction
from a2f_inference.pipeline.host_noise import HostNoise
from a2f_inference.pipeline.output import FrameAssembler
from a2f_inference.pipeline.params import OUTPUT_BLENDSHAPE_NAMES, FaceParams
from a2f_inference.pipeline.postprocess import FramePostprocessor
from a2f_inference.pipeline.resample import StreamingResampler
from a2f_inference.pipeline.row_layout import diffusion_shapes
from a2f_inference.pipeline.samples import SampleBuffer
from a2f_inference.pipeline.serving import Projected, ServingGraph
from a2f_inference.pipeline.stream_emotion import StreamEmotions
from a2f_inference.pipeline.stream_params import NETWORK_RATE_HZ, StreamParams
from a2f_volume.errors import A2FError, InvalidArgumentError
from a2f_volume.model_folder import ModelFolder

logger = logging.getLogger(__name__)

#: Called on a worker thread when a session got frames, finished or failed.
ReadyCallback = Callable[["StreamSession"], None]


class StreamOwner(Protocol):
    """What a session needs of the object that opened it (a :class:`ModelRuntime
    <a2f_inference.pipeline.runtime.ModelRuntime>`)."""

    @property
    def name(self) -> str:
        """The model's name (for messages)."""
        ...

    def notify(self, session: StreamSession) -> None:
        """``session`` may have ready windows (any thread)."""
        ...

    def forget(self, session: StreamSession) -> None:
        """``session`` was closed."""
        ...


class StreamError(A2FError):
    """A stream failed inside the pipeline (inference or post-processing)."""

    status = "INTERNAL"


@dataclass
class WorkItem:
    """Ready windows of one stream for one batch: inputs with a batch axis of ``count``."""

    session: StreamSession
    count: int
    feeds: dict[str, np.ndarray]
    first_unit: int  # regression: first frame index; diffusion: inference index
    ready_at: float  # perf_counter when the windows became ready (queue wait metric)
    batch_pos: int = -1  # position of the first window in the batch (set by the scheduler)


class StreamSession:
    """One stream on one model version; create with ``ModelRuntime.open_stream``."""

    def __init__(self, owner: StreamOwner, folder: ModelFolder, *, identity_index: int,
                 params: StreamParams, face: FaceParams, postprocessor: FramePostprocessor,
                 input_rate: int, output_fps: float, constant_noise: bool, seed: int | None,
                 on_ready: ReadyCallback | None = None,
                 serving: ServingGraph | None = None,
                 emotion_model: EmotionRuntime | None = None) -> None:
        self.owner = owner
        self._serving = serving  # the engine runs the serving graph (None: the network)
        self.on_ready = on_ready
        self.params = params
        self.face = face
        self.identity = folder.identities[identity_index].name
        self.input_rate = int(input_rate)
        self.output_fps = float(output_fps)
        self.constant_noise = constant_noise
        self.kind = folder.kind
        self._fps = as_fraction(output_fps)
        self._identity_index = identity_index
        self._input_strength = float(face.input_strength)
        self._pp: FramePostprocessor | None = postprocessor
        self._resampler: StreamingResampler | None = StreamingResampler(
            self.input_rate, NETWORK_RATE_HZ)
        start = (np.asarray(params.emotion.beginning_emotion, dtype=np.float32)
                 if params.has_beginning_emotion else folder.default_emotion)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._signal = SampleBuffer()
        self._carry = b""
        self._ended = False
        self._closed = False
        self._error: BaseException | None = None
        self._next_unit = 0  # next regression frame / diffusion inference to hand out
        self._in_flight = 0
        self._ready_since: float | None = None
        self._out: list[Frame] = []
        self._taken_all = False
        self.regression_clock: RegressionClock | None = None
        self.diffusion_clock: DiffusionClock | None = None
        if folder.kind == "regression":
            a = folder.audio
            self.regression_clock = RegressionClock(a.samplerate, a.buffer_len, a.buffer_ofs,
                                                    self._fps)
            self.lookahead_s = self.regression_clock.lookahead_s
            native_fps = self._fps
            assert folder.regression is not None
            self._implicit = folder.regression.implicit_emotion.astype(np.float32)
        else:
            a = folder.audio
            d = folder.diffusion
            assert d is not None
            self.diffusion_clock = DiffusionClock(a.samplerate, a.buffer_len, a.padding_left,
                                                  d.left_truncate, d.center, d.right_truncate)
            self.lookahead_s = self.diffusion_clock.lookahead_s
            native_fps = self.diffusion_clock.native_fps
            self._latent_shape, self._noise_shape = diffusion_shapes(folder)
            self._latents = np.zeros(self._latent_shape, dtype=np.float32)
            self._onehot = np.zeros((1, len(folder.identities)), dtype=np.float32)
            self._onehot[0, identity_index] = 1.0
            self._noise = HostNoise(self._noise_shape, constant=constant_noise, seed=seed)
        self._assembler = FrameAssembler(self.input_rate, self._fps, native_fps)
        self.emotions = StreamEmotions(  # each frame's emotion input, and the aggregates
            start, fps=self._fps, native_fps=native_fps, params=params,
            input_strength=self._input_strength, emotion_model=emotion_model,
            on_advance=lambda: owner.notify(self), on_fail=self._emotion_failed)

    # -- public API ----------------------------------------------------------------------------
    @property
    def blendshape_names(self) -> tuple[str, ...]:
        """The 68 weight names, in the order of :attr:`Frame.weights`."""
        return OUTPUT_BLENDSHAPE_NAMES

    @property
    def output_rate(self) -> int:
        """Sample rate of the PCM in :attr:`Frame.audio` (the input rate)."""
        return self.input_rate

    @property
    def done(self) -> bool:
        """True once ``end_of_audio`` was called and every frame has been taken."""
        with self._lock:
            return self._taken_all

    @property
    def finished(self) -> bool:
        """True once ``end_of_audio`` was called and every frame has been made (maybe not
        yet taken)."""
        with self._lock:
            return self._ended and self._all_released()

    @property
    def error(self) -> BaseException | None:
        """The failure that stopped this stream (inference or post-processing), if any."""
        return self._error

    @property
    def closed(self) -> bool:
        return self._closed

    def push_audio(self, pcm: bytes) -> None:
        """Append 16-bit little-endian mono PCM at ``input_rate`` (any byte count)."""
        notify = False
        with self._lock:
            self._check_open("push_audio")
            data = self._carry + bytes(pcm)
            even = len(data) & ~1
            self._carry = data[even:]
            if even == 0:
                return
            raw = np.frombuffer(data, dtype="<i2", count=even // 2)
            self._assembler.add_pcm(data[:even], raw.size)
            x = raw.astype(np.float32) * np.float32(1.0 / 32768.0)
            assert self._resampler is not None
            y = self._resampler.process(x)
            self._signal.append(y)
            self.emotions.push_audio(y)
            notify = self._has_new_work()
            self._release_locked()
        if notify:
            self.owner.notify(self)

    def push_emotions(self, keyframes: Iterable[Keyframe]) -> None:
        """Add explicit emotion keyframes ``(time_code_s, {emotion: value})``.

        Names must be among the model's 10 emotions, values in [0, 1]; otherwise
        :class:`InvalidArgumentError` (listing the allowed names) and nothing is added.
        """
        self._check_open("push_emotions")
        self.emotions.add_keyframes(keyframes)

    def end_of_audio(self) -> None:
        """No more audio: every remaining frame is made (zero-padded past the end)."""
        with self._lock:
            self._check_open("end_of_audio")
            if self._ended:
                return
            if self._carry:
                logger.debug("stream ended with an odd trailing byte; dropped")
                self._carry = b""
            assert self._resampler is not None
            tail = self._resampler.flush()
            self._signal.append(tail)
            self.emotions.push_audio(tail)
            self.emotions.end()
            self._resampler = None
            self._ended = True
            self._has_new_work()
            self._release_locked()
            self._changed.notify_all()
        self.owner.notify(self)

    def take_frames(self) -> list[Frame]:
        """Frames made since the last call, in order (possibly none)."""
        with self._lock:
            out, self._out = self._out, []
            if self._ended and self._all_released():
                self._taken_all = True
            return out

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until frames are waiting, the stream is done or failed (or the timeout)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: bool(self._out) or self._error is not None or self._closed
                or (self._ended and self._all_released()), timeout_s)

    def close(self) -> None:
        """Free every buffer and leave the scheduler (idempotent; frames not taken are lost)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._assembler.clear()
            self._signal = SampleBuffer()
            self._out = []
            self._pp = None
            self._resampler = None
            if self.kind == "diffusion":
                self._noise.clear()
            self._changed.notify_all()
        self.emotions.close()
        self.owner.forget(self)

    # -- scheduler side ------------------------------------------------------------------------
    def take_work(self, max_count: int, out: Mapping[str, np.ndarray] | None = None
                  ) -> WorkItem | None:
        """Scheduler thread: up to ``max_count`` ready windows (diffusion: at most one, and
        none while one is in flight), or None.

        ``out`` (optional): per input, an array with room for ``max_count`` windows along
        axis 0, where the windows are written (the scheduler's batch buffer; saves a copy).
        The item's feeds are then views of it. Regression only; ignored otherwise."""
        with self._lock:
            if self._closed or self._error is not None or max_count <= 0:
                return None
            if self.regression_clock is not None:
                return self._take_regression(max_count, out)
            return self._take_diffusion()

    def ready_windows(self) -> int:
        """Scheduler: windows :meth:`take_work` would give now (no limit)."""
        with self._lock:
            if self._closed or self._error is not None:
                return 0
            if self.diffusion_clock is not None and self._in_flight:
                return 0
            n = self._units_available() - self._next_unit
            return max(0, min(n, 1) if self.diffusion_clock is not None else n)

    def accept(self, item: WorkItem, outputs: Mapping[str, np.ndarray]) -> None:
        """Scheduler thread, right after inference: take over the carried state (diffusion
        GRU latents) so the stream's next window can run before post-processing is done."""
        if self.diffusion_clock is None:
            return
        latents = np.ascontiguousarray(outputs["output_latents"], dtype=np.float32)
        with self._lock:
            if self._closed:
                return
            self._latents = latents
            self._in_flight = 0
            more = self._units_available() > self._next_unit
            if more:
                self._ready_since = time.perf_counter()
        if more:
            self.owner.notify(self)

    def fail(self, err: BaseException) -> None:
        """Scheduler thread: the stream cannot go on; ``error`` tells the caller why."""
        with self._lock:
            if self._error is None:
                self._error = err if isinstance(err, A2FError) else StreamError(
                    f"inference failed on model {self.owner.name!r}: "
                    f"{type(err).__name__}: {err}")
                if self._error is not err:
                    self._error.__cause__ = err
            self._in_flight = 0
            self._changed.notify_all()

    def _emotion_failed(self, err: BaseException) -> None:
        self.fail(err)
        self.signal_ready()

    def signal_ready(self) -> None:
        """Worker thread: frames were made, or the stream finished or failed; calls the
        ``on_ready`` callback given at ``open_stream`` (errors are logged, not raised)."""
        cb = self.on_ready
        if cb is None:
            return
        try:
            cb(self)
        except Exception:  # a listener must not stop the worker
            logger.exception("on_ready callback of a stream on %s failed", self.owner.name)

    # -- post-processing side (pipeline.completion) ----------------------------------------
    def prepare_post(self, item: WorkItem, outputs: Mapping[str, np.ndarray]
                     ) -> tuple[FramePostprocessor, np.ndarray | Projected] | None:
        """This item's network rows for post-processing: ``(post-processor, rows)``,
        or None when there is nothing to post-process (stream closed, or diffusion frames
        that are all warm-up or past the end)."""
        pp = self._pp
        if pp is None:  # closed meanwhile
            return None
        if self.regression_clock is not None:
            if self._serving is not None:
                return pp, self._serving.projections(outputs, self._identity_index, 0,
                                                     item.count)
            rows = np.asarray(outputs["result"], dtype=np.float32).reshape(item.count, -1)
            return pp, rows
        d = self.diffusion_clock
        assert d is not None
        g0 = d.first_native(item.first_unit)
        with self._lock:
            total = d.total_native(self._signal.total) if self._ended else None
        lo = max(0, -g0)  # warm-up frames (before t = 0) are dropped
        hi = d.center if total is None else max(lo, min(d.center, total - g0))  # past the end
        if hi <= lo:
            return None
        if self._serving is not None:  # the graph kept frames left .. left + center
            return pp, self._serving.projections(outputs, self._identity_index, lo, hi)
        pred = np.asarray(outputs["prediction"])[0, d.left : d.left + d.center]
        return pp, np.ascontiguousarray(pred[lo:hi], dtype=np.float32)

    def finish_post(self, item: WorkItem, weights: np.ndarray | None) -> None:
        """Hand the item's weights over (None: nothing was post-processed) and release the
        frames that are complete."""
        with self._lock:
            if self._closed:
                return
            if self.regression_clock is not None:
                self._in_flight -= item.count
            if weights is None:
                return
            self._assembler.add_native(np.asarray(weights, dtype=np.float32))
            self._release_locked()

    def draw_noise_ahead(self) -> None:
        """Post-processing thread: draw the noise of a later inference now, off the
        inference thread (a full-size draw is 16M values)."""
        with self._lock:
            if (self._serving is not None or self._closed or not self._noise.wants_ahead
                    or (self._ended and self._next_unit >= self._units_available())):
                return
        noise = self._noise.draw()
        with self._lock:
            if not self._closed:
                self._noise.offer_ahead(noise)

    # -- internals -----------------------------------------------------------------------------
    def _check_open(self, what: str) -> None:
        if self._closed:
            raise InvalidArgumentError(f"{what} on a closed stream")
        if self._ended and what == "push_audio":
            raise InvalidArgumentError("push_audio after end_of_audio: the stream has ended")

    def _units_available(self) -> int:
        """Inference units (regression frames / diffusion inferences) that may run now."""
        n = self._signal.total
        if self.regression_clock is not None:  # A2E: only frames whose emotion is known
            c = self.regression_clock
            return self.emotions.cap_frames(c.total_frames(n) if self._ended
                                            else c.frames_ready(n))
        assert self.diffusion_clock is not None
        d = self.diffusion_clock
        units = d.total_inferences(n) if self._ended else d.inferences_ready(n)
        return self.emotions.cap_inferences(units, self._next_unit, d)

    def _has_new_work(self) -> bool:
        avail = self._units_available()
        if avail > self._next_unit and self._ready_since is None:
            self._ready_since = time.perf_counter()
        return avail > self._next_unit

    def _take_regression(self, max_count: int, out: Mapping[str, np.ndarray] | None
                         ) -> WorkItem | None:
        c = self.regression_clock
        assert c is not None
        k0 = self._next_unit
        n = min(self._units_available() - k0, max_count)
        if n <= 0:
            return None
        ready_at = self._ready_since or time.perf_counter()
        starts = c.window_starts(k0, n)
        explicit = self.emotions.face_input(np.arange(k0, k0 + n))
        width = self._implicit.size + explicit.shape[1]
        if (out is not None and out["input"].shape[1:] == (1, c.buffer_len)
                and out["emotion"].shape[1:] == (1, width)):
            window = out["input"][:n]
            emotion = out["emotion"][:n]
            self._signal.windows(starts, c.buffer_len, out=window[:, 0, :])
        else:
            window = self._signal.windows(starts, c.buffer_len)[:, None, :]
            emotion = np.empty((n, 1, width), dtype=np.float32)
        if self._input_strength != 1.0:
            window *= np.float32(self._input_strength)
        emotion[:, 0, : self._implicit.size] = self._implicit
        emotion[:, 0, self._implicit.size :] = explicit
        self._next_unit = k0 + n
        self._in_flight += n
        self._signal.discard_before(c.window_start(self._next_unit))
        self._ready_since = None if self._units_available() <= self._next_unit else ready_at
        feeds = {"input": window, "emotion": emotion}
        if self._serving is not None:
            feeds.update(self._serving.window_feeds(self.face, None, n, out))
        return WorkItem(self, n, feeds, k0, ready_at)

    def _take_diffusion(self) -> WorkItem | None:
        d = self.diffusion_clock
        assert d is not None
        if self._in_flight:
            return None
        k = self._next_unit
        if self._units_available() <= k:
            return None
        ready_at = self._ready_since or time.perf_counter()
        window = np.empty((1, d.buffer_len), dtype=np.float32)
        self._signal.window(d.window_start(k), d.buffer_len, window[0])
        if self._input_strength != 1.0:
            window *= np.float32(self._input_strength)
        # one emotion vector per kept frame (warm-up frames get the value at t = 0)
        g = np.arange(d.first_native(k), d.first_native(k) + d.center, dtype=np.float64)
        emotion = self.emotions.face_input(g)[None]
        feeds = {"window": window, "identity": self._onehot, "emotion": emotion,
                 "input_latents": self._latents}
        if self._serving is not None:  # the engine makes the noise (no host draw)
            feeds.update(self._serving.window_feeds(self.face, self._noise.rng, 1))
        else:
            feeds["noise"] = self._noise.next()
        self._next_unit = k + 1
        self._in_flight = 1
        self._signal.discard_before(d.window_start(k + 1))
        self._ready_since = None
        return WorkItem(self, 1, feeds, k, ready_at)

    # -- output frames (under the lock) ----------------------------------------------------
    def _network_samples(self) -> int | None:
        """16 kHz samples of the whole stream once it has ended; None before."""
        return self._signal.total if self._ended else None

    def _all_released(self) -> bool:
        return self._assembler.all_released(self._network_samples())

    def _release_locked(self) -> None:
        """Move every output frame whose native frames and audio are in to ``_out``."""
        if self._error is not None or self._closed:
            return
        released = self._assembler.release(self._network_samples())
        if released:
            self._out.extend(released)
            self._changed.notify_all()
