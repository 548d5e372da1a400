"""Audio2Emotion post-processing: classifier logits -> the 10 A2F emotions, per stream.

Every output frame of a stream goes through the steps below (frames between two A2E runs
reuse the last logits but still take a step, so blending and smoothing advance per frame):

1. ``softmax(logits * emotion_contrast)`` over the classifier classes;
2. classes that map to no A2F emotion (correspondence -1, i.e. neutral) are set to 0;
3. only the ``max_emotions`` largest values are kept (ties: the earlier class wins);
4. they are scattered into the 10-vector by the correspondence; A2F emotions with no source
   keep their previous value (the beginning emotion on the first frame);
5. live blend ``e = (1 - live_blend_coef) * e + live_blend_coef * previous``; ``e`` becomes
   the next ``previous`` (this is the *A2E output* reported in the aggregate);
6. when ``enable_preferred_emotion``: ``e = (1 - s) * e + s * preferred`` with
   ``s = preferred_emotion_strength``; the preferred emotion is the client's keyframe value at
   the frame's time when the client sent keyframes, else the model's ``preferred_emotion``;
7. transition smoothing, not on the first frame: ``w = min(fixed_dt / max(transition_smoothing,
   1e-3), 1)``, ``e = w * e + (1 - w) * previous_smoothed``; ``e`` is remembered;
8. output ``e * emotion_strength`` (the emotion input of the face model for the frame).

Parameters start from the A2E folder's ``post_processing_config`` and are overridden per
stream by the header's ``emotion_post_processing_params`` and ``emotion_params``
(``live_transition_time`` overrides ``transition_smoothing``; ``beginning_emotion`` sets the
starting vector). Validation is :mod:`a2f_inference.pipeline.params`'s: a bad value raises
:class:`a2f_volume.errors.InvalidArgumentError` naming the key and its allowed range.

All arithmetic is float64 numpy over a leading stream axis, so one call advances many
streams (:func:`step_streams`); results are returned as float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from a2f_inference.pipeline.params import EmotionParams, EmotionPostProcessingParams
from a2f_volume.emotion_folder import EmotionPostConfig

#: Lower bound of ``transition_smoothing`` in the smoothing weight.
MIN_TRANSITION_S = 1e-3


@dataclass(frozen=True)
class A2EPostParams:
    """The post-processing parameters of one stream (model defaults + header overrides)."""

    emotion_contrast: float
    live_blend_coef: float
    enable_preferred_emotion: bool
    preferred_emotion_strength: float
    emotion_strength: float
    max_emotions: int
    fixed_dt: float
    transition_smoothing: float
    preferred_emotion: tuple[float, ...]  # the model's, A2F order
    beginning_emotion: tuple[float, ...]  # A2F order
    correspondence: tuple[int, ...]  # per classifier class; -1 = none

    @classmethod
    def resolve(
        cls,
        config: EmotionPostConfig,
        emotion_post_processing_params: Mapping[str, Any] | None = None,
        emotion_params: Mapping[str, Any] | None = None,
        default_beginning: Sequence[float] | None = None,
    ) -> A2EPostParams:
        """The model's ``config`` overridden by the keys the header actually sets.

        ``emotion_post_processing_params`` / ``emotion_params`` are the header's maps in the
        NIM names (``params.py`` validates them); ``default_beginning`` is the starting vector
        when the header sets no ``beginning_emotion`` (zeros when ``None``).
        """
        post_in = dict(emotion_post_processing_params or {})
        emo_in = dict(emotion_params or {})
        post = EmotionPostProcessingParams.from_nim(post_in)  # raises on bad keys/values
        emo = EmotionParams.from_nim(emo_in)

        def pick(key: str, model_value: Any) -> Any:
            return getattr(post, key) if key in post_in else model_value

        n = config.output_emotion_length
        if "beginning_emotion" in emo_in:
            begin = tuple(float(v) for v in emo.beginning_emotion)
        elif default_beginning is not None:
            begin = tuple(float(v) for v in default_beginning)
        else:
            begin = (0.0,) * n
        if len(begin) != n:
            raise ValueError(f"beginning emotion has {len(begin)} values, expected {n}")
        return cls(
            emotion_contrast=float(pick("emotion_contrast", config.emotion_contrast)),
            live_blend_coef=float(pick("live_blend_coef", config.live_blend_coef)),
            enable_preferred_emotion=bool(
                pick("enable_preferred_emotion", config.enable_preferred_emotion)),
            preferred_emotion_strength=float(
                pick("preferred_emotion_strength", config.preferred_emotion_strength)),
            emotion_strength=float(pick("emotion_strength", config.emotion_strength)),
            max_emotions=min(int(pick("max_emotions", config.max_emotions)),
                             len(config.correspondence)),
            fixed_dt=config.fixed_dt,
            transition_smoothing=(emo.live_transition_time if "live_transition_time" in emo_in
                                  else config.transition_smoothing),
            preferred_emotion=config.preferred_emotion,
            beginning_emotion=begin,
            correspondence=config.correspondence,
        )

    @property
    def smoothing_weight(self) -> float:
        """Step 7's ``w``."""
        return min(self.fixed_dt / max(self.transition_smoothing, MIN_TRANSITION_S), 1.0)


class A2EStreamState:
    """What one stream carries from frame to frame."""

    def __init__(self, params: A2EPostParams) -> None:
        self.params = params
        self.previous = np.asarray(params.beginning_emotion, dtype=np.float64)  # step 5
        self.smoothed: np.ndarray | None = None  # step 7; None before the first frame
        self.frames = 0

    @property
    def first(self) -> bool:
        return self.smoothed is None


class A2EStep(NamedTuple):
    """One frame of one stream: what A2E inferred (step 5) and the face model's input (8)."""

    a2e_output: np.ndarray  # float32 [10]
    smoothed: np.ndarray  # float32 [10]


# ---------------------------------------------------------------------------------------
# the steps, over a leading stream axis S (each is public so tests check it alone)


def contrast_softmax(logits: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """Step 1: ``softmax(logits * contrast)``; logits [S, C], contrast [S]."""
    z = np.asarray(logits, dtype=np.float64) * np.asarray(contrast, dtype=np.float64)[:, None]
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def drop_unmapped(probs: np.ndarray, correspondence: np.ndarray) -> np.ndarray:
    """Step 2: classes with correspondence -1 set to 0; correspondence [S, C] or [C]."""
    return np.where(np.asarray(correspondence) < 0, 0.0, probs)


def keep_top(values: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Step 3: keep the ``k[s]`` largest values of each row (earlier class on ties)."""
    order = np.argsort(-values, axis=1, kind="stable")
    rank = np.empty_like(order)
    rows = np.arange(values.shape[0])[:, None]
    rank[rows, order] = np.arange(values.shape[1])[None, :]
    return np.where(rank < np.asarray(k)[:, None], values, 0.0)


def scatter(values: np.ndarray, correspondence: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Step 4: ``base`` [S, 10] with ``base[s, corr[s, c]] = values[s, c]`` for corr >= 0."""
    out = np.array(base, dtype=np.float64, copy=True)
    corr = np.broadcast_to(np.asarray(correspondence), values.shape)
    s_idx, c_idx = np.nonzero(corr >= 0)
    out[s_idx, corr[s_idx, c_idx]] = values[s_idx, c_idx]
    return out


def blend(e: np.ndarray, other: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Steps 5 and 6: ``(1 - coef) * e + coef * other``, coef [S]."""
    c = np.asarray(coef, dtype=np.float64)[:, None]
    out: np.ndarray = (1.0 - c) * e + c * other
    return out


def smooth(e: np.ndarray, previous: np.ndarray, weight: np.ndarray,
           first: np.ndarray) -> np.ndarray:
    """Step 7: ``w * e + (1 - w) * previous``, except where ``first`` (e unchanged)."""
    w = np.asarray(weight, dtype=np.float64)[:, None]
    out: np.ndarray = np.where(np.asarray(first)[:, None], e, w * e + (1.0 - w) * previous)
    return out


def step_streams(
    states: Sequence[A2EStreamState],
    logits: np.ndarray,
    preferred: Sequence[np.ndarray | None],
) -> list[A2EStep]:
    """Advance each stream by one frame.

    ``logits`` [S, C] are the stream's latest A2E logits (reused between A2E runs);
    ``preferred[s]`` is the client's keyframe emotion at the frame's time (10 values) or
    ``None`` when the client sent no keyframes (the model's preferred emotion applies).
    """
    if not states:
        return []
    logits = np.asarray(logits, dtype=np.float64).reshape(len(states), -1)
    if len(preferred) != len(states):
        raise ValueError(f"{len(preferred)} preferred emotions for {len(states)} streams")
    ps = [st.params for st in states]
    corr = np.array([p.correspondence for p in ps], dtype=np.int64)
    if corr.shape[1] != logits.shape[1]:
        raise ValueError(f"logits have {logits.shape[1]} classes, the correspondence "
                         f"{corr.shape[1]}")
    previous = np.stack([st.previous for st in states])
    first = np.array([st.first for st in states])
    last_smoothed = np.stack(
        [st.previous if st.smoothed is None else st.smoothed for st in states])

    def col(name: str) -> np.ndarray:
        return np.array([float(getattr(p, name)) for p in ps])

    probs = contrast_softmax(logits, col("emotion_contrast"))
    probs = drop_unmapped(probs, corr)
    probs = keep_top(probs, np.array([p.max_emotions for p in ps]))
    e = scatter(probs, corr, previous)
    e = blend(e, previous, col("live_blend_coef"))
    inferred = e
    pref = np.stack([
        np.asarray(p.preferred_emotion if v is None else v, dtype=np.float64).reshape(-1)
        for p, v in zip(ps, preferred, strict=True)])
    strength = np.where([p.enable_preferred_emotion for p in ps],
                        col("preferred_emotion_strength"), 0.0)
    e = blend(e, pref, strength)
    e = smooth(e, last_smoothed, np.array([p.smoothing_weight for p in ps]), first)
    out = e * col("emotion_strength")[:, None]
    steps = []
    for i, st in enumerate(states):
        st.previous = inferred[i].copy()
        st.smoothed = e[i].copy()
        st.frames += 1
        steps.append(A2EStep(inferred[i].astype(np.float32), out[i].astype(np.float32)))
    return steps


def step_stream(state: A2EStreamState, logits: np.ndarray,
                preferred: np.ndarray | None = None) -> A2EStep:
    """:func:`step_streams` for one stream."""
    return step_streams([state], np.asarray(logits).reshape(1, -1), [preferred])[0]
