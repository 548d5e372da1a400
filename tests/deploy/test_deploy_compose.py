"""compose.yaml: both variants pass `docker-compose config`, the GPU goes to engine-builder
and inference only, the three services share one volume, and ports stay on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
import yaml

from .conftest import ROOT, run

GPU_FILES = ("compose.yaml", "compose.override.yaml")
CPU_FILES = ("compose.yaml", "compose.cpu.yaml")
SERVICES = ("model-sync", "engine-builder", "inference")


def compose_config(files: tuple[str, ...]) -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose not found: scripts/install-system-deps.sh installs "
                    "Debian's docker-compose package")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("A2F_", "COMPOSE_"))}
    args = [exe]
    for f in files:
        args += ["-f", f]
    run([*args, "config", "-q"], env=env)
    config: dict[str, Any] = yaml.safe_load(run([*args, "config"], env=env).stdout)
    return config


def volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each mount; compose v1 prints the short form, v2 the long one."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            src, target = v.split(":")[:2]
            out.append((src, target))
        else:
            out.append((v["source"], v["target"]))
    return out


def host_ips(service: dict[str, Any]) -> list[str]:
    ips = []
    for p in service.get("ports", []):
        ips.append(p.split(":")[0] if isinstance(p, str) else p.get("host_ip", ""))
    return ips


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    res = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return list(res.get("devices", []))


def test_gpu_variant_reserves_the_gpu_for_builder_and_inference() -> None:
    services = compose_config(GPU_FILES)["services"]
    for name in ("engine-builder", "inference"):
        (dev,) = gpu_devices(services[name])
        assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert not gpu_devices(services["model-sync"])
    assert "nvcr.io/nvidia/tensorrt" in services["inference"]["build"]["args"]["BASE_IMAGE"]


def test_cpu_variant_has_no_gpu_and_builds_onnxruntime_engines() -> None:
    services = compose_config(CPU_FILES)["services"]
    for name in SERVICES:
        assert not gpu_devices(services[name]), name
    assert services["engine-builder"]["environment"]["A2F_ENGINE_BUILDER_BACKEND"] == \
        "onnxruntime"
    for name in ("engine-builder", "inference"):
        args = services[name]["build"]["args"]
        assert args["BASE_IMAGE"] == "debian:bookworm-slim" and args["A2F_EXTRAS"] == ""
    assert services["s3-seed"]["build"] == services["inference"]["build"]
    assert services["s3-seed"]["image"] == services["inference"]["image"]


@pytest.mark.parametrize("files", [GPU_FILES, CPU_FILES], ids=["gpu", "cpu"])
def test_services_share_one_model_volume_and_publish_on_loopback(
        files: tuple[str, ...]) -> None:
    config = compose_config(files)
    services = config["services"]
    for name in SERVICES:
        assert ("models", "/data/models") in volumes(services[name]), name
        assert services[name]["read_only"] is True
    for name, svc in services.items():
        for ip in host_ips(svc):
            assert ip == "127.0.0.1", f"{name} publishes on {ip!r}"
    env = services["model-sync"]["environment"]
    assert env["A2F_MODEL_SYNC_SOURCE"] == "s3://avadot/a2f-models/"
    assert env["A2F_MODEL_SYNC_ENDPOINT_URL"] == "http://s3:9000"
    assert services["inference"]["environment"]["A2F_MODEL_PATH"] == \
        "/data/models/multi-diffusion/model.json"
    deps = services["inference"]["depends_on"]
    assert deps["model-sync"]["condition"] == "service_healthy"
    assert {"prometheus", "grafana", "s3", "s3-seed"} <= set(services)


def test_grafana_provisioning_points_at_the_mounted_dashboards() -> None:
    services = compose_config(GPU_FILES)["services"]
    mounts = {target: src for src, target in volumes(services["grafana"])}
    prov = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/a2f.yml")
                          .read_text(encoding="utf-8"))
    path = prov["providers"][0]["options"]["path"]
    assert mounts[path] == str(ROOT / "deploy/grafana/dashboards")
    assert (ROOT / "deploy/grafana/dashboards/a2f-serving.json").is_file()


def test_dockerfiles_take_the_base_image_as_argument_and_run_unprivileged() -> None:
    for name in SERVICES:
        text = (ROOT / "services" / name / "Dockerfile").read_text(encoding="utf-8")
        assert text.count("FROM ${BASE_IMAGE}") == 2, name
        assert "USER 10001:10001" in text and "HEALTHCHECK" in text, name
        assert "-c constraints.txt" in text, name
        default = next(line for line in text.splitlines() if line.startswith("ARG BASE_IMAGE="))
        if name == "model-sync":
            deps = text.split("ARG MODEL_SYNC_DEPS=")[1].splitlines()[0]
            assert "debian" in default and "onnxruntime" not in deps
        else:
            assert "nvcr.io/nvidia/tensorrt" in default, name


def test_replicas_file_scales_inference_behind_one_name_on_loopback_ports() -> None:
    """compose.replicas.yaml: two inference replicas, each published on a free 127.0.0.1 port
    (empty A2F_GRPC_PORT / A2F_METRICS_PORT), and the replica-check service."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose not found: scripts/install-system-deps.sh installs it")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("A2F_", "COMPOSE_"))}
    env.update(A2F_GRPC_PORT="", A2F_METRICS_PORT="")
    args = [exe, "-f", "compose.yaml", "-f", "compose.cpu.yaml", "-f", "compose.replicas.yaml",
            "--profile", "check"]
    services = yaml.safe_load(run([*args, "config"], env=env).stdout)["services"]
    inference = services["inference"]
    assert inference["scale"] == 2
    ports = inference["ports"]
    assert {p.split("/")[0] if isinstance(p, str) else f"{p.get('host_ip')}::{p['target']}"
            for p in ports} == {"127.0.0.1::50051", "127.0.0.1::9101"}
    check = services["replica-check"]
    assert check["image"] == inference["image"]
    assert check["environment"]["GRPC_DNS_RESOLVER"] == "native"
    assert check["depends_on"]["inference"]["condition"] == "service_healthy"
    assert ("./deploy/compose/replica_spread.py" in str(check["volumes"])
            or str(ROOT / "deploy/compose/replica_spread.py") in str(check["volumes"]))
    # Without the replicas file the seed's fixed ports stay.
    plain = compose_config(CPU_FILES)["services"]["inference"]["ports"]
    assert any("50051:50051" in (p if isinstance(p, str) else f"{p['published']}:{p['target']}")
               for p in plain)
