"""A rolled-back shrink fires an alert record (alerts/ in the lake, beside the alert engine's)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import duckdb

import pipeline.enforcer as enf
from gpuledger.config import Config
from pipeline.alert_records import records_glob
from pipeline.enforcer_policy import Decision, PolicyState, SliceState
from warehouse.lake import Lake

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def dec(action: str, did: str) -> Decision:
    return Decision(
        decision_id=did,
        slice_id="GPU-1:hami:pod/main",
        cluster="c1",
        node="n1",
        gpu_uuid="GPU-1",
        pod_uid="pod",
        container="main",
        tenant="nlp",
        pool="c1/H100",
        slice_kind="vgpu",
        resource="memory",
        action=action,
        old_cap=30720,
        new_cap=40960,
        reason="suspected out-of-memory within the rollback window of a shrink",
        mode="enforce",
        send=True,
        issued_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
    )


def test_rollback_writes_a_firing_alert_record(tmp_path, monkeypatch) -> None:
    cfg = Config()
    cfg.lake.path = str(tmp_path / "lake")
    cfg.enforcer.mode = "enforce"
    out = [dec("rollback", "a" * 32), dec("grow", "b" * 32)]
    st = PolicyState(slices={"GPU-1:hami:pod/main": SliceState()})
    monkeypatch.setattr(enf, "decide", lambda state, feats, now, e: (out, st))
    monkeypatch.setattr(enf.Enforcer, "features", lambda self, now: [])
    monkeypatch.setattr(enf, "latest_slices", lambda *a, **k: [])
    sent = []
    res = enf.Enforcer(cfg, lambda node, m: sent.append(m)).cycle(NOW)
    assert res["decisions"] == 2 and res["held"] == 2 and sent == []  # no fresh sample: held
    rows = duckdb.sql(
        "SELECT event, status, alertname, severity, tenant, labels, annotations, starts_at "
        f"FROM read_parquet('{records_glob(Lake(cfg.lake.path))}')"
    ).fetchall()
    assert len(rows) == 1  # the rollback only, not the grow
    event, status, name, sev, tenant, labels, ann, starts = rows[0]
    assert (event, status, name, sev, tenant, starts) == (
        "firing",
        "firing",
        "GpuCapRolledBack",
        "warning",
        "nlp",
        NOW,
    )
    assert json.loads(labels)["slice_id"] == "GPU-1:hami:pod/main"
    a = json.loads(ann)
    assert a["summary"] == "memory cap of GPU-1:hami:pod/main rolled back 30720 -> 40960 MiB"
    assert a["decision_id"] == "a" * 32
    # the same cycle again (a re-run after a crash) writes the same file, not a second record
    enf.Enforcer(cfg, None).cycle(NOW)
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{records_glob(Lake(cfg.lake.path))}')").fetchall()
    assert n == [(1,)]
