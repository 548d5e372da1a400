"""The Kubernetes manifests: every overlay renders, validates for the Kubernetes versions it
targets (strict schema), passes checkov (or skips a check with a written reason), and keeps
what the seed deployment promises."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from .conftest import K8S, OVERLAYS, docs, find, render, run

GPU_OVERLAYS = ("overlays/g4dn", "overlays/g5", "overlays/g4dn-dra")
SERVER = "a2f-grpc-server"
SEED_ENV = ("A2F_MODEL_DATA_PATH", "A2F_MODEL_PATH", "A2F_SDK_PATH", "A2F_LIB_PATH")


def _objs(rendered: dict[str, Path], name: str) -> list[dict[str, Any]]:
    return docs(rendered[name].read_text(encoding="utf-8"))


def _pod(objs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = find(objs, "StatefulSet", SERVER)["spec"]["template"]["spec"]
    return pod


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for c in pod.get("initContainers", []) + pod["containers"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name}")


@pytest.mark.parametrize(("name", "version"),
                         [(n, v) for n, vs in OVERLAYS.items() for v in vs])
def test_overlay_validates_strictly(rendered: dict[str, Path], tools_venv: Path, name: str,
                                    version: str) -> None:
    proc = run([str(tools_venv / "kubernetes-validate"), "--strict", "-k", version,
                str(rendered[name])])
    assert "ERROR" not in proc.stdout


def test_dra_overlay_is_rejected_by_130_schema(rendered: dict[str, Path],
                                               tools_venv: Path) -> None:
    """Documents why the DRA overlay is validated for 1.34 only (and that validation bites)."""
    import subprocess

    proc = subprocess.run([str(tools_venv / "kubernetes-validate"), "--strict", "-k", "1.30.0",
                           str(rendered["overlays/g4dn-dra"])], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "resourceClaimTemplateName" in proc.stdout + proc.stderr


def test_checkov_has_no_unskipped_failures(rendered: dict[str, Path], tools_venv: Path,
                                           tmp_path: Path) -> None:
    scan = tmp_path / "scan"
    scan.mkdir()
    for path in rendered.values():
        shutil.copy(path, scan / path.name)
    proc = run([str(tools_venv / "checkov"), "-d", str(scan), "--framework", "kubernetes",
                "--skip-download", "-o", "json"], timeout=300)
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r["results"]["failed_checks"]]
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    assert not failed, "\n".join(f"{c['check_id']} {c['resource']}" for c in failed)
    for c in skipped:
        reason = (c.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{c['check_id']} on {c['resource']} skipped without a reason"


def test_skip_annotations_carry_reasons() -> None:
    for path in K8S.rglob("*.yaml"):
        for m in re.finditer(r"checkov\.io/skip[\w-]*:\s*\"?(CKV\w+)=([^\"\n]*)",
                             path.read_text(encoding="utf-8")):
            assert len(m.group(2).strip()) > 20, f"{path}: {m.group(1)} has no real reason"


@pytest.mark.parametrize("name", GPU_OVERLAYS)
def test_gpu_overlays_keep_the_seed_promises(rendered: dict[str, Path], name: str) -> None:
    objs = _objs(rendered, name)
    sts = find(objs, "StatefulSet", SERVER)
    pod = _pod(objs)
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["serviceName"] == f"{SERVER}-headless"
    assert pod["nodeSelector"]["alpha.eksctl.io/nodegroup-name"].startswith("avadot-node-gpu")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    (vct,) = sts["spec"]["volumeClaimTemplates"]
    assert vct["metadata"]["name"] == "model-data"
    assert vct["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert vct["spec"]["storageClassName"] in ("gp2", "a2f-gp3")
    pdb = find(objs, "PodDisruptionBudget", f"{SERVER}-pdb")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    env = find(objs, "ConfigMap", _container(pod, "inference")["envFrom"][0]["configMapRef"]
               ["name"])["data"]
    # A GPU pod never serves on the CPU: TensorRT only, built engines only.
    assert env["A2F_ENGINE_BUILDER_BACKEND"] == "tensorrt"
    assert env["A2F_INFERENCE_ENGINE_POLICY"] == "require-tensorrt"
    assert env["A2F_ENGINE_BUILDER_ENGINE_CACHE"].startswith("s3://")
    svc = find(objs, "Service", SERVER)
    assert svc["spec"]["type"] == "ClusterIP"
    assert {p["port"] for p in svc["spec"]["ports"]} >= {50051, 9101}
    headless = find(objs, "Service", f"{SERVER}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    inference = _container(pod, "inference")
    assert any(p["containerPort"] == 50051 for p in inference["ports"])


def test_g4dn_keeps_the_seed_storage_class(rendered: dict[str, Path]) -> None:
    sts = find(_objs(rendered, "overlays/g4dn"), "StatefulSet", SERVER)
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "gp2"


@pytest.mark.parametrize("name", list(OVERLAYS)[:4])
def test_three_containers_share_the_volume_with_probes(rendered: dict[str, Path],
                                                       name: str) -> None:
    objs = _objs(rendered, name)
    pod = _pod(objs)
    sync = _container(pod, "model-sync")
    assert sync["restartPolicy"] == "Always", "model-sync must be a native sidecar"
    assert sync["startupProbe"]["httpGet"]["path"] == "/ready"
    # inference first: the seed's `kubectl patch .../containers/0/startupProbe` targets it.
    assert [c["name"] for c in pod["containers"]] == ["inference", "engine-builder"]
    for c in (sync, *pod["containers"]):
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts["/data/models"] == "model-data", c["name"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault"
    inference = _container(pod, "inference")
    startup = inference["startupProbe"]
    assert startup["grpc"]["port"] == 50051
    # Long enough for a first TensorRT build (the seed allowed 10 minutes).
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1200
    assert inference["readinessProbe"]["grpc"]["port"] == 50051
    # Liveness differs from readiness: an unready server (default model missing) is not
    # restarted.
    assert inference["livenessProbe"] != inference["readinessProbe"]
    assert inference["livenessProbe"]["grpc"] == {"port": 50051, "service": "liveness"}
    assert inference["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    cm_name = inference["envFrom"][0]["configMapRef"]["name"]
    env = find(objs, "ConfigMap", cm_name)["data"]
    grace = float(env["A2F_INFERENCE_GRACE_S"])
    pre_stop = inference["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > grace + pre_stop
    for var in SEED_ENV:
        assert var in env, var
    assert env["A2F_MODEL_PATH"] == "/data/models/multi-diffusion/model.json"
    assert env["A2F_MODEL_SYNC_SOURCE"] == "s3://avadot/a2f-models/"
    sa = find(objs, "ServiceAccount", pod["serviceAccountName"])
    arn = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    if name != "overlays/cpu-dev":
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", arn), arn
    # The replacement's source is local-config: never deployed.
    assert not [o for o in objs if o["metadata"]["name"] == "a2f-deploy-settings"]


@pytest.mark.parametrize("name", list(OVERLAYS)[:4])
def test_balancing_service_lists_ready_pods_only(rendered: dict[str, Path], name: str) -> None:
    objs = _objs(rendered, name)
    lb = find(objs, "Service", f"{SERVER}-lb")
    assert lb["spec"]["clusterIP"] == "None"
    assert lb["spec"]["publishNotReadyAddresses"] is False
    assert [p["port"] for p in lb["spec"]["ports"]] == [50051]
    assert lb["spec"]["selector"] == {"app": SERVER}
    # The seed's names keep working.
    assert find(objs, "Service", SERVER)["spec"]["type"] == "ClusterIP"
    headless = find(objs, "Service", f"{SERVER}-headless")
    assert find(objs, "StatefulSet", SERVER)["spec"]["serviceName"] == \
        headless["metadata"]["name"]


def test_g5_brings_its_gp3_storage_class(rendered: dict[str, Path]) -> None:
    objs = _objs(rendered, "overlays/g5")
    sts = find(objs, "StatefulSet", SERVER)
    cls = sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"]
    sc = find(objs, "StorageClass", cls)
    assert sc["provisioner"] == "ebs.csi.aws.com" and sc["parameters"]["type"] == "gp3"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"


def _with_component(tmp_path: Path, overlay: str, component: str) -> list[dict[str, Any]]:
    rel = Path(os.path.relpath(K8S, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{rel / overlay}]\n"
        f"components: [{rel / component}]\n", encoding="utf-8")
    return docs(render(tmp_path))


def test_autoscaling_component_scales_on_streams_and_drains(
        tmp_path: Path, tools_venv: Path) -> None:
    objs = _with_component(tmp_path, "overlays/g4dn", "components/autoscaling")
    hpa = find(objs, "HorizontalPodAutoscaler", SERVER)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                             "name": SERVER}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "a2f_inference_active_streams"
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    sts = find(objs, "StatefulSet", SERVER)
    assert "replicas" not in sts["spec"], "the HPA owns the replica count"
    pod = sts["spec"]["template"]["spec"]
    inference = _container(pod, "inference")
    env = find(objs, "ConfigMap", inference["envFrom"][0]["configMapRef"]["name"])["data"]
    drain = float(env["A2F_INFERENCE_GRACE_S"]) + \
        inference["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert drain >= 600 and pod["terminationGracePeriodSeconds"] > drain
    out = tmp_path / "out.yaml"
    out.write_text(render(tmp_path), encoding="utf-8")
    proc = run([str(tools_venv / "kubernetes-validate"), "--strict", "-k", "1.30.0", str(out)])
    assert "ERROR" not in proc.stdout


@pytest.mark.parametrize("name", ["overlays/g4dn", "overlays/g5"])
def test_time_slicing_overlays_give_both_gpu_containers_a_gpu(rendered: dict[str, Path],
                                                              name: str) -> None:
    pod = _pod(_objs(rendered, name))
    for c in ("engine-builder", "inference"):
        assert _container(pod, c)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in _container(pod, "model-sync")["resources"].get("limits", {})


def test_time_slicing_config_offers_two_replicas_per_gpu(rendered: dict[str, Path]) -> None:
    import yaml

    cm = find(_objs(rendered, "cluster/nvidia-device-plugin"), "ConfigMap")
    cfg = yaml.safe_load(next(iter(cm["data"].values())))
    (res,) = cfg["sharing"]["timeSlicing"]["resources"]
    assert res == {"name": "nvidia.com/gpu", "replicas": 2}


def test_dra_overlay_shares_one_claim_between_builder_and_inference(
        rendered: dict[str, Path]) -> None:
    objs = _objs(rendered, "overlays/g4dn-dra")
    pod = _pod(objs)
    (claim,) = pod["resourceClaims"]
    template = find(objs, "ResourceClaimTemplate", claim["resourceClaimTemplateName"])
    req = template["spec"]["spec"]["devices"]["requests"][0]["exactly"]
    assert req["deviceClassName"] == "gpu.nvidia.com" and req["count"] == 1
    for c in ("engine-builder", "inference"):
        res = _container(pod, c)["resources"]
        assert res["claims"] == [{"name": claim["name"]}]
        assert "nvidia.com/gpu" not in res.get("limits", {})


def test_cpu_dev_overlay_has_no_gpu(rendered: dict[str, Path]) -> None:
    text = rendered["overlays/cpu-dev"].read_text(encoding="utf-8")
    objs = docs(text)
    pod = _pod(objs)
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in text
    sts = find(objs, "StatefulSet", SERVER)
    assert sts["spec"]["replicas"] == 1
    assert "storageClassName" not in sts["spec"]["volumeClaimTemplates"][0]["spec"]
    env = find(objs, "ConfigMap", _container(pod, "inference")["envFrom"][0]["configMapRef"]
               ["name"])["data"]
    assert env["A2F_ENGINE_BUILDER_BACKEND"] == "onnxruntime"


def test_cpu_dev_is_self_contained_and_drainable(rendered: dict[str, Path]) -> None:
    objs = _objs(rendered, "overlays/cpu-dev")
    pod = _pod(objs)
    env = find(objs, "ConfigMap", _container(pod, "inference")["envFrom"][0]["configMapRef"]
               ["name"])["data"]
    minio = find(objs, "Service", "a2f-minio")
    assert env["A2F_MODEL_SYNC_ENDPOINT_URL"] == "http://a2f-minio:9000"
    assert env["A2F_ENGINE_BUILDER_ENGINE_CACHE_ENDPOINT_URL"] == "http://a2f-minio:9000"
    assert minio["spec"]["ports"][0]["port"] == 9000
    deploy = find(objs, "Deployment", "a2f-minio")
    assert deploy["spec"]["template"]["metadata"]["labels"] == minio["spec"]["selector"]
    secrets = [o for o in objs if o["kind"] == "Secret"]
    (secret,) = secrets
    assert {"credentials", "root-user", "root-password"} <= set(secret["data"])
    # Every pod that talks to S3 mounts that Secret (as files, not environment variables).
    for c in (_container(pod, "model-sync"), _container(pod, "engine-builder")):
        assert any(m["mountPath"] == "/run/secrets/a2f-s3" for m in c["volumeMounts"]), c["name"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["s3-credentials"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == "/run/secrets/a2f-s3/credentials"
    job = find(objs, "Job", "a2f-minio-init")
    assert "create_bucket" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    pdb = find(objs, "PodDisruptionBudget", f"{SERVER}-pdb")
    assert "minAvailable" not in pdb["spec"] and pdb["spec"]["maxUnavailable"] == 1


def test_monitoring_component_renders_with_an_overlay(tmp_path: Path) -> None:
    """The optional component, added to g4dn the way the overlay's comment says."""
    rel = Path(os.path.relpath(K8S, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{rel / 'overlays/g4dn'}]\n"
        f"components: [{rel / 'components/monitoring'}]\n", encoding="utf-8")
    objs = docs(render(tmp_path))
    pm = find(objs, "PodMonitor", SERVER)
    jobs = {e["relabelings"][0]["replacement"] for e in pm["spec"]["podMetricsEndpoints"]}
    assert jobs == {"a2f-inference", "a2f-engine-builder", "a2f-model-sync"}
    ports = {e["port"] for e in pm["spec"]["podMetricsEndpoints"]}
    pod = _pod(objs)
    declared = {p["name"] for c in pod["initContainers"] + pod["containers"]
                for p in c.get("ports", [])}
    assert ports <= declared
    cm = find(objs, "ConfigMap", "a2f-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["a2f-serving.json"])["uid"] == "a2f-serving"
    assert find(objs, "PrometheusRule", SERVER)["spec"]["groups"]
