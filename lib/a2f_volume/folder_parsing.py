"""Reading the files of a model folder with errors that name the file, the field, what was
found and what was expected (:class:`LoadContext` and typed field readers)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from a2f_volume.errors import ModelFolderError
from a2f_volume.model_spec import (
    NPZ_MAX_ARRAY_BYTES,
)

# --------------------------------------------------------------------------------------
# loading helpers


class LoadContext:
    """The folder being loaded, to name files relative to it in errors."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def fail(self, file: Path | str, field: str, found: object, expected: str) -> ModelFolderError:
        return ModelFolderError(str(file), field, found, expected)

    def resolve(self, src: Path, field: str, rel: object) -> Path:
        if not isinstance(rel, str) or not rel:
            raise self.fail(src, field, rel, "a relative file path (string)")
        p = (self.folder / rel).resolve()
        root = self.folder.resolve()
        if p != root and root not in p.parents:
            raise self.fail(src, field, rel, "a path inside the model folder")
        return self.folder / rel

    def json(self, path: Path, referrer: Path | None = None, field: str = "") -> Any:
        if not path.is_file():
            raise self.fail(
                referrer or path,
                field or "<file>",
                "missing file " + str(path),
                "an existing JSON file",
            )
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise self.fail(path, "<document>", f"malformed JSON ({err})", "valid JSON") from err

    def npz(
        self, path: Path, referrer: Path, field: str, keys: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The arrays of an npz. Before any array data is read, the member names are checked
        against ``keys`` (when given: exactly these) and every member's declared dtype and
        shape against :data:`NPZ_MAX_ARRAY_BYTES`, so a small compressed file cannot make the
        loader allocate a huge array it would reject anyway."""
        if not path.is_file():
            raise self.fail(referrer, field, "missing file " + str(path), "an existing .npz")
        try:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                if keys is not None and set(names) != set(keys):
                    raise self.fail(path, "<arrays>", sorted(names), f"exactly {sorted(keys)}")
                for name in names:
                    self._check_npz_member(path, z.zip, name)
                return {k: z[k] for k in names}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
            raise self.fail(path, "<archive>", f"unreadable npz ({err})", "a numpy .npz") from err

    def _check_npz_member(self, path: Path, zf: zipfile.ZipFile, name: str) -> None:
        """Read only the ``.npy`` header of a member: dtype and shape it declares."""
        with zf.open(name + ".npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return  # a newer header format: numpy reads it with its own checks
        if dtype.hasobject:
            raise self.fail(path, name, f"dtype {dtype}", "a numeric or string array")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > NPZ_MAX_ARRAY_BYTES:
            raise self.fail(
                path,
                name,
                f"shape {shape} of {dtype} ({nbytes} bytes)",
                f"at most {NPZ_MAX_ARRAY_BYTES} bytes per array",
            )


def get_field(ctx: LoadContext, src: Path, obj: Any, key: str, where: str = "") -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise ctx.fail(src, where + key, "absent", "a value")
    return obj[key]


def param(ctx: LoadContext, src: Path, info: Mapping[str, Any], key: str) -> Any:
    """A network_info value, under ``params`` or at the top level."""
    params = info.get("params")
    if isinstance(params, Mapping) and key in params:
        return params[key]
    if key in info:
        return info[key]
    raise ctx.fail(src, "params." + key, "absent", "a value")


def int_field(ctx: LoadContext, src: Path, field: str, v: Any, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v or v < minimum:
        raise ctx.fail(src, field, v, f"an integer >= {minimum}")
    return int(v)


def num_field(ctx: LoadContext, src: Path, field: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
        raise ctx.fail(src, field, v, "a finite number")
    return float(v)


def array_field(
    ctx: LoadContext,
    src: Path,
    arrays: Mapping[str, np.ndarray],
    key: str,
    size: int | None,
    *,
    field_prefix: str = "",
) -> np.ndarray:
    """A flat float32 array from an npz, of ``size`` values when given."""
    if key not in arrays:
        raise ctx.fail(src, field_prefix + key, "absent", "an array")
    a = arrays[key]
    if a.dtype.kind not in "fiu":
        raise ctx.fail(src, field_prefix + key, f"dtype {a.dtype}", "a numeric array")
    a = np.asarray(a, dtype=np.float32).reshape(-1)
    if size is not None and a.size != size:
        raise ctx.fail(src, field_prefix + key, f"{a.size} values", f"{size} values")
    return a


def matrix_field(
    ctx: LoadContext, src: Path, arrays: Mapping[str, np.ndarray], key: str, rows: int, cols: int
) -> np.ndarray:
    if key not in arrays:
        raise ctx.fail(src, key, "absent", "an array")
    a = arrays[key]
    if a.ndim == 1 and a.size == rows * cols:
        a = a.reshape(rows, cols)
    if a.shape != (rows, cols):
        raise ctx.fail(src, key, f"shape {list(a.shape)}", f"shape [{rows}, {cols}]")
    return np.asarray(a, dtype=np.float32)


# --------------------------------------------------------------------------------------
# blendshapes


def pair_array(ctx: LoadContext, src: Path, field: str, v: Any, n: int) -> np.ndarray:
    if not isinstance(v, list) or len(v) != n:
        raise ctx.fail(src, field, short_value(v), f"a list of {n} integers (-1 = none)")
    a = np.array([int_field(ctx, src, f"{field}[{i}]", x, minimum=-1) for i, x in enumerate(v)])
    a = a.astype(np.int64)
    ids, counts = np.unique(a[a >= 0], return_counts=True)
    bad = ids[counts != 2]
    if bad.size:
        raise ctx.fail(
            src,
            field,
            f"pair id {int(bad[0])} appearing {int(counts[counts != 2][0])} time(s)",
            "every non-negative id exactly twice",
        )
    return a


def short_value(v: Any) -> Any:
    if isinstance(v, list) and len(v) > 8:
        return f"list of {len(v)}"
    return v
