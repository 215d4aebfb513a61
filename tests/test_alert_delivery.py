"""Delivery to webhook receivers and an Alertmanager v2 API on loopback: payloads, retries, no duplicates."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import scenario
from test_alerts import rules

from pipeline.alert_delivery import Deliverer, Router, Sender, webhook_payload
from pipeline.alert_records import ZERO_TIME
from pipeline.alert_state import fingerprint
from pipeline.alerts import AlertEngine
from warehouse.lake import Lake
from warehouse.pricing import PriceBook


class Receiver:
    """A loopback HTTP receiver that records POSTs and answers with scripted status codes."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.posts: list[dict[str, Any]] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = rec.statuses.pop(0) if rec.statuses else 200
                rec.posts.append(
                    {
                        "path": self.path,
                        "status": code,
                        "headers": dict(self.headers),
                        "body": json.loads(body),
                    }
                )
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def ok_bodies(self) -> list[dict[str, Any]]:
        return [p["body"] for p in self.posts if p["status"] == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _engine(tmp_path: Path, router: Router, **rule_over: Any) -> AlertEngine:
    lake = Lake(tmp_path)
    scenario.write(lake, scenario.messages())
    return AlertEngine(
        lake,
        rules(rules=["idle_slice"], external_url="http://dash.example:8050/", **rule_over),
        tenant_rules=scenario.RULES,
        price_book=PriceBook(scenario.BOOK),
        route=router,
    )


class Sleeps(list):
    def __call__(self, s: float) -> None:
        self.append(s)


def test_webhook_payload_version_4(tmp_path: Path, receiver: Receiver) -> None:
    eng = _engine(tmp_path, Router(receiver="platform", webhooks=[receiver.url + "/hook"]))
    deliv = Deliverer(Sender(attempts=1), "http://dash.example:8050/")
    for m in (59, 60):
        eng.evaluate(scenario.START + timedelta(minutes=m))
        deliv.deliver(eng)
    (post,) = receiver.posts
    assert post["path"] == "/hook"
    assert post["headers"]["Content-Type"] == "application/json"
    body = post["body"]
    labels = body["alerts"][0]["labels"]
    assert sorted(body) == [
        "alerts",
        "commonAnnotations",
        "commonLabels",
        "externalURL",
        "groupKey",
        "groupLabels",
        "receiver",
        "status",
        "truncatedAlerts",
        "version",
    ]
    assert (body["version"], body["status"], body["receiver"], body["externalURL"]) == (
        "4",
        "firing",
        "platform",
        "http://dash.example:8050/",
    )
    assert body["groupLabels"] == {"alertname": "GpuSliceIdle", "tenant": "research"}
    assert body["groupKey"] == '{}/{receiver="platform"}:{alertname="GpuSliceIdle", tenant="research"}'
    assert body["commonLabels"] == labels
    (alert,) = body["alerts"]
    assert sorted(alert) == [
        "annotations",
        "endsAt",
        "fingerprint",
        "generatorURL",
        "labels",
        "startsAt",
        "status",
    ]
    assert (alert["status"], alert["startsAt"], alert["endsAt"], alert["fingerprint"]) == (
        "firing",
        "2026-10-16T00:00:00Z",
        ZERO_TIME,
        fingerprint(labels),
    )
    assert (labels["tenant"], labels["workload"], labels["gpu"]) == ("research", "lab/sweep-0", scenario.A1)
    ann = alert["annotations"]
    assert (ann["idle_minutes"], ann["wasted_cost"], ann["currency"]) == ("30.0", "1.00", "USD")
    assert alert["generatorURL"] == "http://dash.example:8050/"
    # resolved: one more POST, status resolved, same fingerprint and start
    for m in range(61, 94):
        eng.evaluate(scenario.START + timedelta(minutes=m))
        deliv.deliver(eng)
    assert len(receiver.posts) == 2
    res = receiver.posts[1]["body"]
    assert (res["status"], res["alerts"][0]["status"], res["alerts"][0]["endsAt"]) == (
        "resolved",
        "resolved",
        "2026-10-16T00:33:00Z",
    )
    assert res["alerts"][0]["fingerprint"] == alert["fingerprint"]
    assert res["alerts"][0]["annotations"]["wasted_cost"] == "2.20"
    eng.close()


def test_retries_with_backoff_while_the_receiver_answers_503(tmp_path: Path) -> None:
    rec = Receiver([503, 503, 200])
    try:
        eng = _engine(tmp_path, Router(webhooks=[rec.url]))
        sleeps = Sleeps()
        deliv = Deliverer(Sender(attempts=5, backoff_s=0.5, backoff_max_s=8.0, sleep=sleeps))
        eng.evaluate(scenario.START + timedelta(minutes=60))
        rep = deliv.deliver(eng)
        assert [p["status"] for p in rec.posts] == [503, 503, 200]
        assert sleeps == [0.5, 1.0]  # exponential backoff between the attempts
        assert rec.posts[0]["body"] == rec.posts[2]["body"]  # the same payload each time
        assert rec.posts[0]["headers"]["Idempotency-Key"] == rec.posts[2]["headers"]["Idempotency-Key"]
        assert (rep.sent, rep.deferred, rep.attempts) == (1, 0, 3)
        # delivered: later evaluations and deliveries send nothing again for this firing
        for m in range(61, 80):
            eng.evaluate(scenario.START + timedelta(minutes=m))
            deliv.deliver(eng)
        assert len(rec.posts) == 3 and eng.load_state()["outbox"] == []
        eng.close()
    finally:
        rec.close()


def test_receiver_down_for_a_while_gets_each_notification_once(tmp_path: Path) -> None:
    rec = Receiver([503] * 6)  # two whole deliveries of 3 attempts fail
    try:
        eng = _engine(tmp_path, Router(webhooks=[rec.url]))
        sleeps = Sleeps()
        deliv = Deliverer(Sender(attempts=3, backoff_s=1.0, backoff_max_s=1.5, sleep=sleeps))
        eng.evaluate(scenario.START + timedelta(minutes=60))
        assert deliv.deliver(eng).deferred == 1
        assert len(eng.load_state()["outbox"]) == 1  # kept for the next evaluation
        eng.evaluate(scenario.START + timedelta(minutes=61))
        assert deliv.deliver(eng).deferred == 1
        assert sleeps == [1.0, 1.5, 1.0, 1.5]  # capped at backoff_max_s
        # a restart in between: the outbox is on disk
        eng.close()
        eng = AlertEngine(
            Lake(tmp_path),
            rules(rules=["idle_slice"]),
            tenant_rules=scenario.RULES,
            price_book=PriceBook(scenario.BOOK),
            route=Router(webhooks=[rec.url]),
        )
        eng.evaluate(scenario.START + timedelta(minutes=62))
        assert deliv.deliver(eng).sent == 1
        eng.evaluate(scenario.START + timedelta(minutes=63))
        assert deliv.deliver(eng).posts == 0
        ok = rec.ok_bodies()
        assert len(ok) == 1 and ok[0]["status"] == "firing"
        assert len(rec.posts) == 7
        eng.close()
    finally:
        rec.close()


def test_a_4xx_is_not_retried(tmp_path: Path) -> None:
    rec = Receiver([400])
    try:
        eng = _engine(tmp_path, Router(webhooks=[rec.url]))
        deliv = Deliverer(Sender(attempts=5, sleep=Sleeps()))
        eng.evaluate(scenario.START + timedelta(minutes=60))
        rep = deliv.deliver(eng)
        assert (rep.failed, rep.attempts, len(rec.posts)) == (1, 1, 1)
        assert eng.load_state()["outbox"] == []
        eng.close()
    finally:
        rec.close()


def test_connection_refused_is_retried_and_bounded(tmp_path: Path) -> None:
    rec = Receiver()
    url = rec.url
    rec.close()  # nothing listens there now
    sleeps = Sleeps()
    res = Sender(attempts=4, backoff_s=0.25, backoff_max_s=0.5, timeout_s=2, sleep=sleeps).post(url, {"x": 1})
    assert (res.ok, res.attempts, res.permanent, sleeps) == (False, 4, False, [0.25, 0.5, 0.5])


def test_routing_per_tenant(tmp_path: Path) -> None:
    research, platform = Receiver(), Receiver()
    try:
        router = Router(
            routes=[{"tenant": "research", "receiver": "research-oncall", "webhooks": [research.url]}],
            receiver="platform",
            webhooks=[platform.url],
        )
        lake = Lake(tmp_path)
        scenario.write(lake, scenario.messages())
        eng = AlertEngine(
            lake,
            rules(rules=["idle_slice", "collector_silent"]),
            tenant_rules=scenario.RULES,
            price_book=PriceBook(scenario.BOOK),
            route=router,
        )
        deliv = Deliverer(Sender(attempts=1))
        for m in (59, 60, 83, 84):
            eng.evaluate(scenario.START + timedelta(minutes=m))
            deliv.deliver(eng)
        assert [(b["receiver"], b["groupLabels"]["alertname"]) for b in research.ok_bodies()] == [
            ("research-oncall", "GpuSliceIdle")
        ]
        # node silence has no tenant: the default receiver
        assert [(b["receiver"], b["groupLabels"]) for b in platform.ok_bodies()] == [
            ("platform", {"alertname": "GpuCollectorSilent"})
        ]
        assert router.targets({"tenant": "research"})[0].receiver == "research-oncall"
        cont = Router(
            routes=[{"tenant": "nlp", "receiver": "nlp", "webhooks": ["http://a/"], "continue": True}],
            webhooks=["http://b/"],
        )
        assert [t.url for t in cont.targets({"tenant": "nlp"})] == ["http://a/", "http://b/"]
        eng.close()
    finally:
        research.close()
        platform.close()


def test_alertmanager_v2_api(tmp_path: Path) -> None:
    am = Receiver()
    try:
        eng = _engine(tmp_path, Router(alertmanager_url=am.url + "/"))
        deliv = Deliverer(Sender(attempts=1), am_valid_s=240)
        for m in (60, 61):  # firing: re-posted on every evaluation (Alertmanager's client protocol)
            now = scenario.START + timedelta(minutes=m)
            eng.evaluate(now)
            deliv.deliver(eng, now)
        assert [p["path"] for p in am.posts] == ["/api/v2/alerts", "/api/v2/alerts"]
        first, second = (p["body"] for p in am.posts)
        assert isinstance(first, list) and len(first) == 1
        assert sorted(first[0]) == ["annotations", "endsAt", "generatorURL", "labels", "startsAt"]
        assert (first[0]["startsAt"], first[0]["endsAt"]) == ("2026-10-16T00:00:00Z", "2026-10-16T00:04:00Z")
        assert second[0]["endsAt"] == "2026-10-16T00:05:00Z"
        assert first[0]["labels"]["alertname"] == "GpuSliceIdle"
        now = scenario.START + timedelta(minutes=93)
        eng.evaluate(now)
        deliv.deliver(eng, now)
        (resolved,) = am.posts[-1]["body"]
        assert resolved["endsAt"] == "2026-10-16T00:33:00Z"
        n = len(am.posts)
        now = scenario.START + timedelta(minutes=94)
        eng.evaluate(now)
        deliv.deliver(eng, now)
        assert len(am.posts) == n  # nothing active, nothing pending: nothing sent
        eng.close()
    finally:
        am.close()


def test_payload_common_labels_of_a_group() -> None:
    notes = [
        {
            "status": "firing",
            "labels": {"alertname": "GpuSliceIdle", "tenant": "t", "gpu": g},
            "annotations": {"summary": s, "currency": "USD"},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": ZERO_TIME,
            "generatorURL": "",
            "fingerprint": "x",
        }
        for g, s in (("G1", "a"), ("G2", "b"))
    ]
    p = webhook_payload("r", notes, "")
    assert p["commonLabels"] == {"alertname": "GpuSliceIdle", "tenant": "t"}
    assert p["commonAnnotations"] == {"currency": "USD"}
    assert len(p["alerts"]) == 2
