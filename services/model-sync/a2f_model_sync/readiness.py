"""Readiness of model-sync: the volume holds a complete, verified version of every model it
should serve (from a previous run or this one), not "the source answered".

A model is **complete** when its folder is

- managed (a symlink into ``.a2f/versions``) and its version record reads, names every file
  it downloaded, and each of those files is on the volume with the recorded size (a version
  adopted without a source listing counts when it holds ``model.json``); or
- a plain folder holding ``model.json`` (the seed's layout, kept as it is until the source
  can be reached to verify it: see :mod:`.adoption`).

The models it **should serve** are the source's models when this pass listed the source,
else every model folder on the volume. So:

- at start, before any pass: ready at once when the volume holds at least one model and every
  model folder on it is complete (a restart during an S3, STS or IAM outage starts serving);
- after a pass that listed the source: ready when every listed model is complete;
- after a pass that could not list the source: the start rule again.

Readiness is sticky: once ready, the process stays ready (``/ready`` gates the start of the
pod's other containers; later failures show in metrics and logs, and the published models
keep serving).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from a2f_model_sync.metrics import SyncMetrics
from a2f_volume import versions
from a2f_volume.errors import A2FError
from a2f_volume.layout import MODEL_JSON, model_entries

logger = logging.getLogger(__name__)


@dataclass
class VolumeState:
    """What the volume holds now: complete models, and the others with the reason."""

    complete: list[str] = field(default_factory=list)
    incomplete: dict[str, str] = field(default_factory=dict)  # model -> why


def _why_incomplete(folder: Path) -> str | None:
    """None if the model folder is complete (rule above), else the reason."""
    if not versions.is_managed(folder):
        return None if (folder / MODEL_JSON).is_file() else f"no {MODEL_JSON}"
    vdir = versions.version_dir_of(folder)
    if vdir is None or not vdir.is_dir():
        return "its version directory is missing"
    try:
        record = versions.read_record(vdir)
    except A2FError as err:
        return err.message
    if record is None:
        return "no version record"
    if not record.objects:
        return None if (vdir / MODEL_JSON).is_file() else f"no {MODEL_JSON}"
    for obj in record.objects:
        try:
            size = os.stat(vdir / obj.path).st_size
        except OSError:
            return f"{obj.path} is missing"
        if size != obj.size:
            return f"{obj.path} has {size} bytes, the record says {obj.size}"
    return None


def inspect_volume(models_root: Path) -> VolumeState:
    state = VolumeState()
    for folder in model_entries(models_root):
        try:
            why = _why_incomplete(folder)
        except OSError as err:
            why = f"cannot be read ({err.strerror or err})"
        if why is None:
            state.complete.append(folder.name)
        else:
            state.incomplete[folder.name] = why
    return state


class ReadinessGate:
    """Decides readiness by the rule above and publishes it (``ready`` event + metric)."""

    def __init__(self, models_root: Path, metrics: SyncMetrics,
                 ready: threading.Event | None = None) -> None:
        self.models_root = models_root
        self.metrics = metrics
        self.ready = ready or threading.Event()
        self._last_reason = ""

    def check(self, listed: list[str] | None, source_problem: str = "") -> bool:
        """Evaluate the rule; ``listed`` is None when the source was not listed."""
        if self.ready.is_set():
            return True
        state = inspect_volume(self.models_root)
        if listed is not None:
            should = sorted(set(listed))
            missing = {m: state.incomplete.get(m, "not on the volume yet") for m in should
                       if m not in state.complete}
        else:
            should = sorted(set(state.complete) | set(state.incomplete))
            missing = dict(state.incomplete)
        if should and not missing:
            self.ready.set()
            self.metrics.ready.set(1)
            how = ("first complete sync done: ready (every model of the source is complete on "
                   "the volume" if listed is not None else
                   "ready from the volume (every model on it is complete")
            logger.info("%s: %s)%s", how, ", ".join(should),
                        "" if not source_problem else
                        f"; the source cannot be reached ({source_problem}), so they are "
                        "served as they are and the sync retries in the background")
            return True
        if not should:
            reason = "the volume holds no model yet"
        else:
            reason = "incomplete: " + "; ".join(f"{m}: {why}" for m, why in sorted(
                missing.items()))
        if source_problem:
            reason += f", and the source cannot be reached ({source_problem})"
        if reason != self._last_reason:
            logger.warning("not ready: %s", reason)
            self._last_reason = reason
        return False
