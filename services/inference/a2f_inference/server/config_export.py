"""What ``GetConfigs`` tells a client: the running settings and models, without host paths.

Absolute paths describe the host (volume layout, secret mounts), not the service, so none is
exported: a path inside the models root is shown relative to it (``a23/model.json``,
``.a2f/versions/a23/<id>``), any other path setting only as ``(set)``. Everything else is
exported as configured.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path, PurePath
from typing import Any

from a2f_inference.server.config import ServerConfig
from a2f_inference.server.registry import Served

#: Shown instead of a path that lies outside the models root.
HIDDEN_PATH = "(set)"


def relative_to_root(path: PurePath, root: Path) -> str:
    """``path`` relative to ``root`` (both resolved) when inside it, else :data:`HIDDEN_PATH`."""
    rel: PurePath | None = None
    for resolve in (os.path.abspath, os.path.realpath):  # as written, then links resolved
        try:
            rel = Path(resolve(path)).relative_to(resolve(root))
            break
        except ValueError:
            continue
    if rel is None:
        return HIDDEN_PATH
    text = rel.as_posix()
    return HIDDEN_PATH if text == "." else text


def server_settings(config: ServerConfig) -> dict[str, Any]:
    """The settings as plain values, with every path made safe to show."""
    out: dict[str, Any] = {}
    for key, value in dataclasses.asdict(config).items():
        if isinstance(value, PurePath):
            out[key] = relative_to_root(value, config.models_root)
        elif value is None or isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def model_settings(lm: Served, models_root: Path) -> dict[str, Any]:
    """One served model version, its folder relative to the models root."""
    return {"name": lm.name, "kind": lm.kind, "version": lm.version,
            "folder": relative_to_root(lm.folder, models_root),
            "identities": list(lm.identities),
            "engine": {"backend": lm.backend, "fingerprint": lm.fingerprint},
            "max_batch": lm.max_batch}
