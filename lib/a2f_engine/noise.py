"""Diffusion noise policies and the host side of each (what is drawn, how often, how big).

The diffusion network takes N(0, 1) noise ``[B, steps + 1, frames, values]`` with every
inference (full size: ``[B, 3, 60, 88831]``, 64 MB per window). Two policies, per model:

* ``constant`` (NIM 2.0's default, ``constant_noise``): one tensor ``[1, ...]`` drawn once
  per model version from a seed (:func:`constant_noise`). The serving graph broadcasts it
  over the batch, so the engine holds it resident (one buffer for every window, no copy per
  window); the same audio gives bit-identical output.
* ``fresh``: new noise every inference, never drawn whole on the host. The serving graph
  builds it from a resident *pool* of N(0, 1) rows and a few numbers per window
  (:func:`draw_pool_mix`):

      noise[b, s, f, :] = cos(theta) * pool[r0, :] + sin(theta) * pool[r1, :]

  with ``theta`` uniform on [0, 2 pi) per (item, step, frame) and the ``2 * steps_1 * frames``
  pool rows ``r0, r1`` of one window all distinct (drawn without replacement). The host draws
  ``3 * steps_1 * frames`` numbers per window (540 at full size) instead of 16 million.

Statistics of the pool scheme (tested in ``tests/serving_graph/test_noise.py``):

* every value is exactly N(0, 1): ``cos(t) a + sin(t) b`` with ``a, b`` independent N(0, 1)
  and ``t`` independent of them is N(0, 1) for every ``t``;
* within one window all values are independent: rows use disjoint pool rows, and the
  values of one pool row are independent draws;
* across windows the noise is *not* independent: at the same (step, frame) two windows
  share a pool row with probability about ``4 / pool_rows``, and a shared row correlates
  those two rows by ``cos`` / ``sin`` products of their angles (mean 0, mean square 1/4).
  Over whole tensors the correlation of two windows has mean 0 and a standard deviation of
  about ``1 / sqrt(steps_1 * frames * pool_rows)`` (0.0033 at full size with the default
  512 rows; measured 0.0036). Every window gets noise with exactly the right distribution;
  windows are only weakly, randomly correlated.

The pool is ``pool_rows x values`` float32 (full size, 512 rows: 182 MB), resident in the
engine like the constant tensor. ``fresh`` with an on-device generator (ONNX
``RandomNormalLike``, supported by ONNX Runtime and TensorRT's ONNX parser, which ignores the
seed) is available as the ``rng`` source; ONNX Runtime's CPU kernel draws as slowly as NumPy,
so it is for GPU engines only, and its outputs can only be checked statistically.

Policy selection: ``parse_noise_policies("constant")`` or ``"fresh,mark-diffusion=constant"``
(default, then per-model overrides). NIM's protocol carries no noise field in the stream
header, so a client cannot change the policy; it is a deployment setting.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np

from a2f_volume.errors import InvalidArgumentError

NoisePolicy = Literal["constant", "fresh"]
#: How a ``fresh`` serving graph makes its noise: gathered from a resident pool, or drawn
#: by an in-graph generator (GPU engines).
FreshSource = Literal["pool", "rng"]

NOISE_POLICIES: tuple[str, ...] = get_args(NoisePolicy)
FRESH_SOURCES: tuple[str, ...] = get_args(FreshSource)
DEFAULT_NOISE_POLICY: NoisePolicy = "constant"
DEFAULT_NOISE_SEED = 0
DEFAULT_POOL_ROWS = 512


def _generator(seed: int) -> np.random.Generator:
    # SFC64: the fastest of NumPy's generators, as the pipeline's per-stream noise
    return np.random.Generator(np.random.SFC64(seed))


def constant_noise(shape: tuple[int, ...], seed: int = DEFAULT_NOISE_SEED) -> np.ndarray:
    """The ``constant`` policy's noise: N(0, 1) float32 of ``shape`` (``[1, ...]``), a pure
    function of the seed (drawn once per model version)."""
    if any(d <= 0 for d in shape):
        raise InvalidArgumentError(f"noise shape {list(shape)} must be positive")
    return _generator(seed).standard_normal(shape, dtype=np.float32)


def noise_pool(rows: int, values: int, seed: int = DEFAULT_NOISE_SEED) -> np.ndarray:
    """The ``fresh`` policy's resident pool: ``[rows, values]`` float32 N(0, 1) rows."""
    if rows <= 0 or values <= 0:
        raise InvalidArgumentError(f"noise pool [{rows}, {values}] must be positive")
    # a different stream than constant_noise for the same seed
    return _generator(seed + 0x9E3779B9).standard_normal((rows, values), dtype=np.float32)


def pool_rows_needed(steps_1: int, frames: int) -> int:
    """Distinct pool rows one window uses (two per (step, frame))."""
    return 2 * steps_1 * frames


def check_pool_rows(pool_rows: int, steps_1: int, frames: int) -> None:
    need = pool_rows_needed(steps_1, frames)
    if pool_rows < need:
        raise InvalidArgumentError(
            f"noise pool of {pool_rows} rows is too small: one window needs {need} distinct "
            f"rows (2 x {steps_1} steps x {frames} frames); use at least {need}")


def draw_pool_mix(rng: np.random.Generator, batch: int, steps_1: int, frames: int,
                  pool_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-window inputs of a ``fresh`` (pool) serving graph for ``batch`` windows.

    Returns ``noise_rows`` int64 ``[B, 2, steps_1, frames]`` (per window all distinct) and
    ``noise_mix`` float32 ``[B, steps_1, frames, 2]`` (cos, sin of a uniform angle).
    """
    check_pool_rows(pool_rows, steps_1, frames)
    need = pool_rows_needed(steps_1, frames)
    rows = np.stack([rng.choice(pool_rows, size=need, replace=False) for _ in range(batch)])
    theta = rng.uniform(0.0, 2.0 * math.pi, size=(batch, steps_1, frames))
    mix = np.stack([np.cos(theta), np.sin(theta)], axis=-1).astype(np.float32)
    return rows.reshape(batch, 2, steps_1, frames).astype(np.int64), mix


def pool_noise(pool: np.ndarray, rows: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """The noise a pool serving graph builds, computed with NumPy (float32, the graph's
    operation order): ``mix[..., 0] * pool[rows[:, 0]] + mix[..., 1] * pool[rows[:, 1]]``.
    For verification and the reference path; the server never calls it per window."""
    g0 = pool[rows[:, 0]]
    g1 = pool[rows[:, 1]]
    return mix[..., 0:1] * g0 + mix[..., 1:2] * g1


def parse_noise_policies(spec: str) -> tuple[NoisePolicy, dict[str, NoisePolicy]]:
    """``"constant"`` or ``"fresh,model-a=constant,model-b=fresh"`` -> (default, overrides).

    The first item without ``=`` is the default (``constant`` when there is none); items
    ``model=policy`` override it for one model name. Raises :class:`InvalidArgumentError`
    naming the bad item and the allowed policies.
    """
    default: NoisePolicy = DEFAULT_NOISE_POLICY
    overrides: dict[str, NoisePolicy] = {}
    seen_default = False
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, value = item.rpartition("=")
        policy = _policy(value.strip(), item)
        if sep:
            if not name.strip():
                raise InvalidArgumentError(f"noise policy item {item!r} has no model name")
            overrides[name.strip()] = policy
        elif seen_default:
            raise InvalidArgumentError(f"noise policy {spec!r} names two defaults")
        else:
            default, seen_default = policy, True
    return default, overrides


def _policy(value: str, item: str) -> NoisePolicy:
    if value == "constant":
        return "constant"
    if value == "fresh":
        return "fresh"
    raise InvalidArgumentError(
        f"noise policy {item!r}: unknown policy {value!r}; allowed: {', '.join(NOISE_POLICIES)}")


def policy_for(model: str, default: NoisePolicy, overrides: dict[str, NoisePolicy]
               ) -> NoisePolicy:
    return overrides.get(model, default)
