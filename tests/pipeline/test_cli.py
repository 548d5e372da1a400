"""``a2f-demo`` and ``a2f-bench pipeline`` as real processes on small stand-ins."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from a2f_volume.model_folder import ModelFolder


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)


def test_demo_writes_a_csv_per_model_kind(tmp_path: Path) -> None:
    proc = run("a2f_inference.demo", "--pipeline-only", "--seconds", "1.5", "--work-dir",
               str(tmp_path / "w"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "JawOpen over time" in proc.stdout
    for kind in ("regression", "diffusion"):
        path = tmp_path / "w" / "output" / kind / "animation_frames.csv"
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0][0] == "timeCode" and rows[0][1] == "blendShapes.EyeBlinkLeft"
        assert len(rows[0]) == 1 + 68
        assert len(rows) == 1 + 45
        assert float(rows[2][0]) == round(1 / 30, 6)


def test_bench_pipeline_reports_both_figures(tmp_path: Path,
                                             small_folders: dict[str, ModelFolder]) -> None:
    model = small_folders["regression"].path
    proc = run("a2f_bench", "pipeline", "--model", str(model), "--streams", "2",
               "--seconds", "1", "--repeat", "1", "--workers", "2", "--threads", "1", "--json",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["frames"] == 60 and report["cores_used"] == 2 and report["workers"] == 2
    assert report["pipeline"]["fps"] > 0 and report["network"]["fps"] > 0
    assert report["ratio_pipeline_to_network"] > 0
