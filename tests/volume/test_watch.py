"""The volume watcher reports published changes per model and ignores files being written."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import pytest

from a2f_volume.layout import temp_name
from a2f_volume.publish import atomic_write_bytes
from a2f_volume.watch import VolumeWatcher


def _make_model(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    atomic_write_bytes(folder / "model.json", b"{}")
    atomic_write_bytes(folder / "network.onnx", b"onnx")
    return folder


def _next(q: queue.Queue[set[str]], timeout: float = 10.0) -> set[str]:
    return q.get(timeout=timeout)


@pytest.fixture(params=[True, False], ids=["inotify", "polling"])
def watcher(request: pytest.FixtureRequest, models_root: Path):
    events: queue.Queue[set[str]] = queue.Queue()
    _make_model(models_root, "a23")
    w = VolumeWatcher(models_root, events.put, poll_interval_s=0.3 if not request.param else 30,
                      debounce_s=0.1, use_inotify=request.param)
    w.start()
    yield w, events
    w.stop()


def test_start_reports_every_present_model(watcher) -> None:
    _, events = watcher
    assert _next(events) == {"a23"}


def test_published_file_is_reported_once_for_its_model(watcher, models_root: Path) -> None:
    _, events = watcher
    _next(events)
    atomic_write_bytes(models_root / "a23" / "network.trt", b"engine")
    assert _next(events) == {"a23"}


def test_temp_files_and_leases_are_ignored(watcher, models_root: Path) -> None:
    _, events = watcher
    _next(events)
    (models_root / "a23" / temp_name("network.onnx")).write_bytes(b"partial")
    (models_root / "a23" / "network.onnx.a1B2c3D4").write_bytes(b"aws partial")
    (models_root / "a23" / ".a2f-lease").write_bytes(b"")
    with pytest.raises(queue.Empty):
        events.get(timeout=1.0)


def test_symlink_swap_and_removal_are_reported(watcher, models_root: Path) -> None:
    _, events = watcher
    _next(events)
    versions = models_root / ".a2f" / "versions" / "multi"
    v1 = versions / "v1"
    v1.mkdir(parents=True)
    atomic_write_bytes(v1 / "model.json", b"{}")
    link_tmp = models_root / temp_name("multi")
    os.symlink(v1, link_tmp)
    os.replace(link_tmp, models_root / "multi")
    assert "multi" in _next(events)
    v2 = versions / "v2"
    v2.mkdir()
    atomic_write_bytes(v2 / "model.json", b"{}")
    link_tmp = models_root / temp_name("multi")
    os.symlink(v2, link_tmp)
    os.replace(link_tmp, models_root / "multi")
    deadline = time.monotonic() + 10
    seen: set[str] = set()
    while "multi" not in seen and time.monotonic() < deadline:
        seen |= _next(events)
    assert "multi" in seen
    (models_root / "multi").unlink()
    assert "multi" in _next(events)


def test_callback_errors_do_not_stop_the_watcher(models_root: Path) -> None:
    calls: list[set[str]] = []
    done = threading.Event()

    def flaky(models: set[str]) -> None:
        calls.append(models)
        if len(calls) == 2:
            raise RuntimeError("boom")
        if len(calls) >= 3:
            done.set()

    _make_model(models_root, "a23")
    w = VolumeWatcher(models_root, flaky, poll_interval_s=0.2, debounce_s=0.05, use_inotify=False)
    w.start()
    try:
        atomic_write_bytes(models_root / "a23" / "x.json", b"1")
        time.sleep(0.6)
        atomic_write_bytes(models_root / "a23" / "x.json", b"22")
        assert done.wait(10)
    finally:
        w.stop()
