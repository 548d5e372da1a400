"""``trt_info.json`` -> TensorRT build settings, with the meaning ``trtexec`` gives its flags.

A model folder ships ``trt_info.json``::

    {"trt_build_param": {"cuda_in_graphics": ["--memPoolSize=tacticSharedMem:0.046875"],
                         "batch": ["--minShapes=input:1x1x8320,emotion:1x1x26",
                                   "--optShapes=input:{OPT_BATCH_SIZE}x1x8320,...",
                                   "--maxShapes=input:{MAX_BATCH_SIZE}x1x8320,..."]},
     "defaults": {"MAX_BATCH_SIZE": 16, "OPT_BATCH_SIZE": 4}}

NVIDIA's SDK runs ``trtexec --onnx=network.onnx --saveEngine=network.trt`` plus every argument
group, placeholders filled from ``defaults``. ``trtexec`` reads ``--memPoolSize=<pool>:<size>``
in MiB unless a ``B``/``K``/``M``/``G`` suffix says otherwise (so ``tacticSharedMem:0.046875``
is 48 KiB), and ``--minShapes/--optShapes/--maxShapes`` as ``name:AxBxC`` lists that form one
optimisation profile. This module parses exactly that, rejects anything else by name, and
produces the equivalent ``trtexec`` command for operators.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a2f_volume.errors import ModelFolderError

TRT_INFO = "trt_info.json"

# trtexec pool names -> TensorRT MemoryPoolType member names.
MEMORY_POOLS = {
    "workspace": "WORKSPACE",
    "dlaSRAM": "DLA_MANAGED_SRAM",
    "dlaLocalDRAM": "DLA_LOCAL_DRAM",
    "dlaGlobalDRAM": "DLA_GLOBAL_DRAM",
    "tacticSharedMem": "TACTIC_SHARED_MEMORY",
}
_UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SHAPE_FLAGS = {"--minShapes": 0, "--optShapes": 1, "--maxShapes": 2}
_BOOL_FLAGS = {"--fp16": "fp16", "--noTF32": "noTF32", "--versionCompatible": "versionCompatible",
               "--vc": "versionCompatible"}
_VALUE_FLAGS = ("--hardwareCompatibilityLevel", "--builderOptimizationLevel")
_SUPPORTED = sorted([*_SHAPE_FLAGS, *_BOOL_FLAGS, *_VALUE_FLAGS, "--memPoolSize"])
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TrtBuildSpec:
    """One model's TensorRT build settings, as ``trt_info.json`` states them."""

    args: tuple[str, ...]  # the trtexec arguments, placeholders filled
    profiles: Mapping[str, tuple[Shape, Shape, Shape]]  # tensor -> (min, opt, max)
    memory_pools_bytes: Mapping[str, int]  # trtexec pool name -> bytes
    fp16: bool = False
    no_tf32: bool = False
    version_compatible: bool = False
    hardware_compatibility_level: str = "none"
    builder_optimization_level: int | None = None
    max_batch: int = 1
    opt_batch: int = 1
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """What enters the target fingerprint (every setting that changes the plan)."""
        return {
            "profiles": {k: [list(s) for s in v] for k, v in sorted(self.profiles.items())},
            "memory_pools_bytes": dict(sorted(self.memory_pools_bytes.items())),
            "fp16": self.fp16, "no_tf32": self.no_tf32,
            "version_compatible": self.version_compatible,
            "hardware_compatibility_level": self.hardware_compatibility_level,
            "builder_optimization_level": self.builder_optimization_level,
        }

    def trtexec_command(self, onnx: str, engine: str, precision: str,
                        timing_cache: str | None = None) -> str:
        """The ``trtexec`` command line equivalent to the build (for operators)."""
        cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}", "--device=0", *self.args]
        if precision == "fp16" and not self.fp16:
            cmd.append("--fp16")
        if timing_cache:
            cmd.append(f"--timingCacheFile={timing_cache}")
        return shlex.join(cmd)


def _fail(path: str, fld: str, found: object, expected: str) -> ModelFolderError:
    return ModelFolderError(path, fld, found, expected)


def parse_size_bytes(text: str, path: str = TRT_INFO) -> int:
    """``0.046875`` (MiB) / ``48K`` / ``1G`` / ``512B`` -> bytes, as trtexec reads them."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([BKMG]?)\s*", text)
    if not m:
        raise _fail(path, "--memPoolSize", text, "a number with optional B/K/M/G suffix (MiB)")
    return round(float(m.group(1)) * _UNITS[m.group(2) or "M"])


def parse_shapes(text: str, path: str = TRT_INFO, flag: str = "--shapes") -> dict[str, Shape]:
    """``input:1x1x8320,emotion:1x1x26`` -> ``{"input": (1, 1, 8320), ...}``."""
    out: dict[str, Shape] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, dims = item.rpartition(":")
        name = name.strip().strip("'\"")
        if not sep or not name:
            raise _fail(path, flag, item, "name:AxBxC")
        try:
            shape = tuple(int(d) for d in dims.split("x"))
        except ValueError:
            raise _fail(path, flag, item, "name:AxBxC with integer dimensions") from None
        if any(d < 0 for d in shape):
            raise _fail(path, flag, item, "non-negative dimensions")
        out[name] = shape
    return out


def _substitute(arg: str, defaults: Mapping[str, Any], path: str) -> str:
    def repl(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in defaults:
            raise _fail(path, f"defaults.{key}", "absent", f"a value for placeholder {{{key}}}")
        return str(defaults[key])

    return _PLACEHOLDER.sub(repl, arg)


def parse_trt_info(doc: Mapping[str, Any], path: str = TRT_INFO) -> TrtBuildSpec:
    """Parse a ``trt_info.json`` document. Errors name the file, the field and what is allowed."""
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise _fail(path, "defaults", defaults, "an object")
    params = doc.get("trt_build_param")
    if not isinstance(params, Mapping):
        raise _fail(path, "trt_build_param", params, "an object of lists of trtexec args")
    args: list[str] = []
    for group, values in params.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _fail(path, f"trt_build_param.{group}", values, "a list of strings")
        for v in values:
            args.extend(_substitute(a, defaults, path) for a in shlex.split(v))

    shapes: list[dict[str, Shape]] = [{}, {}, {}]
    pools: dict[str, int] = {}
    flags: dict[str, Any] = {}
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag in _SHAPE_FLAGS and eq:
            shapes[_SHAPE_FLAGS[flag]].update(parse_shapes(value, path, flag))
        elif flag == "--memPoolSize" and eq:
            for item in filter(None, value.split(",")):
                pool, sep, size = item.partition(":")
                if not sep or pool.strip() not in MEMORY_POOLS:
                    raise _fail(path, "--memPoolSize", item,
                                f"<pool>:<size> with pool in {sorted(MEMORY_POOLS)}")
                pools[pool.strip()] = parse_size_bytes(size, path)
        elif flag in _BOOL_FLAGS and not eq:
            flags[_BOOL_FLAGS[flag]] = True
        elif flag == "--hardwareCompatibilityLevel" and eq:
            if value not in ("none", "ampere+", "sameComputeCapability"):
                raise _fail(path, flag, value, "none, ampere+ or sameComputeCapability")
            flags["hardwareCompatibilityLevel"] = value
        elif flag == "--builderOptimizationLevel" and eq:
            if not value.isdigit() or not 0 <= int(value) <= 5:
                raise _fail(path, flag, value, "an integer 0..5")
            flags["builderOptimizationLevel"] = int(value)
        else:
            raise _fail(path, "trt_build_param", arg, f"one of the trtexec flags {_SUPPORTED}")

    mins, opts, maxs = shapes
    names = set(mins) | set(opts) | set(maxs)
    profiles: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name in sorted(names):
        # trtexec fills a missing min/opt/max from the others; opt alone is not a range.
        if name not in mins and name not in maxs:
            raise _fail(path, f"shapes[{name}]", "only --optShapes",
                            "--minShapes and --maxShapes")
        lo = mins.get(name) or opts.get(name) or maxs[name]
        hi = maxs.get(name) or opts.get(name) or lo
        mid = opts.get(name) or hi
        if not (len(lo) == len(mid) == len(hi)):
            raise _fail(path, f"shapes[{name}]", [lo, mid, hi], "the same rank in min/opt/max")
        if not all(a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True)):
            raise _fail(path, f"shapes[{name}]", [lo, mid, hi], "min <= opt <= max per axis")
        profiles[name] = (lo, mid, hi)

    def batch(key: str) -> int:
        v = defaults.get(key, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise _fail(path, f"defaults.{key}", v, "a positive integer")
        return v

    return TrtBuildSpec(
        args=tuple(args), profiles=profiles, memory_pools_bytes=pools,
        fp16=bool(flags.get("fp16")), no_tf32=bool(flags.get("noTF32")),
        version_compatible=bool(flags.get("versionCompatible")),
        hardware_compatibility_level=str(flags.get("hardwareCompatibilityLevel", "none")),
        builder_optimization_level=flags.get("builderOptimizationLevel"),
        max_batch=batch("MAX_BATCH_SIZE"), opt_batch=batch("OPT_BATCH_SIZE"), source=path,
    )


def load_trt_info(folder: str | Path) -> TrtBuildSpec:
    """Parse ``<folder>/trt_info.json``."""
    path = Path(folder) / TRT_INFO
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(str(path), "<file>", "missing file", "the TensorRT build settings") from None
    except (OSError, ValueError) as err:
        raise _fail(str(path), "<file>", f"unreadable ({err})", "a JSON object") from err
    if not isinstance(doc, Mapping):
        raise _fail(str(path), "<file>", type(doc).__name__, "a JSON object")
    return parse_trt_info(doc, str(path))
