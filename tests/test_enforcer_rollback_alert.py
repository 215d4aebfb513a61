"""A rolled-back shrink is the alert rule GpuCapRolledBack (pipeline/alert_rules.py): the enforcer
records the rollback in its audit, the alert engine fires one notification for it into the outbox
(routed and delivered like every other alert) and records it in alerts/."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import duckdb

import pipeline.enforcer as enf
from gpuledger.config import Config, ConfigError, load_config
from pipeline.alert_delivery import Router
from pipeline.alert_records import records_glob
from pipeline.alert_rules import ALERTNAMES, AlertRules
from pipeline.alerts import AlertEngine
from pipeline.enforcer_policy import Decision, PolicyState, SliceState
from pipeline.prom_rules import build_rules, render_rules
from warehouse.lake import Lake

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SLICE = "GPU-1:hami:pod/main"


def dec(action: str, did: str) -> Decision:
    return Decision(
        decision_id=did,
        slice_id=SLICE,
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


def _cfg(tmp_path) -> Config:
    cfg = Config()
    cfg.lake.path = str(tmp_path / "lake")
    cfg.enforcer.mode = "enforce"
    cfg.alerts.webhooks = ["http://127.0.0.1:9/default"]
    cfg.alerts.routes = [{"tenant": "nlp", "receiver": "nlp-team", "webhooks": ["http://127.0.0.1:9/nlp"]}]
    return cfg


def _cycle_with_a_rollback(cfg: Config, monkeypatch) -> None:
    out = [dec("rollback", "a" * 32), dec("grow", "b" * 32)]
    st = PolicyState(slices={SLICE: SliceState()})
    monkeypatch.setattr(enf, "decide", lambda state, feats, now, e: (out, st))
    monkeypatch.setattr(enf.Enforcer, "features", lambda self, now: [])
    monkeypatch.setattr(enf, "latest_slices", lambda *a, **k: [])
    res = enf.Enforcer(cfg, lambda node, m: None).cycle(NOW)
    assert res["decisions"] == 2 and res["held"] == 2  # no fresh sample: held, but recorded


def _engine(cfg: Config) -> AlertEngine:
    return AlertEngine(Lake(cfg.lake.path), AlertRules.from_config(cfg), route=Router.from_config(cfg))


def test_rollback_in_the_audit_is_one_firing_notification_in_the_outbox(tmp_path, monkeypatch) -> None:
    cfg = _cfg(tmp_path)
    _cycle_with_a_rollback(cfg, monkeypatch)
    lake = Lake(cfg.lake.path)
    assert not list((lake.root / "alerts").rglob("*.parquet"))  # the enforcer itself records no alert
    engine = _engine(cfg)
    ev = engine.evaluate(NOW + timedelta(minutes=1))
    assert [n["event"] for n in ev.notifications] == ["firing"]
    outbox = engine.load_state()["outbox"]
    assert len(outbox) == 1
    note = outbox[0]
    assert note["labels"] == {
        "alertname": "GpuCapRolledBack",
        "severity": "warning",
        "tenant": "nlp",
        "cluster": "c1",
        "node": "n1",
        "pool": "c1/H100",
        "slice_id": SLICE,
        "resource": "memory",
    }
    assert note["status"] == "firing" and note["startsAt"] == "2026-11-27T12:00:00Z"
    assert note["annotations"]["summary"] == f"memory cap of {SLICE} rolled back 30720 -> 40960 MiB"
    assert note["annotations"]["decision_id"] == "a" * 32
    assert list(note["targets"].values()) == ["pending"]  # routed by tenant: nlp's webhook only
    assert [t["key"] for t in Router.from_config(cfg)(note["labels"])] == list(note["targets"])
    assert "/nlp" in next(iter(note["targets"]))
    rows = duckdb.sql(f"SELECT event, alertname, tenant FROM read_parquet('{records_glob(lake)}')").fetchall()
    assert rows == [("firing", "GpuCapRolledBack", "nlp")]
    # seen once: the next evaluation adds nothing; after the hold it resolves once
    assert engine.evaluate(NOW + timedelta(minutes=2)).notifications == []
    ev = engine.evaluate(NOW + timedelta(minutes=61))
    assert [(n["event"], n["labels"]["slice_id"]) for n in ev.notifications] == [("resolved", SLICE)]
    assert engine.evaluate(NOW + timedelta(minutes=62)).notifications == []
    engine.close()


def test_rollback_rule_can_be_turned_off(tmp_path, monkeypatch) -> None:
    cfg = _cfg(tmp_path)
    cfg.alerts.rules = [r for r in cfg.alerts.rules if r != "cap_rolled_back"]
    _cycle_with_a_rollback(cfg, monkeypatch)
    engine = _engine(cfg)
    assert engine.evaluate(NOW + timedelta(minutes=1)).notifications == []
    assert engine.load_state()["outbox"] == []
    engine.close()


def test_rollback_rule_in_the_config_and_not_in_the_prometheus_export(tmp_path) -> None:
    assert ALERTNAMES["cap_rolled_back"] == "GpuCapRolledBack"
    assert "cap_rolled_back" in Config().alerts.rules  # on by default
    p = tmp_path / "g.toml"
    p.write_text('[alerts]\nrules = ["cap_rolled_back"]\ncap_rolled_back_severity = "critical"\n')
    cfg = load_config(p)
    assert AlertRules.from_config(cfg).severity["cap_rolled_back"] == "critical"
    p.write_text("[alerts]\ncap_rolled_back_hold_minutes = 0\n")
    try:
        load_config(p)
        raise AssertionError("hold 0 accepted")
    except ConfigError as e:
        assert "cap_rolled_back_hold_minutes" in str(e)
    cfg = Config()
    names = [r.get("alert") for g in build_rules(cfg)["groups"] for r in g["rules"]]
    assert "GpuCapRolledBack" not in names
    text = render_rules(cfg)
    assert "# Not here, evaluated by gpuledger's own alert engine only: GpuCapRolledBack" in text
    cfg.alerts.rules = ["idle_slice"]
    assert "GpuCapRolledBack" not in render_rules(cfg)


def test_rollback_alert_is_delivered_to_the_tenant_webhook(tmp_path, monkeypatch) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipeline.alert_delivery import Deliverer, Sender

    posts: list[tuple[str, dict]] = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers["Content-Length"])
            posts.append((self.path, json.loads(self.rfile.read(n))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        cfg = _cfg(tmp_path)
        cfg.alerts.webhooks = [url + "/default"]
        cfg.alerts.routes = [{"tenant": "nlp", "receiver": "nlp-team", "webhooks": [url + "/nlp"]}]
        _cycle_with_a_rollback(cfg, monkeypatch)
        engine = _engine(cfg)
        engine.evaluate(NOW + timedelta(minutes=1))
        Deliverer(Sender(attempts=1)).deliver(engine, NOW + timedelta(minutes=1))
        assert [p for p, _ in posts] == ["/nlp"]
        body = posts[0][1]
        assert (body["status"], body["receiver"]) == ("firing", "nlp-team")
        (alert,) = body["alerts"]
        assert (alert["labels"]["alertname"], alert["labels"]["tenant"], alert["labels"]["slice_id"]) == (
            "GpuCapRolledBack",
            "nlp",
            SLICE,
        )
        assert engine.load_state()["outbox"] == []  # delivered: out of the outbox
        engine.close()
    finally:
        srv.shutdown()
        srv.server_close()
