"""Alert delivery: routing per tenant, Alertmanager webhook payloads (version 4) and the v2 API.

Why both: most teams already have receivers that speak Alertmanager's webhook format (chat bridges,
ticketing, PagerDuty shims), and teams running an Alertmanager want gpuledger's alerts grouped,
silenced and inhibited with everything else. Webhook receivers get each transition once (firing,
each repeat, resolved); an Alertmanager gets every firing alert again on each evaluation, with an
``endsAt`` a few evaluations ahead, which is its client protocol (it deduplicates by fingerprint
and resolves an alert nobody re-sent), and each resolved one once.

Sending is at least once per target and never twice after a success: a notification leaves the
persisted outbox for a target only once that target answered 2xx; a 5xx, 429 or network error is
retried with exponential backoff (bounded attempts, each bounded in time), and what is still
undelivered is tried again at the next evaluation. A 4xx other than 429 means the payload or URL is
wrong; retrying cannot help: it is marked failed and logged. Payloads carry an ``Idempotency-Key``
header (hash of the notification ids) for receivers that deduplicate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gpuledger.config import Config
from pipeline.alert_state import iso
from pipeline.alerts import AlertEngine

log = logging.getLogger(__name__)

WEBHOOK = "webhook"
ALERTMANAGER = "alertmanager"
GROUP_BY = ("alertname", "tenant")


@dataclass(frozen=True)
class Target:
    kind: str  # webhook | alertmanager
    receiver: str
    url: str

    @property
    def key(self) -> str:
        return f"{self.kind} {self.receiver} {self.url}"

    @classmethod
    def from_key(cls, key: str) -> Target:
        kind, receiver, url = key.split(" ", 2)
        return cls(kind, receiver, url)


class Router:
    """Labels -> targets: the first tenant route that matches, else (or also, with continue) the default."""

    def __init__(
        self,
        routes: list[Mapping[str, Any]] = (),  # type: ignore[assignment]
        receiver: str = "gpuledger",
        webhooks: list[str] = (),  # type: ignore[assignment]
        alertmanager_url: str = "",
    ) -> None:
        self.routes = [dict(r) for r in routes]
        self.receiver = receiver
        self.webhooks = list(webhooks)
        self.alertmanager_url = alertmanager_url.rstrip("/")

    @classmethod
    def from_config(cls, cfg: Config) -> Router:
        a = cfg.alerts
        return cls(a.routes, a.receiver, a.webhooks, a.alertmanager_url)

    def targets(self, labels: Mapping[str, str]) -> list[Target]:
        out: list[Target] = []
        default = True
        for r in self.routes:
            if labels.get("tenant") == r["tenant"]:
                out += [Target(WEBHOOK, r["receiver"], u) for u in r["webhooks"]]
                default = bool(r.get("continue", False))
                break
        if default:
            out += [Target(WEBHOOK, self.receiver, u) for u in self.webhooks]
        if self.alertmanager_url:
            out.append(Target(ALERTMANAGER, "alertmanager", self.alertmanager_url + "/api/v2/alerts"))
        return out

    def __call__(self, labels: Mapping[str, str]) -> list[dict[str, str]]:
        return [{"key": t.key} for t in self.targets(labels)]


@dataclass
class SendResult:
    ok: bool
    attempts: int
    status: int | None = None
    error: str = ""
    permanent: bool = False


class Sender:
    """POST JSON with bounded retries and exponential backoff."""

    def __init__(
        self,
        timeout_s: float = 5.0,
        attempts: int = 5,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.sleep = sleep

    @classmethod
    def from_config(cls, cfg: Config, sleep: Callable[[float], None] = time.sleep) -> Sender:
        a = cfg.alerts
        return cls(a.send_timeout_s, a.send_attempts, a.backoff_s, a.backoff_max_s, sleep)

    def delays(self) -> list[float]:
        """Waits between attempts: backoff_s, 2x, 4x ... capped at backoff_max_s."""
        return [min(self.backoff_max_s, self.backoff_s * 2**i) for i in range(self.attempts - 1)]

    def post(self, url: str, body: Any, headers: Mapping[str, str] | None = None) -> SendResult:
        data = json.dumps(body, separators=(",", ":")).encode()
        hdrs = {"Content-Type": "application/json", "User-Agent": "gpuledger-alerts", **(headers or {})}
        delays = self.delays()
        res = SendResult(ok=False, attempts=0)
        for attempt in range(self.attempts):
            res.attempts = attempt + 1
            try:
                req = urllib.request.Request(url, data=data, headers=hdrs, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read()
                    res.ok, res.status, res.error = True, resp.status, ""
                    return res
            except urllib.error.HTTPError as exc:
                res.status, res.error = exc.code, f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code != 429:
                    res.permanent = True
                    return res
            except (urllib.error.URLError, OSError) as exc:
                res.status, res.error = None, repr(getattr(exc, "reason", exc))
            if attempt < len(delays):
                self.sleep(delays[attempt])
        return res


def group_key(receiver: str, labels: Mapping[str, str]) -> str:
    """Alertmanager's group key shape: route matchers, then the group labels as Go prints a LabelSet."""
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f'{{}}/{{receiver="{receiver}"}}:{{{inner}}}'


def webhook_alert(note: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "status": note["status"],
        "labels": dict(note["labels"]),
        "annotations": dict(note["annotations"]),
        "startsAt": note["startsAt"],
        "endsAt": note["endsAt"],
        "generatorURL": note["generatorURL"],
        "fingerprint": note["fingerprint"],
    }


def webhook_payload(receiver: str, notes: list[Mapping[str, Any]], external_url: str) -> dict[str, Any]:
    """Alertmanager webhook payload, version 4, for one group of notifications."""
    alerts = [webhook_alert(n) for n in notes]
    group_labels = {k: notes[0]["labels"][k] for k in GROUP_BY if k in notes[0]["labels"]}
    common_labels = _common([a["labels"] for a in alerts])
    common_ann = _common([a["annotations"] for a in alerts])
    return {
        "version": "4",
        "groupKey": group_key(receiver, group_labels),
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": common_ann,
        "externalURL": external_url,
        "alerts": alerts,
    }


def _common(maps: list[Mapping[str, str]]) -> dict[str, str]:
    first = maps[0]
    return {k: v for k, v in sorted(first.items()) if all(m.get(k) == v for m in maps[1:])}


def am_alert(
    labels: Mapping[str, str], annotations: Mapping[str, str], starts: str, ends: str, url: str
) -> dict:
    """One element of Alertmanager's POST /api/v2/alerts body (postableAlert)."""
    return {
        "labels": dict(labels),
        "annotations": dict(annotations),
        "startsAt": starts,
        "endsAt": ends,
        "generatorURL": url,
    }


@dataclass
class DeliveryReport:
    sent: int = 0  # notifications a target took
    failed: int = 0  # notifications a target refused for good (4xx)
    deferred: int = 0  # notifications left for the next evaluation (target down)
    posts: int = 0
    attempts: int = 0
    by_receiver: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))


class Deliverer:
    """Sends what the engine's outbox holds and marks, per target, what was taken."""

    def __init__(self, sender: Sender, external_url: str = "", am_valid_s: float = 240.0) -> None:
        self.sender = sender
        self.external_url = external_url
        self.am_valid_s = am_valid_s  # firing alerts sent to an Alertmanager end this far ahead

    def deliver(self, engine: AlertEngine, now: datetime | None = None) -> DeliveryReport:
        now = (now or datetime.now(UTC)).astimezone(UTC)
        rep = DeliveryReport()
        with engine.locked() as state:
            by_target: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for note in state["outbox"]:
                for key, st in note["targets"].items():
                    if st == "pending":
                        by_target[key].append(note)
            am_targets = {k for k in by_target if k.startswith(ALERTMANAGER + " ")}
            am_targets |= {
                k
                for a in state["alerts"].values()
                if a["state"] == "firing"
                for k in [t["key"] for t in engine.route(a["labels"])]
                if k.startswith(ALERTMANAGER + " ")
            }
            for key in sorted(set(by_target) | am_targets):
                target = Target.from_key(key)
                if target.kind == WEBHOOK:
                    self._webhook(target, by_target[key], rep)
                else:
                    self._alertmanager(target, by_target.get(key, []), state, engine, now, rep)
            state["outbox"] = [
                n for n in state["outbox"] if any(v == "pending" for v in n["targets"].values())
            ]
        return rep

    def _mark(self, notes: list[dict[str, Any]], key: str, res: SendResult, rep: DeliveryReport) -> None:
        receiver = Target.from_key(key).receiver
        rep.posts += 1
        rep.attempts += res.attempts
        for n in notes:
            n["attempts"] = n.get("attempts", 0) + res.attempts
            if res.ok:
                n["targets"][key] = "sent"
                rep.sent += 1
                rep.by_receiver[(receiver, "sent")] += 1
            elif res.permanent:
                n["targets"][key] = "failed"
                rep.failed += 1
                rep.by_receiver[(receiver, "failed")] += 1
            else:
                rep.deferred += 1
                rep.by_receiver[(receiver, "deferred")] += 1
        if not res.ok:
            log.warning(
                "alerts: %d notification(s) to %s not delivered after %d attempt(s): %s%s",
                len(notes),
                key,
                res.attempts,
                res.error,
                " (not retried)" if res.permanent else " (retried at the next evaluation)",
            )

    def _webhook(self, target: Target, notes: list[dict[str, Any]], rep: DeliveryReport) -> None:
        groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for n in notes:
            groups[tuple(n["labels"].get(k, "") for k in GROUP_BY)].append(n)
        for _g, members in sorted(groups.items()):
            payload = webhook_payload(target.receiver, members, self.external_url)
            idem = hashlib.sha256("|".join(n["id"] for n in members).encode()).hexdigest()[:32]
            res = self.sender.post(target.url, payload, {"Idempotency-Key": idem})
            self._mark(members, target.key, res, rep)

    def _alertmanager(
        self,
        target: Target,
        notes: list[dict[str, Any]],
        state: dict[str, Any],
        engine: AlertEngine,
        now: datetime,
        rep: DeliveryReport,
    ) -> None:
        until = iso(now + timedelta(seconds=self.am_valid_s))
        body = [
            am_alert(n["labels"], n["annotations"], n["startsAt"], n["endsAt"], n["generatorURL"])
            for n in notes
            if n["status"] == "resolved"
        ]
        for a in state["alerts"].values():
            if a["state"] == "firing" and target.key in [t["key"] for t in engine.route(a["labels"])]:
                body.append(
                    am_alert(
                        a["labels"],
                        a.get("annotations") or {},
                        a["fired_at"],
                        until,
                        engine.rules.external_url,
                    )
                )
        if not body:
            return
        res = self.sender.post(target.url, body)
        self._mark(notes, target.key, res, rep)
