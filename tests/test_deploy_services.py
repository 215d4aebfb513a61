"""Every manifest under deploy/: real Kubernetes fields, probes, and commands the CLI really has."""

from __future__ import annotations

import shlex
import signal
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import topic_env
from test_deploy import _check

from gpuledger.cli import build_parser
from gpuledger.config import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
KINDS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("apps/v1", "Deployment"): "V1Deployment",
}
WORKLOADS = ("Deployment", "DaemonSet")


def _yaml_docs() -> list[tuple[str, dict[str, Any]]]:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert files, "no manifests under deploy/"
    return [(f.name, d) for f in files for d in yaml.safe_load_all(f.read_text()) if d is not None]


def _subcommand(argv: list[str]) -> str:
    """The subcommand `gpuledger argv...` runs; fails when the CLI parser would refuse argv."""
    assert argv[0] in ("gpuledger",) or argv[0].endswith("/gpuledger"), argv
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse refuses: unknown subcommand or option
        raise AssertionError(f"gpuledger refuses {argv[1:]}") from exc
    return str(args.command)


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _f, d in _yaml_docs() if d["kind"] == "Deployment"}


def test_every_yaml_is_kubernetes_and_every_workload_has_probes_and_a_real_command() -> None:
    seen: list[tuple[str, str, str]] = []
    for fname, doc in _yaml_docs():
        _check(doc, KINDS[(doc["apiVersion"], doc["kind"])], f"{fname}:{doc['kind']}")
        if doc["kind"] not in WORKLOADS:
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod.get("restartPolicy", "Always") == "Always", doc["metadata"]["name"]
        for ctr in pod["containers"]:
            where = f"{doc['metadata']['name']}/{ctr['name']}"
            assert "livenessProbe" in ctr and "readinessProbe" in ctr, where
            ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
            for probe in (ctr["livenessProbe"], ctr["readinessProbe"], ctr.get("startupProbe")):
                if probe and "httpGet" in probe:
                    assert probe["httpGet"]["port"] in ports, f"{where}: probe port not declared"
            env = {
                e["name"]: e.get("value", "x")
                for e in ctr.get("env", [])
                if e["name"].startswith("GPULEDGER_")
            }
            load_config(env=env)  # every GPULEDGER_* is a real key with a valid value
            seen.append((doc["kind"], doc["metadata"]["name"], _subcommand(ctr["command"])))
    assert sorted(seen) == [
        ("DaemonSet", "gpuledger-agent", "collect"),
        ("Deployment", "gpuledger-dashboard", "dashboard"),
        ("Deployment", "gpuledger-ingest", "ingest"),
        ("Deployment", "gpuledger-jobs", "jobs"),
    ]


def test_subcommand_check_fails_on_a_made_up_command() -> None:
    assert _subcommand(["gpuledger", "--config", "/x.toml", "ingest"]) == "ingest"
    with pytest.raises(AssertionError, match="gpuledger refuses"):
        _subcommand(["gpuledger", "ingestt"])
    with pytest.raises(AssertionError, match="gpuledger refuses"):
        _subcommand(["gpuledger", "jobs", "--every", "5"])


def test_central_deployments_probe_what_each_process_serves() -> None:
    deps = _deployments()
    jobs = deps["gpuledger-jobs"]
    assert jobs["spec"]["replicas"] == 1 and jobs["spec"]["strategy"]["type"] == "Recreate"
    (jc,) = jobs["spec"]["template"]["spec"]["containers"]
    jenv = load_config(env={e["name"]: e["value"] for e in jc["env"]})
    assert jc["ports"][0]["containerPort"] == jenv.jobs.metrics_port == 9402
    assert jenv.jobs.metrics_addr == "0.0.0.0"  # the kubelet probes from outside the pod
    assert jc["livenessProbe"]["httpGet"]["path"] == "/metrics"

    (dc,) = deps["gpuledger-dashboard"]["spec"]["template"]["spec"]["containers"]
    denv = load_config(env={e["name"]: e.get("value", "k" * 32) for e in dc["env"]})
    assert denv.dashboard.host == "0.0.0.0" and dc["ports"][0]["containerPort"] == denv.dashboard.port
    assert dc["readinessProbe"]["httpGet"]["path"] == dc["livenessProbe"]["httpGet"]["path"] == "/healthz"

    (ic,) = deps["gpuledger-ingest"]["spec"]["template"]["spec"]["containers"]
    ienv = load_config(env={e["name"]: e["value"] for e in ic["env"]})
    beat = ienv.lake.ingest_heartbeat_file
    assert beat == "/tmp/ingest.alive"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert beat in " ".join(ic[probe]["exec"]["command"]), probe
    # the heartbeat's directory is writable with a read-only root filesystem
    mounts = [m["mountPath"] for m in ic["volumeMounts"] if not m.get("readOnly")]
    assert str(Path(beat).parent) in mounts


def test_shared_config_map_is_a_valid_config(tmp_path: Path) -> None:
    (cm,) = [d for _f, d in _yaml_docs() if d["kind"] == "ConfigMap"]
    text = cm["data"]["gpuledger.toml"]
    tomllib.loads(text)
    (tmp_path / "g.toml").write_text(text)
    cfg = load_config(tmp_path / "g.toml", env={})
    assert (cfg.kafka.partitions, cfg.kafka.replication_factor) == (6, 3)
    assert cfg.lake.path == "/var/lib/gpuledger/lake"


def _unit(path: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for ln in path.read_text().splitlines():
        ln = ln.strip()
        if ln and not ln.startswith(("#", ";", "[")) and "=" in ln:
            k, v = ln.split("=", 1)
            keys.setdefault(k, []).append(v)
    return keys


def test_every_systemd_unit_runs_a_real_subcommand_and_restarts() -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    seen = {}
    for unit in units:
        keys = _unit(unit)
        (exec_start,) = keys["ExecStart"]
        seen[unit.name] = _subcommand(shlex.split(exec_start))
        assert keys["Restart"] == ["always"], unit.name
        env = dict(e.split("=", 1) for e in keys.get("Environment", []))
        load_config(env=env)
    assert seen == {
        "gpuledger-agent.service": "collect",
        "gpuledger-dashboard.service": "dashboard",
        "gpuledger-ingest.service": "ingest",
        "gpuledger-jobs.service": "jobs",
    }


def test_central_units_share_one_lake_they_may_write() -> None:
    for name in ("ingest", "jobs", "dashboard"):
        keys = _unit(DEPLOY / "systemd" / f"gpuledger-{name}.service")
        env = dict(e.split("=", 1) for e in keys["Environment"])
        assert env["GPULEDGER_LAKE_PATH"] == f"/var/lib/{keys['StateDirectory'][0]}", name
        assert keys["User"] == ["gpuledger"], name


@pytest.mark.kafka
def test_run_ingest_creates_topics_and_touches_the_heartbeat(kafka_bootstrap: str, tmp_path: Path) -> None:
    """What the manifests rely on: `gpuledger ingest` makes its topics and keeps its heartbeat fresh."""
    from kafka.admin import KafkaAdminClient

    from pipeline.ingest import run_ingest

    base = f"deploy-{uuid.uuid4().hex[:10]}"
    beat = tmp_path / "ingest.alive"
    cfg = load_config(
        env={
            **topic_env(kafka_bootstrap, base),
            "GPULEDGER_KAFKA_GROUP_ID": base,
            "GPULEDGER_KAFKA_PARTITIONS": "2",
            "GPULEDGER_LAKE_PATH": str(tmp_path / "lake"),
            "GPULEDGER_LAKE_DECODE_WORKERS": "0",
            "GPULEDGER_LAKE_INGEST_HEARTBEAT_FILE": str(beat),
        }
    )
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    t0 = time.time()
    try:
        run_ingest(cfg, idle_exit_s=2.0)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert t0 - 1 <= beat.stat().st_mtime <= time.time()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="gpuledger-tests")
    names = [base + s for s in (".samples", ".dlq", ".caps", ".acks")]
    try:
        descs = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(names)}
        assert descs == dict.fromkeys(names, 2)
    finally:
        admin.delete_topics(names)
        admin.close()
