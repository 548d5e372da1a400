"""The emotion side of one face stream: the face model's emotion input and the aggregate.

:class:`StreamEmotions` is what a :class:`~a2f_inference.pipeline.session.StreamSession`
asks for the emotion input of the frames it sends to the face network, and what the server
asks for each frame's ``EmotionAggregate``.

* Without an Audio2Emotion model the input is the client's keyframes interpolated at the
  frame's time (or the beginning / default emotion), as it always was.
* With one (``emotion_model``), the stream's audio also goes to the A2E model
  (:class:`~a2f_inference.pipeline.a2e_runtime.A2EStream`): every frame gets the A2E
  post-processing's smoothed output, with the client's keyframes as the preferred emotion.
  Face work is limited to frames whose emotion is known (:meth:`StreamEmotions.frames_ready`,
  :meth:`StreamEmotions.ready_until_s`).

Every row handed to the face network is remembered by native frame, so the aggregate's
``a2f_smoothed_output`` of an output frame is the face model's input for that frame by
construction (for a diffusion model whose 60 fps is not a multiple of the output rate: the
linear interpolation of the two native rows, as the frame's weights are).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from fractions import Fraction

import numpy as np
from google.protobuf import any_pb2

from a2f_inference.pipeline.a2e_postprocess import A2EPostParams
from a2f_inference.pipeline.a2e_runtime import A2EStream, EmotionRuntime
from a2f_inference.pipeline.emotion import EmotionTrack, Keyframe
from a2f_inference.pipeline.emotion_aggregate import TYPE_URL, encode_emotion_aggregate
from a2f_inference.pipeline.frames import DiffusionClock
from a2f_inference.pipeline.stream_params import StreamParams


class StreamEmotions:
    """Emotions of one stream (thread-safe).

    ``start``: the starting emotion (beginning emotion or the model's default). ``fps`` /
    ``native_fps``: output and face-model frame rates. ``on_advance()`` is called (A2E worker
    thread) when more frames' emotions are known, ``on_fail(err)`` when A2E failed.
    """

    def __init__(self, start: np.ndarray, *, fps: Fraction, native_fps: Fraction,
                 params: StreamParams, input_strength: float = 1.0,
                 emotion_model: EmotionRuntime | None = None,
                 on_advance: Callable[[], None] | None = None,
                 on_fail: Callable[[BaseException], None] | None = None) -> None:
        self.keyframes = EmotionTrack(start)
        self.fps = fps
        self.native_fps = native_fps
        ratio = native_fps / fps  # native frames per output frame
        self._step = ratio.numerator if ratio.denominator == 1 else None  # integer ratio
        self._ratio = ratio
        self._on_advance = on_advance
        self._on_fail = on_fail
        self._lock = threading.Lock()
        self._collect_lock = threading.Lock()
        self._has_keyframes = False
        self._inputs: list[tuple[float, dict[str, float]]] = []  # since the last aggregate
        self._face: dict[int, np.ndarray] = {}  # native frame -> face input row
        self._a2e_out: dict[int, np.ndarray] = {}  # output frame -> A2E output (step 5)
        self._smoothed: dict[int, np.ndarray] = {}  # output frame -> smoothed (step 8)
        self._face_low = 0  # native frames below this were forgotten
        self._out_low = 0  # output frames below this were forgotten
        self._done = 0  # output frames whose A2E emotions are known
        self._finished = False
        self.a2e: A2EStream | None = None
        if emotion_model is not None:
            post = A2EPostParams.resolve(emotion_model.folder.post,
                                         params.emotion_post_raw, params.emotion_raw,
                                         default_beginning=start.tolist())
            self.a2e = emotion_model.open_stream(post, fps=fps, input_strength=input_strength,
                                                 preferred=self._preferred,
                                                 on_ready=self._a2e_ready)

    # -- input side -------------------------------------------------------------------------
    def add_keyframes(self, keyframes: Iterable[Keyframe]) -> None:
        """Validate and add client keyframes (all or nothing); they also go into the next
        aggregate's ``input_emotions`` as sent."""
        items = list(keyframes)
        self.keyframes.add(items)
        with self._lock:
            self._inputs.extend((float(t), {str(k): float(v) for k, v in vals.items()})
                                for t, vals in items)
            self._has_keyframes = self._has_keyframes or bool(items)

    def push_audio(self, samples: np.ndarray) -> None:
        """The stream's audio at 16 kHz (float): to the A2E model, if any. Emotions this
        completes are taken in at once (no callback: the caller checks for new work)."""
        if self.a2e is not None:
            self.a2e.push_audio(samples)
            self._collect(self.a2e)

    def end(self) -> None:
        """No more audio (the caller checks for new work afterwards)."""
        if self.a2e is not None:
            self.a2e.end()
            self._collect(self.a2e)

    def close(self) -> None:
        if self.a2e is not None:
            self.a2e.close()
        with self._lock:
            self._face.clear()
            self._a2e_out.clear()
            self._smoothed.clear()

    def _preferred(self, time_s: float) -> np.ndarray | None:
        with self._lock:
            if not self._has_keyframes:
                return None
        out: np.ndarray = self.keyframes.at(np.array([time_s]))[0]
        return out

    def _a2e_ready(self, stream: A2EStream) -> None:
        """A2E worker thread: logits arrived (or the stream failed)."""
        if stream.error is not None:
            if self._on_fail is not None:
                self._on_fail(stream.error)
            return
        if self._collect(stream) and self._on_advance is not None:
            self._on_advance()

    def _collect(self, stream: A2EStream) -> bool:
        """Take in the frames the track completed; True when something changed."""
        # Two threads collect (the reader's push_audio, the A2E worker): taking and storing
        # are one step, so that frames are stored in the order they were taken and every
        # frame below ``_done`` is known. (Not under ``_lock``: the track calls
        # ``_preferred``, which takes ``_lock``, while it holds its own lock.)
        # ``finished`` is read first: once it is true every frame is in the take that follows
        # (read after, a frame finished in between would be marked known without its row).
        with self._collect_lock:
            finished = stream.track.finished
            got = stream.track.take_emotions()
            with self._lock:
                for i in range(len(got.smoothed)):
                    self._a2e_out[got.first + i] = got.a2e_output[i]
                    self._smoothed[got.first + i] = got.smoothed[i]
                self._done = max(self._done, got.first + len(got.smoothed))
                changed = bool(len(got.smoothed)) or finished != self._finished
                self._finished = finished
        return changed

    # -- what the face side may use -----------------------------------------------------------
    def frames_ready(self) -> int | None:
        """Output frames whose emotion input is known; None: no limit (no A2E model)."""
        if self.a2e is None:
            return None
        with self._lock:
            return None if self._finished else self._done

    def cap_frames(self, frames: int) -> int:
        """``frames`` (output frames the audio allows) limited to those whose emotion is
        known."""
        cap = self.frames_ready()
        return frames if cap is None else min(frames, cap)

    def cap_inferences(self, units: int, first: int, clock: DiffusionClock) -> int:
        """Diffusion: ``units`` (inferences the audio allows, ``first`` the next one) limited
        to those whose kept frames all have a known emotion."""
        cap = self.frames_ready()
        if cap is None:
            return units
        until = (cap - 1) / float(self.fps)  # latest time whose emotion is known
        k = first
        # warm-up frames (before t = 0) take the emotion at t = 0: frame 0 must be known
        while k < units and max(0.0, (clock.first_native(k) + clock.center - 1) / float(
                clock.native_fps)) <= until:
            k += 1
        return k

    def face_input(self, native: np.ndarray) -> np.ndarray:
        """float32 [len(native), 10]: the face model's emotion input for native frames
        ``native`` (frames before t = 0 get the value at t = 0); remembered for the
        aggregates."""
        g = np.asarray(native, dtype=np.int64).reshape(-1)
        times = np.maximum(g, 0) / float(self.native_fps)
        if self.a2e is None:
            rows = self.keyframes.at(times)
        else:
            rows = self._a2e_rows(g, times)
        with self._lock:
            for k, row in zip(g.tolist(), rows, strict=True):
                if k >= 0:
                    self._face[k] = row
        return rows

    def _a2e_rows(self, g: np.ndarray, times: np.ndarray) -> np.ndarray:
        with self._lock:
            if not self._smoothed:
                raise RuntimeError("no A2E emotion known yet for the frames asked")
            lo, hi = self._out_low, self._done - 1
            if self.native_fps == self.fps:  # one A2E row per face frame
                return np.stack([self._smoothed[min(max(int(k), lo), hi)] for k in g])
            idx = np.arange(lo, hi + 1)
            table = np.stack([self._smoothed[int(j)] for j in idx])
        xp = idx / float(self.fps)
        out = np.empty((times.size, table.shape[1]), dtype=np.float32)
        for c in range(table.shape[1]):
            out[:, c] = np.interp(times, xp, table[:, c])
        return out

    # -- the aggregate of an output frame ----------------------------------------------------
    def aggregate(self, index: int, time_code_s: float) -> any_pb2.Any:
        """``EmotionAggregate`` of output frame ``index`` packed for
        ``AnimationData.metadata["emotion_aggregate"]`` (:meth:`aggregate_bytes` in an Any)."""
        return any_pb2.Any(type_url=TYPE_URL, value=self.aggregate_bytes(index, time_code_s))

    def aggregate_bytes(self, index: int, time_code_s: float) -> bytes:
        """The serialized ``EmotionAggregate`` of output frame ``index`` (frames are asked
        for in order; what earlier frames held is forgotten)."""
        if self._step is not None:
            lo, frac = index * self._step, Fraction(0)
        else:
            pos = index * self._ratio
            lo = math.floor(pos)
            frac = pos - lo
        with self._lock:
            inputs, self._inputs = self._inputs, []
            a2e = self._a2e_out.get(index)
            smoothed = self._face_at(lo, frac)
            # frames are packed in order and after their face input: what lies before this
            # one is no longer needed, except the last known A2E row (face frames past the
            # end of the A2E frames reuse it, and they may be made after this one is sent)
            while self._face_low < lo:
                self._face.pop(self._face_low, None)
                self._face_low += 1
            while self._out_low < min(index, self._done - 1):
                self._a2e_out.pop(self._out_low, None)
                self._smoothed.pop(self._out_low, None)
                self._out_low += 1
        if smoothed is None:  # not a frame the face model saw (should not happen)
            smoothed = self.keyframes.at(np.array([time_code_s]))[0]
        return encode_emotion_aggregate(time_code_s, smoothed, a2e, inputs)

    def _face_at(self, lo: int, frac: Fraction) -> np.ndarray | None:
        a = self._face.get(lo)
        if a is None or frac == 0:
            return a
        b = self._face.get(lo + 1)
        if b is None:
            return a
        w = float(frac)
        out: np.ndarray = (1.0 - w) * a + w * b
        return out

