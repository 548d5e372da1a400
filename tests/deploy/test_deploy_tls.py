"""What the deployment exposes and mounts: the inference container reads the model volume
read-only, the NetworkPolicy names who may connect (every ingress rule has ``from``, metrics
only from the monitoring namespace, egress DNS and HTTPS only), and the ``tls`` / ``mtls``
kustomize components and ``compose.tls.yaml`` mount a certificate folder and set the env."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from .conftest import K8S, OVERLAYS, ROOT, docs, find, render, run
from .test_deploy_compose import GPU_FILES, compose_config, volumes

SERVER = "a2f-grpc-server"
DEPLOYABLE = [n for n in OVERLAYS if n.startswith("overlays/")]
MONITORING_NS = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}


def _containers(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pod = find(objs, "StatefulSet", SERVER)["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod.get("initContainers", []) + pod["containers"]}


def _with_components(tmp: Path, overlay: str, *components: str) -> Path:
    rel = Path(os.path.relpath(K8S, tmp))
    comps = ", ".join(str(rel / "components" / c) for c in components)
    (tmp / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{rel / overlay}]\ncomponents: [{comps}]\n", encoding="utf-8")
    return tmp


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_inference_mounts_the_model_volume_read_only(rendered: dict[str, Path],
                                                     name: str) -> None:
    containers = _containers(docs(rendered[name].read_text(encoding="utf-8")))
    mounts = {m["name"]: m for m in containers["inference"]["volumeMounts"]}
    assert mounts["model-data"].get("readOnly") is True
    # model-sync publishes (and creates the lease files): it keeps write access
    sync = {m["name"]: m for m in containers["model-sync"]["volumeMounts"]}
    assert not sync["model-data"].get("readOnly", False)


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_network_policy_names_every_source_and_destination(rendered: dict[str, Path],
                                                           name: str) -> None:
    policy = find(docs(rendered[name].read_text(encoding="utf-8")), "NetworkPolicy", SERVER)
    spec = policy["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert all(rule.get("from") for rule in spec["ingress"])
    by_port = {p["port"]: rule["from"] for rule in spec["ingress"] for p in rule["ports"]}
    assert set(by_port) == {50051, 9101, 9102, 9103}
    for metrics_port in (9101, 9102, 9103):
        assert by_port[metrics_port] == [{"namespaceSelector": MONITORING_NS}]
    egress_ports = sorted((p["port"], p["protocol"]) for rule in spec["egress"]
                          for p in rule["ports"])
    expected = [(53, "TCP"), (53, "UDP"), (443, "TCP")]
    if name == "overlays/cpu-dev":
        expected.append((9000, "TCP"))  # its in-cluster MinIO is the S3 store
    assert egress_ports == expected
    assert all(rule.get("to") for rule in spec["egress"])


def test_tls_component_mounts_the_secret_and_moves_probes_to_the_admin_listener(
        tmp_path: Path) -> None:
    objs = docs(render(_with_components(tmp_path, "overlays/g4dn", "tls")))
    inference = _containers(objs)["inference"]
    env = {e["name"]: e["value"] for e in inference["env"]}
    assert env["A2F_INFERENCE_TLS_CERT_FILE"] == "/etc/a2f/tls/tls.crt"
    assert env["A2F_INFERENCE_TLS_KEY_FILE"] == "/etc/a2f/tls/tls.key"
    assert "A2F_INFERENCE_TLS_CLIENT_CA_FILE" not in env
    assert env["A2F_INFERENCE_ADMIN_ADDRESS"] == "0.0.0.0:50052"
    tls_mount = next(m for m in inference["volumeMounts"] if m["name"] == "tls")
    assert tls_mount["readOnly"] is True and "subPath" not in tls_mount  # updates propagate
    pod = find(objs, "StatefulSet", SERVER)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "a2f-grpc-server-tls"
    assert inference["startupProbe"]["grpc"]["port"] == 50052
    assert inference["readinessProbe"]["grpc"]["port"] == 50052
    assert inference["livenessProbe"] == {"grpc": {"port": 50052, "service": "liveness"},
                                          "periodSeconds": 15, "timeoutSeconds": 5,
                                          "failureThreshold": 4}
    # the admin port is declared but no NetworkPolicy rule admits it
    policy = find(objs, "NetworkPolicy", SERVER)["spec"]
    assert 50052 not in {p["port"] for rule in policy["ingress"] for p in rule["ports"]}


def test_mtls_component_adds_the_client_ca(tmp_path: Path) -> None:
    objs = docs(render(_with_components(tmp_path, "overlays/g4dn", "tls", "mtls")))
    env = {e["name"]: e["value"] for e in _containers(objs)["inference"]["env"]}
    assert env["A2F_INFERENCE_TLS_CLIENT_CA_FILE"] == "/etc/a2f/tls/ca.crt"
    assert env["A2F_INFERENCE_TLS_CERT_FILE"] == "/etc/a2f/tls/tls.crt"


def test_tls_overlays_validate_and_pass_checkov(tmp_path: Path, tools_venv: Path) -> None:
    scan = tmp_path / "scan"
    scan.mkdir()
    for overlay in ("overlays/g4dn", "overlays/cpu-dev"):
        work = tmp_path / overlay.replace("/", "_")
        work.mkdir()
        out = scan / f"{work.name}-mtls.yaml"
        out.write_text(render(_with_components(work, overlay, "tls", "mtls")), encoding="utf-8")
        for version in OVERLAYS[overlay]:
            proc = run([str(tools_venv / "kubernetes-validate"), "--strict", "-k", version,
                        str(out)])
            assert "ERROR" not in proc.stdout
    proc = run([str(tools_venv / "checkov"), "-d", str(scan), "--framework", "kubernetes",
                "--skip-download", "-o", "json"], timeout=300)
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r["results"]["failed_checks"]]
    assert not failed, "\n".join(f"{c['check_id']} {c['resource']}" for c in failed)
    assert sum(len(r["results"]["passed_checks"]) for r in reports) > 0


def test_compose_tls_file_mounts_the_certificate_folder() -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed")
    inference = compose_config((*GPU_FILES, "compose.tls.yaml"))["services"]["inference"]
    env = inference["environment"]
    assert env["A2F_INFERENCE_TLS_CERT_FILE"] == "/etc/a2f/tls/tls.crt"
    assert env["A2F_INFERENCE_TLS_KEY_FILE"] == "/etc/a2f/tls/tls.key"
    assert env["A2F_INFERENCE_ADMIN_ADDRESS"].startswith("127.0.0.1:")
    assert (str(ROOT / "deploy" / "tls"), "/etc/a2f/tls") in volumes(inference)
    plain = compose_config(GPU_FILES)["services"]["inference"]
    assert ("models", "/data/models") in volumes(plain)
    assert any(str(v).endswith(":ro") or (isinstance(v, dict) and v.get("read_only"))
               for v in plain["volumes"] if "models" in str(v))
