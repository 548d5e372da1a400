"""50 reload cycles in a row: memory, file descriptors and threads stay flat."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from a2f_volume.versions import collect_garbage

from .conftest import DIFFUSION, Harness, build_engine, publish_version, run_stream, speech

CYCLES = 50
WARM_UP_CYCLES = 5


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
def test_fifty_reload_cycles_do_not_grow_memory_fds_or_threads(
        harness_factory: Callable[..., Harness], tmp_path: Path) -> None:
    from a2f_standin.generate import generate

    templates = [generate("diffusion", tmp_path / f"t{seed}", size="small", seed=seed)
                 for seed in (1, 2)]
    h = harness_factory()
    publish_version(h.root, DIFFUSION, seed=1, template=templates[0])
    build_engine(h.root, DIFFUSION)
    h.reloader.start()
    h.settle()
    pcm = speech(0.5)
    baseline: tuple[int, int, int] | None = None
    t0 = time.monotonic()
    for cycle in range(1, CYCLES + 1):
        held = h.registry.acquire(DIFFUSION)  # a stream open across the swap
        vid = publish_version(h.root, DIFFUSION, seed=cycle, template=templates[cycle % 2])
        build_engine(h.root, DIFFUSION)
        h.settle()
        assert h.serving_version() == vid, f"cycle {cycle}: {h.reloader.status()}"
        run_stream(held, pcm)
        h.registry.release(held)
        assert held.closed
        collect_garbage(h.root, DIFFUSION, keep=1, grace_s=0.0)  # as model-sync does
        if cycle == WARM_UP_CYCLES:
            gc.collect()
            baseline = (rss_bytes(), open_fds(), threading.active_count())
    gc.collect()
    end = (rss_bytes(), open_fds(), threading.active_count())
    assert baseline is not None
    growth = (end[0] - baseline[0]) / baseline[0]
    print(f"\n{CYCLES} reload cycles in {time.monotonic() - t0:.1f}s: RSS "
          f"{baseline[0] / 2**20:.1f} -> {end[0] / 2**20:.1f} MiB ({growth:+.1%}), fds "
          f"{baseline[1]} -> {end[1]}, threads {baseline[2]} -> {end[2]}")
    st = h.reloader.status()[DIFFUSION]
    assert st.loads == CYCLES + 1 and st.failures == 0
    assert growth < 0.10
    assert end[1] <= baseline[1], "file descriptors leaked"
    assert end[2] <= baseline[2], "threads leaked"
