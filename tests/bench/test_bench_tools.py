"""``a2f-bench``'s load generator against the canned transport servers, on loopback."""

from __future__ import annotations

import subprocess
import sys

from a2f_bench.cli import build_parser
from a2f_bench.transports import FLAVORS, canned_frames, compare_transports


def test_canned_frames_match_what_the_server_sends_per_chunk() -> None:
    frames = canned_frames(b"\x01\x00" * 1600, 0.5)
    assert len(frames) == 3
    weights = [f.animation_data.skel_animation.blend_shape_weights[0] for f in frames]
    assert [round(w.time_code, 4) for w in weights] == [0.5, 0.5333, 0.5667]
    assert all(len(w.values) == 68 for w in weights)
    # a third of the chunk each, whole 16-bit samples: 3200 bytes -> 3 x 1066
    assert [len(f.animation_data.audio.audio_buffer) for f in frames] == [1066] * 3


def test_both_transports_serve_every_stream_of_a_short_bounded_run() -> None:
    figures = compare_transports(streams=2, clip_s=0.5, duration_s=1.0)
    assert set(figures) == set(FLAVORS)
    for flavor, f in figures.items():
        assert f["errors"] == 0, flavor
        assert f["frames_per_s"] > 0 and f["latency_p99_ms"] >= f["latency_p50_ms"] > 0


def test_the_command_line_lists_both_subcommands() -> None:
    args = build_parser().parse_args(["serve", "--streams", "3", "--mode", "max"])
    assert (args.command, args.streams, args.mode) == ("serve", 3, "max")
    out = subprocess.run([sys.executable, "-m", "a2f_bench", "--help"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "pipeline" in out and "serve" in out


def test_a_transport_server_refuses_an_unknown_flavour() -> None:
    run = subprocess.run([sys.executable, "-m", "a2f_bench.transports", "udp", "1"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1 and "usage: python -m a2f_bench.transports" in run.stderr
