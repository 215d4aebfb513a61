"""The deployment examples: every field a real Kubernetes field, every GPULEDGER_* a real config key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes.client.models as k8s
import pytest
import yaml

from gpuledger.config import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


def _check(value: Any, typ: str, path: str) -> None:
    """Walk a manifest against the official client's models; unknown keys and wrong types fail."""
    if typ.startswith(("list[", "List[")):
        assert isinstance(value, list), f"{path}: expected a list"
        for i, item in enumerate(value):
            _check(item, typ[5:-1], f"{path}[{i}]")
    elif typ.startswith(("dict(", "Dict[")):  # dict(str, X) in older clients, Dict[str, X] in newer
        assert isinstance(value, dict), f"{path}: expected a map"
        inner = typ[typ.index(",") + 1 : -1].strip()
        for k, v in value.items():
            _check(v, inner, f"{path}.{k}")
    elif typ in _PRIMITIVES:
        assert isinstance(value, _PRIMITIVES[typ]), f"{path}: expected {typ}, got {value!r}"
    else:
        model = getattr(k8s, typ)
        assert isinstance(value, dict), f"{path}: expected a {typ} object"
        fields = {json_key: attr for attr, json_key in model.attribute_map.items()}
        for key, v in value.items():
            assert key in fields, f"{path}.{key}: not a field of {typ}"
            _check(v, model.openapi_types[fields[key]], f"{path}.{key}")


def _docs() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((DEPLOY / "kubernetes" / "daemonset.yaml").read_text()))


def test_every_manifest_field_is_a_kubernetes_field() -> None:
    kinds = {
        ("v1", "Namespace"): "V1Namespace",
        ("v1", "ServiceAccount"): "V1ServiceAccount",
        ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
        ("apps/v1", "DaemonSet"): "V1DaemonSet",
    }
    docs = _docs()
    assert [d["kind"] for d in docs] == [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
    ]
    for doc in docs:
        _check(doc, kinds[(doc["apiVersion"], doc["kind"])], doc["kind"])


def test_the_checker_rejects_a_misspelt_field() -> None:
    ds = _docs()[-1]
    ds["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(AssertionError, match="hostPid: not a field of V1PodSpec"):
        _check(ds, "V1DaemonSet", "DaemonSet")


def test_daemonset_wires_proc_hami_spool_metrics_and_node_name() -> None:
    docs = _docs()
    ds = docs[-1]
    pod = ds["spec"]["template"]
    spec = pod["spec"]
    (ctr,) = spec["containers"]
    env = {e["name"]: e for e in ctr["env"]}
    assert env["GPULEDGER_COLLECTOR_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    proc = mounts[env["GPULEDGER_COLLECTOR_PROC_ROOT"]["value"]]
    assert proc["readOnly"] is True and vols[proc["name"]]["hostPath"]["path"] == "/proc"
    hami = mounts[env["GPULEDGER_COLLECTOR_HAMI_HOOK_DIR"]["value"]]
    assert vols[hami["name"]]["hostPath"]["path"] == "/usr/local/vgpu"
    spool = mounts[env["GPULEDGER_COLLECTOR_SPOOL_DIR"]["value"]]
    assert "hostPath" in vols[spool["name"]] and not spool.get("readOnly")
    port = int(env["GPULEDGER_COLLECTOR_METRICS_PORT"]["value"])
    assert [p["containerPort"] for p in ctr["ports"]] == [port]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all" and spec["runtimeClassName"] == "nvidia"
    assert spec["serviceAccountName"] == docs[1]["metadata"]["name"]
    assert {"list", "watch"} <= set(docs[2]["rules"][0]["verbs"]) and docs[2]["rules"][0]["resources"] == [
        "pods"
    ]
    # every GPULEDGER_* value is a valid config value
    values = {n: e.get("value", "gpu-node-1") for n, e in env.items() if n.startswith("GPULEDGER_")}
    cfg = load_config(env=values)
    assert (cfg.collector.proc_root, cfg.collector.resolver, cfg.collector.node) == (
        "/host/proc",
        "kubernetes",
        "gpu-node-1",
    )


def test_systemd_unit_environment_is_valid_config() -> None:
    text = (DEPLOY / "systemd" / "gpuledger-agent.service").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    env = dict(ln.removeprefix("Environment=").split("=", 1) for ln in lines if ln.startswith("Environment="))
    cfg = load_config(env=env)
    assert cfg.collector.backend == "nvml" and cfg.collector.spool_dir.startswith("/var/lib/gpuledger")
    state = next(ln.split("=", 1)[1] for ln in lines if ln.startswith("StateDirectory="))
    assert cfg.collector.spool_dir.startswith(f"/var/lib/{state}/")
    # NVML needs the device nodes and other users' /proc entries
    keys = {ln.split("=", 1)[0]: ln.split("=", 1)[1] for ln in lines if "=" in ln}
    assert "PrivateDevices" not in keys and keys.get("ProtectProc", "default") == "default"
    assert keys.get("ProcSubset", "all") == "all"
    assert keys["ExecStart"].endswith("gpuledger collect --backend nvml")
