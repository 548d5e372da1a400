"""One audio stream: its buffers, windowing, emotions, GRU state and finished frames.

A :class:`StreamSession` is opened by :meth:`ModelRuntime.open_stream
<a2f_inference.pipeline.runtime.ModelRuntime.open_stream>`. The caller (the gRPC servicer,
or :func:`~a2f_inference.pipeline.scheduler.run_offline`) pushes PCM and emotion keyframes
and takes frames; the model's :class:`~a2f_inference.pipeline.scheduler.BatchScheduler`
pulls ready windows from the session on its worker thread, runs them batched with other
streams' windows and hands the outputs back. All public methods are thread-safe.

Windowing (sizes always from the model folder's ``audio_params``):

* regression: one frame per inference at the output rate; frame k at sample
  t_k = k * 16000 / fps reads [t_k - buffer_ofs, t_k - buffer_ofs + buffer_len), zero-padded
  outside the received audio. While streaming, frame k is made once t_k + (buffer_len -
  buffer_ofs) samples have arrived; after ``end_of_audio`` every frame with t_k < N is made.
* diffusion: see :class:`~a2f_inference.pipeline.frames.DiffusionClock`; the native 60 fps
  frames are post-processed at 60 fps (the filters and the temporal solve run at the model's
  rate), then brought to the output rate: when the output rate divides 60 every
  (60 / fps)-th frame is taken (aligned to t = 0); otherwise the weights are interpolated
  linearly between the two native frames around each output time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from a2f_inference.pipeline.emotion import EmotionTrack, Keyframe
from a2f_inference.pipeline.frames import (
    DiffusionClock,
    Frame,
    RegressionClock,
    as_fraction,
    frames_before,
)
from a2f_inference.pipeline.params import (
    FACE_PARAM_KEYS,
    BlendshapeParamsNim,
    EmotionParams,
    EmotionPostProcessingParams,
    FaceParams,
)
from a2f_inference.pipeline.resample import StreamingResampler
from a2f_volume.errors import A2FError, InvalidArgumentError

if TYPE_CHECKING:
    from a2f_inference.pipeline.runtime import ModelRuntime

logger = logging.getLogger(__name__)

#: Sample rate of the networks' audio input.
NETWORK_RATE_HZ = 16000
#: Output frame rates accepted by :meth:`ModelRuntime.open_stream`, inclusive.
MIN_FPS = 1.0
MAX_FPS = 240.0

_NIM_KEYS = (
    "face_params", "face_integer_params", "face_float_array_params", "bs_weight_multipliers",
    "bs_weight_offsets", "enable_clamping_bs_weight", "live_transition_time",
    "beginning_emotion", "emotion_params", "emotion_post_processing_params",
)  # fmt: skip


class PostProcessor(Protocol):
    """Per-stream network output -> 68 weights (``pipeline.postprocess.FramePostprocessor``)."""

    def process(self, rows: np.ndarray, times: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class StreamParams:
    """The validated per-stream parameters of a NIM stream header.

    ``face_overrides`` holds the NIM ``face_params`` (camelCase keys, already range-checked);
    they are laid over the identity's ``model_config`` when the stream opens
    (:meth:`face_for`). ``has_beginning_emotion`` tells whether ``emotion.beginning_emotion``
    was given (otherwise the model's ``default_emotion`` starts the stream).
    """

    face_overrides: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    blendshapes: BlendshapeParamsNim = field(default_factory=BlendshapeParamsNim)
    emotion: EmotionParams = field(default_factory=EmotionParams)
    emotion_post: EmotionPostProcessingParams = field(
        default_factory=EmotionPostProcessingParams)
    has_beginning_emotion: bool = False

    @classmethod
    def from_nim(cls, params: Mapping[str, Any] | None = None) -> StreamParams:
        """Build from the plain-dict form of a stream header.

        Keys (all optional): ``face_params`` (camelCase float map), ``bs_weight_multipliers``,
        ``bs_weight_offsets`` (maps by blendshape name), ``enable_clamping_bs_weight`` (bool),
        ``live_transition_time``, ``beginning_emotion`` (or both inside ``emotion_params``),
        ``emotion_post_processing_params`` (map). Validation errors of the parameter classes
        (:class:`InvalidArgumentError` naming the key and the allowed range) pass through.
        """
        p = dict(params or {})
        unknown = [k for k in p if k not in _NIM_KEYS]
        if unknown:
            raise InvalidArgumentError(
                f"stream parameters: unknown key {unknown[0]!r}; allowed keys: "
                f"{', '.join(_NIM_KEYS)}")
        for group in ("face_integer_params", "face_float_array_params"):
            if p.get(group):
                raise InvalidArgumentError(
                    f"face_params.{group.removeprefix('face_')}: {sorted(p[group])} not "
                    "supported; only float_params are (keys: "
                    f"{', '.join(FACE_PARAM_KEYS)})")
        face = p.get("face_params") or {}
        if not isinstance(face, Mapping):
            raise InvalidArgumentError("face_params: expected a map of name -> number")
        # validate keys and ranges now (the defaults only matter at open time)
        FaceParams.from_nim(face, _ZERO_FACE)
        bs = BlendshapeParamsNim.from_nim(
            p.get("bs_weight_multipliers"), p.get("bs_weight_offsets"),
            p.get("enable_clamping_bs_weight", False))
        emo_in: dict[str, Any] = dict(p.get("emotion_params") or {})
        for k in ("live_transition_time", "beginning_emotion"):
            if k in p:
                emo_in[k] = p[k]
        emotion = EmotionParams.from_nim(emo_in)
        post = EmotionPostProcessingParams.from_nim(p.get("emotion_post_processing_params") or {})
        return cls(MappingProxyType({str(k): float(v) for k, v in face.items()}), bs, emotion,
                   post, "beginning_emotion" in emo_in)

    def face_for(self, config: Mapping[str, float]) -> FaceParams:
        """The stream's :class:`FaceParams`: ``face_overrides`` over an identity's config."""
        return FaceParams.from_nim(self.face_overrides, config)


_ZERO_FACE = FaceParams(**{snake: 0.0 for snake, _ in FACE_PARAM_KEYS.values()})


class StreamError(A2FError):
    """A stream failed inside the pipeline (inference or post-processing)."""

    status = "INTERNAL"


class _Samples:
    """A growing 1-D float32 signal that forgets what no window needs any more.

    Held samples are ``_buf[_off : _off + _len]``; forgetting only moves ``_off``, and the
    buffer is compacted when an append needs the room (each sample is moved at most a few
    times, whatever the chunk sizes)."""

    def __init__(self) -> None:
        self._buf = np.zeros(1 << 15, dtype=np.float32)
        self._off = 0  # position of the first held sample in _buf
        self._base = 0  # absolute index of the first held sample
        self._len = 0  # held samples
        self.total = 0  # samples appended so far

    def append(self, x: np.ndarray) -> None:
        n = x.size
        if n == 0:
            return
        if self._off + self._len + n > self._buf.size:
            held = self._buf[self._off : self._off + self._len]
            if self._len + n > self._buf.size // 2:  # grow
                new = np.zeros(max(2 * self._buf.size, 2 * (self._len + n)), dtype=np.float32)
                new[: self._len] = held
                self._buf = new
            else:  # compact in place
                self._buf[: self._len] = held
            self._off = 0
        end = self._off + self._len
        self._buf[end : end + n] = x
        self._len += n
        self.total += n

    def window(self, start: int, length: int, out: np.ndarray) -> None:
        """Copy [start, start + length) into ``out`` (zeros outside what is held)."""
        lo = max(start, self._base)
        hi = min(start + length, self._base + self._len)
        if hi <= lo:
            out[...] = 0.0
            return
        if lo > start:
            out[: lo - start] = 0.0
        if hi < start + length:
            out[hi - start :] = 0.0
        src = self._off + lo - self._base
        out[lo - start : hi - start] = self._buf[src : src + hi - lo]

    def windows(self, starts: np.ndarray, length: int, out: np.ndarray | None = None
                ) -> np.ndarray:
        """``[len(starts), length]`` windows (ascending starts), zero-padded like
        :meth:`window`; written into ``out`` when given."""
        lo = int(starts[0])
        hi = int(starts[-1]) + length
        if lo >= self._base and hi <= self._base + self._len:  # all held: no staging copy
            seg = self._buf[self._off + lo - self._base : self._off + hi - self._base]
        else:
            seg = np.empty(hi - lo, dtype=np.float32)
            self.window(lo, seg.size, seg)
        if out is None:
            out = np.empty((len(starts), length), dtype=np.float32)
        for row, start in zip(out, (starts - lo).tolist(), strict=True):
            row[:] = seg[start : start + length]  # plain slice copies: the fastest way here
        return out

    def discard_before(self, pos: int) -> None:
        drop = min(pos - self._base, self._len)
        if drop <= 0:
            return
        self._off += drop
        self._len -= drop
        self._base += drop


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

    def __init__(self, runtime: ModelRuntime, *, identity_index: int, params: StreamParams,
                 face: FaceParams, postprocessor: PostProcessor, input_rate: int,
                 output_fps: float, constant_noise: bool, seed: int | None) -> None:
        folder = runtime.folder
        self.runtime = runtime
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
        self._pp: PostProcessor | None = postprocessor
        self._resampler: StreamingResampler | None = StreamingResampler(
            self.input_rate, NETWORK_RATE_HZ)
        start = (np.asarray(params.emotion.beginning_emotion, dtype=np.float32)
                 if params.has_beginning_emotion else folder.default_emotion)
        self._emotions = EmotionTrack(start)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._signal = _Samples()
        self._carry = b""
        self._pcm = bytearray()  # original-rate PCM from sample self._pcm_base on
        self._pcm_base = 0
        self._n_orig = 0
        self._ended = False
        self._closed = False
        self._error: BaseException | None = None
        self._next_unit = 0  # next regression frame / diffusion inference to hand out
        self._in_flight = 0
        self._ready_since: float | None = None
        # native frames (post-processed weights) not yet turned into output frames
        self._native: deque[np.ndarray] = deque()
        self._native_base = 0  # native index of self._native[0]
        self._native_made = 0  # native frames made so far (they come in order)
        self._next_out = 0  # next output frame index to release
        self._out: list[Frame] = []
        self._taken_all = False
        self.regression_clock: RegressionClock | None = None
        self.diffusion_clock: DiffusionClock | None = None
        if folder.kind == "regression":
            a = folder.audio
            self.regression_clock = RegressionClock(a.samplerate, a.buffer_len, a.buffer_ofs,
                                                    self._fps)
            self.lookahead_s = self.regression_clock.lookahead_s
            self._native_fps = self._fps
            assert folder.regression is not None
            self._implicit = folder.regression.implicit_emotion.astype(np.float32)
        else:
            a = folder.audio
            d = folder.diffusion
            assert d is not None
            self.diffusion_clock = DiffusionClock(a.samplerate, a.buffer_len, a.padding_left,
                                                  d.left_truncate, d.center, d.right_truncate)
            self.lookahead_s = self.diffusion_clock.lookahead_s
            self._native_fps = self.diffusion_clock.native_fps
            self._latents = np.zeros(runtime.latent_shape, dtype=np.float32)
            self._onehot = np.zeros((1, len(folder.identities)), dtype=np.float32)
            self._onehot[0, identity_index] = 1.0
            # SFC64: the fastest of numpy's generators; a full-size noise tensor is 16M values
            self._rng = np.random.Generator(np.random.SFC64(seed))
            self._noise: np.ndarray | None = None  # constant noise
            self._noise_next: np.ndarray | None = None  # drawn ahead on the post thread
        self._ratio = self._native_fps / self._fps  # native frames per output frame

    # -- public API ----------------------------------------------------------------------------
    @property
    def blendshape_names(self) -> tuple[str, ...]:
        """The 68 weight names, in the order of :attr:`Frame.weights`."""
        return self.runtime.blendshape_names

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
            self._pcm += data[:even]
            self._n_orig += raw.size
            x = raw.astype(np.float32) * np.float32(1.0 / 32768.0)
            assert self._resampler is not None
            y = self._resampler.process(x)
            self._signal.append(y)
            notify = self._has_new_work()
            self._release_locked()
        if notify:
            self.runtime._notify(self)

    def push_emotions(self, keyframes: Iterable[Keyframe]) -> None:
        """Add explicit emotion keyframes ``(time_code_s, {emotion: value})``.

        Names must be among the model's 10 emotions, values in [0, 1]; otherwise
        :class:`InvalidArgumentError` (listing the allowed names) and nothing is added.
        """
        self._check_open("push_emotions")
        self._emotions.add(keyframes)

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
            self._signal.append(self._resampler.flush())
            self._resampler = None
            self._ended = True
            self._has_new_work()
            self._release_locked()
            self._changed.notify_all()
        self.runtime._notify(self)

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
            self._pcm = bytearray()
            self._signal = _Samples()
            self._native.clear()
            self._out = []
            self._pp = None
            self._resampler = None
            if self.kind == "diffusion":
                self._noise = self._noise_next = None
            self._changed.notify_all()
        self.runtime._forget(self)

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
            self.runtime._notify(self)

    def complete(self, item: WorkItem, outputs: Mapping[str, np.ndarray]) -> None:
        """Post-processing thread: this item's slice of the batch outputs -> frames (items
        of one stream arrive in order). :func:`complete_items` does this for a whole batch."""
        complete_items([item], [outputs])

    def fail(self, err: BaseException) -> None:
        """Scheduler thread: the stream cannot go on; ``error`` tells the caller why."""
        with self._lock:
            if self._error is None:
                self._error = err if isinstance(err, A2FError) else StreamError(
                    f"inference failed on model {self.runtime.name!r}: "
                    f"{type(err).__name__}: {err}")
                if self._error is not err:
                    self._error.__cause__ = err
            self._in_flight = 0
            self._changed.notify_all()

    # -- internals -----------------------------------------------------------------------------
    def _check_open(self, what: str) -> None:
        if self._closed:
            raise InvalidArgumentError(f"{what} on a closed stream")
        if self._ended and what == "push_audio":
            raise InvalidArgumentError("push_audio after end_of_audio: the stream has ended")

    def _units_available(self) -> int:
        """Inference units (regression frames / diffusion inferences) that may run now."""
        n = self._signal.total
        if self.regression_clock is not None:
            c = self.regression_clock
            return c.total_frames(n) if self._ended else c.frames_ready(n)
        assert self.diffusion_clock is not None
        d = self.diffusion_clock
        return d.total_inferences(n) if self._ended else d.inferences_ready(n)

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
        times = np.arange(k0, k0 + n, dtype=np.float64) / float(self._fps)
        explicit = self._emotions.at(times)
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
        return WorkItem(self, n, {"input": window, "emotion": emotion}, k0, ready_at)

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
        emotion = self._emotions.at(np.maximum(g, 0.0) / float(d.native_fps))[None]
        if self.constant_noise:
            if self._noise is None:
                self._noise = self._rng.standard_normal(self.runtime.noise_shape,
                                                        dtype=np.float32)
            noise = self._noise
        elif self._noise_next is not None:  # drawn ahead while the engine was busy
            noise, self._noise_next = self._noise_next, None
        else:
            noise = self._rng.standard_normal(self.runtime.noise_shape, dtype=np.float32)
        self._next_unit = k + 1
        self._in_flight = 1
        self._signal.discard_before(d.window_start(k + 1))
        self._ready_since = None
        feeds = {"window": window, "identity": self._onehot, "emotion": emotion,
                 "input_latents": self._latents, "noise": noise}
        return WorkItem(self, 1, feeds, k, ready_at)

    def _prepare(self, item: WorkItem, outputs: Mapping[str, np.ndarray]
                 ) -> tuple[PostProcessor, np.ndarray, np.ndarray] | None:
        """This item's network rows for post-processing: ``(post-processor, rows, times)``,
        or None when there is nothing to post-process (stream closed, or diffusion frames
        that are all warm-up or past the end)."""
        pp = self._pp
        if pp is None:  # closed meanwhile
            return None
        if self.regression_clock is not None:
            rows = np.asarray(outputs["result"], dtype=np.float32).reshape(item.count, -1)
            times = np.arange(item.first_unit, item.first_unit + item.count) / float(self._fps)
            return pp, rows, times
        d = self.diffusion_clock
        assert d is not None
        pred = np.asarray(outputs["prediction"])[0, d.left : d.left + d.center]
        g0 = d.first_native(item.first_unit)
        with self._lock:
            total = d.total_native(self._signal.total) if self._ended else None
        lo = max(0, -g0)  # warm-up frames (before t = 0) are dropped
        hi = d.center if total is None else max(lo, min(d.center, total - g0))  # past the end
        if hi <= lo:
            return None
        times = np.arange(g0 + lo, g0 + hi, dtype=np.float64) / float(d.native_fps)
        return pp, np.ascontiguousarray(pred[lo:hi], dtype=np.float32), times

    def _finish(self, item: WorkItem, weights: np.ndarray | None) -> None:
        """Hand the item's weights over (None: nothing was post-processed) and release the
        frames that are complete."""
        with self._lock:
            if self._closed:
                return
            if self.regression_clock is not None:
                self._in_flight -= item.count
            if weights is None:
                return
            self._add_native(np.asarray(weights, dtype=np.float32))
            self._release_locked()

    def _draw_noise_ahead(self) -> None:
        """Post-processing thread: draw the noise of a later inference now, off the
        inference thread (a full-size draw is 16M values)."""
        with self._lock:
            if (self.constant_noise or self._closed or self._noise_next is not None
                    or (self._ended and self._next_unit >= self._units_available())):
                return
        noise = self._rng.standard_normal(self.runtime.noise_shape, dtype=np.float32)
        with self._lock:
            if self._noise_next is None and not self._closed:
                self._noise_next = noise

    def _add_native(self, weights: np.ndarray) -> None:
        for row in weights:
            self._native.append(row)
        self._native_made += weights.shape[0]

    def _total_out(self) -> int | None:
        if not self._ended:
            return None
        return frames_before(self._signal.total, NETWORK_RATE_HZ, self._fps)

    def _all_released(self) -> bool:
        total = self._total_out()
        return total is not None and self._next_out >= total

    def _release_locked(self) -> None:
        """Move every output frame whose native frames and audio are in to ``_out``."""
        if self._error is not None or self._closed:
            return
        total = self._total_out()
        total_native = None
        if self._ended:
            total_native = frames_before(self._signal.total, NETWORK_RATE_HZ, self._native_fps)
        # integer forms of the exact fractions (this runs once per frame)
        rn, rd = self._ratio.numerator, self._ratio.denominator
        fn, fd = self._fps.numerator, self._fps.denominator
        rate2 = 2 * self.input_rate * fd
        fps_f = float(self._fps)
        released = []
        a1 = self._pcm_base
        while total is None or self._next_out < total:
            i = self._next_out
            lo, rem = divmod(i * rn, rd)  # native position i * ratio = lo + rem / rd
            hi = lo + 1 if rem else lo
            if total_native is not None and hi >= total_native:
                hi, rem = lo, 0
            if hi >= self._native_made:
                break
            last = total is not None and i == total - 1
            # audio_boundary(i) = round_half_up(i * rate / fps)
            a0 = (i * rate2 + fn) // (2 * fn)
            a1 = self._n_orig if last else ((i + 1) * rate2 + fn) // (2 * fn)
            if not self._ended and a1 > self._n_orig:
                break
            a0, a1 = min(a0, self._n_orig), min(max(a1, a0), self._n_orig)
            w_lo = self._native[lo - self._native_base]
            if rem:
                f = rem / rd
                w = (1.0 - f) * w_lo + f * self._native[hi - self._native_base]
            else:
                w = w_lo
            audio = bytes(self._pcm[2 * (a0 - self._pcm_base) : 2 * (a1 - self._pcm_base)])
            released.append(Frame(i, i / fps_f, np.asarray(w, dtype=np.float32), audio))
            self._next_out = i + 1
            # forget native frames no later output frame needs
            keep_native = ((i + 1) * rn) // rd
            while self._native_base < keep_native and self._native:
                self._native.popleft()
                self._native_base += 1
        if released:
            drop = a1 - self._pcm_base  # PCM no later frame needs
            if drop > 0:
                del self._pcm[: 2 * drop]
                self._pcm_base = a1
            self._out.extend(released)
            self._changed.notify_all()


def complete_items(items: list[WorkItem], outputs: Iterable[Mapping[str, np.ndarray]]) -> None:
    """Post-processing of one batch: each item's slice of the outputs -> frames.

    Streams are post-processed together (:func:`~.postprocess.process_streams`: the solves
    of all streams of a blendshape set run vectorised, frame by frame). A stream whose own
    part fails (its rows, its filters) fails alone; the others go on.
    """
    from a2f_inference.pipeline.postprocess import FramePostprocessor, process_streams

    jobs: list[tuple[WorkItem, PostProcessor, np.ndarray, np.ndarray]] = []
    for it, out in zip(items, outputs, strict=True):
        try:
            job = it.session._prepare(it, out)
        except Exception as err:
            _post_failed(it.session, err)
            continue
        if job is None:
            it.session._finish(it, None)
        else:
            jobs.append((it, *job))
    together = [j for j in jobs if isinstance(j[1], FramePostprocessor)]
    alone = [j for j in jobs if not isinstance(j[1], FramePostprocessor)]
    if together:
        try:
            pps = [cast(FramePostprocessor, j[1]) for j in together]
            weights = process_streams(pps, [j[2] for j in together])
        except Exception as err:  # not attributable to one stream: all of them stop
            for it, *_ in together:
                _post_failed(it.session, err)
        else:
            for (it, *_), w in zip(together, weights, strict=True):
                it.session._finish(it, w)
    for it, pp, rows, times in alone:  # other post-processors, one stream at a time
        try:
            w = pp.process(rows, times)
        except Exception as err:
            _post_failed(it.session, err)
        else:
            it.session._finish(it, w)
    for it in items:
        if it.session.diffusion_clock is not None and it.session.error is None:
            it.session._draw_noise_ahead()


def _post_failed(session: StreamSession, err: BaseException) -> None:
    logger.error("stream on %s: post-processing failed: %s: %s", session.runtime.name,
                 type(err).__name__, err, exc_info=err)
    session.fail(err)
