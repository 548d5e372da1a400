"""TensorRT build settings of a serving graph, derived from the model's ``trt_info.json``.

``trt_info.json`` gives optimisation profiles for the network's own inputs. The serving graph
drops ``noise`` and adds per-window inputs whose batch axis follows the same profile
(``face_mask_level``/``face_mask_softness`` ``[B]``; with the pool noise ``noise_rows``
``[B, 2, S+1, Fw]`` and ``noise_mix`` ``[B, S+1, Fw, 2]``). Resident inputs
(``constant_noise``, ``noise_pool``) have static shapes and need no profile.
"""

from __future__ import annotations

import dataclasses

from a2f_engine.errors import EngineBuildError
from a2f_engine.serving_graph import ServingGraphInfo
from a2f_engine.trt_flags import Shape, TrtBuildSpec

_SHAPE_FLAGS = ("--minShapes=", "--optShapes=", "--maxShapes=")


def _batch_source(profiles: dict[str, tuple[Shape, Shape, Shape]]) -> tuple[int, int, int]:
    for name in ("window", "input"):  # the audio input: batch on axis 0
        if name in profiles:
            lo, mid, hi = profiles[name]
            return lo[0], mid[0], hi[0]
    raise EngineBuildError(f"trt_info profiles name no audio input (window/input): "
                           f"{sorted(profiles)}")


def serving_profiles(profiles: dict[str, tuple[Shape, Shape, Shape]], info: ServingGraphInfo
                     ) -> dict[str, tuple[Shape, Shape, Shape]]:
    """The (min, opt, max) shapes of every dynamic input of the serving graph."""
    out = {k: v for k, v in profiles.items() if k != "noise"}
    b = _batch_source(out)

    def each(tail: tuple[int, ...]) -> tuple[Shape, Shape, Shape]:
        lo, mid, hi = ((n, *tail) for n in b)
        return lo, mid, hi

    out["face_mask_level"] = each(())
    out["face_mask_softness"] = each(())
    if "noise_pool" in info.resident_inputs:
        s1, fw = info.noise_shape[0], info.noise_shape[1]
        out["noise_rows"] = each((2, s1, fw))
        out["noise_mix"] = each((s1, fw, 2))
    return out


def _flag(prefix: str, shapes: dict[str, Shape]) -> str:
    return prefix + ",".join(f"{n}:{'x'.join(str(d) for d in s)}" for n, s in shapes.items())


def serving_build_spec(spec: TrtBuildSpec, info: ServingGraphInfo) -> TrtBuildSpec:
    """``spec`` for the serving graph: profiles per :func:`serving_profiles`, the trtexec
    shape arguments rewritten to match (other arguments kept)."""
    profiles = serving_profiles(dict(spec.profiles), info)
    args = [a for a in spec.args if not a.startswith(_SHAPE_FLAGS)]
    for k, prefix in enumerate(_SHAPE_FLAGS):
        args.append(_flag(prefix, {n: p[k] for n, p in profiles.items()}))
    return dataclasses.replace(spec, profiles=profiles, args=tuple(args))
