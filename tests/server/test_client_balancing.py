"""Client-side balancing over one channel: the check the compose two-replica stage runs
(deploy/compose/replica_spread.py) and ``a2f-client --lb-policy round_robin``, here against
two real servers on loopback. An ``ipv4:`` target with both addresses stands in for the DNS
name that resolves to one A record per replica (Docker's DNS, a headless Service)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from a2f_inference.audio import synthetic_speech
from a2f_inference.client import main as client_main
from a2f_inference.client import write_wav

from .conftest import run_server

ROOT = Path(__file__).resolve().parents[2]
STREAMS = "a2f_inference_streams_total"


def _spread_module() -> ModuleType:
    path = ROOT / "deploy/compose/replica_spread.py"
    spec = importlib.util.spec_from_file_location("replica_spread", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _served(srv: object) -> float:
    reg = srv.metrics_registry  # type: ignore[attr-defined]
    return sum(s.value for m in reg.collect() for s in m.samples if s.name == STREAMS)


def test_one_round_robin_channel_spreads_streams_over_both_servers(
        standin_root: Path) -> None:
    spread = _spread_module()
    with run_server(standin_root) as a, run_server(standin_root) as b:
        target = "ipv4:" + ",".join(s.address for s in (a, b))
        ok = asyncio.run(spread.run_streams(target, 10, 2, 0.5))
        assert ok == 10
        served = (_served(a), _served(b))
    assert sum(served) == 10
    assert min(served) >= 4, served  # round_robin alternates; pick_first would give (10, 0)


def test_client_accepts_a_dns_target_and_the_policy(standin_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "in.wav"
    write_wav(wav, synthetic_speech(0.5, 16000), 16000)
    with run_server(standin_root) as srv:
        port = srv.address.rsplit(":", 1)[1]
        rc = client_main([str(wav), "--server", f"dns:///127.0.0.1:{port}", "--lb-policy",
                          "round_robin", "--out", str(tmp_path / "out"), "--quiet"])
        assert rc == 0, capsys.readouterr()
        assert _served(srv) == 1
    with pytest.raises(SystemExit):
        client_main([str(wav), "--lb-policy", "random"])
    assert "invalid choice: 'random'" in capsys.readouterr().err
