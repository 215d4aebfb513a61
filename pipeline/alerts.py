"""Alert rules over the freshest lake data, their lifecycle, and the record of every transition.

The engine: it steps the rules (pipeline/alert_rules.py) over the freshest samples
(warehouse/recent.py), keeps its memory in a state file (pipeline/alert_state.py), records every
transition in the lake (pipeline/alert_records.py) and leaves delivery to pipeline/alert_delivery.py.

Where the data comes from, and why: each evaluation reads only the raw samples that arrived since
the previous one (the ticks of today's date partition, and yesterday's around midnight, with a
timestamp filter that Parquet row-group statistics turn into skipped row groups), never a month
and never the rollups (which lag by up to their 5-minute schedule). The per-slice and per-GPU
state the rules need across evaluations (how long a slice has been idle, the GPU-seconds and the
cost wasted so far) is carried forward in a small JSON state file, so an idle period of three
days costs no more to evaluate than one of three minutes. Ticks that arrive later than
``reorder_slack_s`` after newer ticks of the fleet are accounted by the rollups but not alerted on.

Rules: see pipeline/alert_rules.py.

Lifecycle, as Prometheus does it, with one addition against flapping: inactive -> pending when the
condition starts; pending -> inactive as soon as it stops (an idle period is a run of idle ticks);
pending -> firing once it has held for the rule's duration; firing -> resolved only after
``resolve_ticks`` consecutive ticks (evaluations, for the fleet-level rules) without it, so one busy
tick inside an idle period neither resolves nor re-fires it. Slice and GPU rules step on data
ticks (fire and resolve times are tick timestamps, independent of when the job happened to run);
pool, silence and lag rules step on evaluations. A firing alert is notified once when it fires,
again every ``repeat_interval_minutes`` and once when it resolves; each notification has an id
derived from the alert's fingerprint, start and sequence number, sits in a persisted outbox until
each of its targets took it, and is never enqueued twice (a restart reloads the state).
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.alert_records import ALERTS, ZERO_TIME, write_record
from pipeline.alert_rules import ALERTNAMES, AlertRules
from pipeline.alert_state import StateStore, fingerprint, iso, parse_iso
from pipeline.kafka_lag import LagReading
from warehouse.errors import PriceError
from warehouse.lake import Lake
from warehouse.pricing import PriceBook
from warehouse.recent import RecentSamples
from warehouse.rules import follows

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What one evaluation did: the notifications it enqueued and the record file it wrote."""

    now: datetime
    ticks_read: int = 0
    notifications: list[dict[str, Any]] = field(default_factory=list)
    record: Path | None = None
    pending: int = 0
    firing: int = 0
    late_ticks: int = 0


class AlertEngine:
    """Evaluates the rules against one lake and keeps the alert state under ``<lake>/alerts``."""

    def __init__(
        self,
        lake: Lake | str,
        rules: AlertRules,
        *,
        tenant_rules: Sequence[dict[str, Any]] = (),
        default_tenant: str = "unassigned",
        price_book: PriceBook | None = None,
        lag_probe: Callable[[], LagReading | None] | None = None,
        route: Callable[[Mapping[str, str]], list[dict[str, str]]] | None = None,
    ) -> None:
        self.lake = lake if isinstance(lake, Lake) else Lake(lake)
        self.rules = rules
        self.tenant_rules = list(tenant_rules)
        self.default_tenant = default_tenant
        self.price_book = price_book
        self.lag_probe = lag_probe
        self.route = route or (lambda labels: [])
        self.root = self.lake.root / ALERTS
        self.store = StateStore(self.lake, self.root)
        self.state_path = self.store.state_path
        self._unpriced: set[str] = set()
        self._samples: RecentSamples | None = None

    def close(self) -> None:
        if self._samples is not None:
            self._samples.close()
            self._samples = None

    def locked(self):
        """The state, loaded under an exclusive lock and saved back atomically on success."""
        return self.store.locked()

    def load_state(self) -> dict[str, Any]:
        return self.store.load()

    def save_state(self, state: dict[str, Any]) -> None:
        self.store.save(state)

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(self, now: datetime | None = None) -> Evaluation:
        """One evaluation at `now` (data time: ticks with ts <= now count)."""
        now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        ev = Evaluation(now=now)
        with self.locked() as state:
            self._evaluate(state, now, ev)
            currency = self.price_book.currency if self.price_book else None
            ev.record = write_record(self.lake, self.root, ev.notifications, now, currency)
            ev.pending = sum(1 for a in state["alerts"].values() if a["state"] == "pending")
            ev.firing = sum(1 for a in state["alerts"].values() if a["state"] == "firing")
        return ev

    def _evaluate(self, state: dict[str, Any], now: datetime, ev: Evaluation) -> None:
        r = self.rules
        wm = state["watermark"]
        since = now - timedelta(seconds=r.lookback_s) if wm is None else parse_iso(wm)
        since -= timedelta(seconds=r.reorder_slack_s) if wm is not None else timedelta(0)
        if self._samples is None:  # one connection for the engine's life: connecting costs more than reading
            self._samples = RecentSamples(
                self.lake, self.tenant_rules, self.default_tenant, self.rules.idle_util_ratio
            )
        samples = self._samples
        ev.ticks_read = samples.load(since, now)
        slices = samples.slice_ticks()
        gpus = samples.gpu_ticks(r.idle_util_ratio)
        nodes = samples.node_last()
        if ev.ticks_read:
            latest = max(n[2] for n in nodes)
            state["watermark"] = iso(max(latest, parse_iso(wm)) if wm else latest)
        elif wm is None:
            state["watermark"] = iso(since)

        self._step_slices(state, slices, ev)
        self._step_gpus(state, gpus, ev)
        self._end_stale_series(state, now, ev)
        for _cluster, node, ts, interval in nodes:
            known = state["nodes"].get(node)
            if known is None or parse_iso(known["last_ts"]) < ts:
                state["nodes"][node] = {"cluster": _cluster, "last_ts": iso(ts), "interval_s": interval}
        self._eval_pools(state, gpus, now, ev)
        self._eval_silent(state, now, ev)
        self._eval_lag(state, now, ev)
        self._eval_rollbacks(state, now, ev)
        self._repeat(state, now, ev)
        self._expire_outbox(state, now)

    # -- per-tick rules: idle slices and idle GPUs ---------------------------------------------

    def _labels(self, rule: str, **labels: Any) -> dict[str, str]:
        out = {k: v for k, v in self.rules.labels.items()}
        out.update({k: "" if v is None else str(v) for k, v in labels.items()})
        out["alertname"] = ALERTNAMES[rule]
        out["severity"] = self.rules.severity[rule]
        return {k: v for k, v in out.items() if v != ""}

    def _price(self, model: str, ts: datetime, interval_s: float) -> Decimal | None:
        """Price per GPU-hour for the hour the tick counts in (the rollups' hour: ts - Δ/2)."""
        if self.price_book is None:
            return None
        day = (ts - timedelta(seconds=interval_s / 2)).date()
        try:
            return self.price_book.price_at(model, day).gpu_hour
        except PriceError as exc:
            if model not in self._unpriced:
                self._unpriced.add(model)
                log.warning("alerts: idle cost unknown: %s", exc)
            return None

    def _step_slices(self, state: dict[str, Any], rows: list[tuple], ev: Evaluation) -> None:
        if "idle_slice" not in self.rules.enabled:
            return
        for key, sid, cluster, node, gpu, model, kind, tenant, workload, ts, interval, res_s, idle in rows:
            labels = self._labels(
                "idle_slice",
                tenant=tenant,
                workload=workload,
                cluster=cluster,
                node=node,
                gpu=gpu,
                model=model,
                slice_id=sid,
                kind=kind,
            )
            info = {
                "what": f"slice {sid}",
                "tenant": tenant,
                "workload": workload,
                "gpu": gpu,
                "model": model,
            }
            self._step_tick(state, "idle_slice", key, labels, info, ts, interval, idle, Decimal(res_s), ev)

    def _step_gpus(self, state: dict[str, Any], rows: list[tuple], ev: Evaluation) -> None:
        if "idle_gpu" not in self.rules.enabled:
            return
        ratio = self.rules.idle_util_ratio
        for key, cluster, node, gpu, model, ts, interval, sum_share, busy, n_slices, tenants in rows:
            idle = None if busy is None or n_slices == 0 else busy < ratio
            labels = self._labels("idle_gpu", cluster=cluster, node=node, gpu=gpu, model=model)
            info = {
                "what": f"GPU {gpu}",
                "tenant": ",".join(tenants),
                "workload": "",
                "gpu": gpu,
                "model": model,
            }
            reserved = Decimal(repr(float(interval) * min(1.0, float(sum_share))))
            self._step_tick(state, "idle_gpu", "gpu|" + key, labels, info, ts, interval, idle, reserved, ev)

    def _step_tick(
        self,
        state: dict[str, Any],
        rule: str,
        key: str,
        labels: dict[str, str],
        info: dict[str, Any],
        ts: datetime,
        interval: float,
        idle: bool | None,
        reserved_s: Decimal,
        ev: Evaluation,
    ) -> None:
        r = self.rules
        s = state["series"].get(key)
        if s is None:
            s = state["series"][key] = {"last_ts": None, "interval_s": interval, "ep": None, "fp": None}
        if s["last_ts"] is not None:
            last = parse_iso(s["last_ts"])
            if ts <= last:
                return  # seen in an earlier evaluation (the reorder slack re-reads a little)
            if not follows(last, ts, interval):
                # a gap (DESIGN §6: the tick does not start where the last ended): not one period
                self._end_episode(state, s, at=last, reason="no ticks", ev=ev)
        s["last_ts"], s["interval_s"] = iso(ts), interval
        ep = s["ep"]
        if idle:
            if ep is None:
                start = ts - timedelta(seconds=interval)
                fp = fingerprint(labels)
                ep = s["ep"] = {
                    "since": iso(start),
                    "last_idle": iso(ts),
                    "idle_s": "0",
                    "cost": "0",
                    "busy": 0,
                }
                s["fp"] = fp
                if fp not in state["alerts"]:
                    state["alerts"][fp] = {
                        "rule": rule,
                        "labels": labels,
                        "state": "pending",
                        "active_since": iso(start),
                        "fired_at": None,
                        "info": info,
                        "key": key,
                    }
            ep["busy"] = 0
            ep["last_idle"] = iso(ts)
            ep["idle_s"] = str(Decimal(ep["idle_s"]) + reserved_s)
            price = self._price(info["model"], ts, interval)
            ep["cost"] = (
                None
                if price is None or ep["cost"] is None
                else str(Decimal(ep["cost"]) + reserved_s * price)  # exact; / 3600 once when shown
            )
            alert = state["alerts"].get(s["fp"])
            if alert is None:
                return
            alert["annotations"] = self._idle_annotations(rule, alert, ep, ts)
            if alert["state"] == "pending" and (ts - parse_iso(ep["since"])).total_seconds() >= r.idle_min_s:
                self._fire(state, s["fp"], ts, ev)
        elif ep is not None:
            alert = state["alerts"].get(s["fp"])
            if alert is None or alert["state"] == "pending":
                self._end_episode(state, s, at=ts, reason="busy", ev=ev)
            else:
                ep["busy"] += 1
                if ep["busy"] >= r.resolve_ticks:
                    self._end_episode(state, s, at=ts, reason="busy", ev=ev)

    def _idle_annotations(
        self, rule: str, alert: dict[str, Any], ep: dict[str, Any], ts: datetime
    ) -> dict[str, str]:
        info = alert["info"]
        since = parse_iso(ep["since"])
        minutes = (parse_iso(ep["last_idle"]) - since).total_seconds() / 60.0
        gpu_h = Decimal(ep["idle_s"]) / 3600
        cur = self.price_book.currency if self.price_book else ""
        wasted = None if ep["cost"] is None else _cents(Decimal(ep["cost"]) / 3600)
        cost = "unknown (no price)" if wasted is None else f"{wasted} {cur}"
        who = f"tenant {info['tenant']}" + (f", workload {info['workload']}" if info["workload"] else "")
        what = "slice" if rule == "idle_slice" else "allocated GPU"
        return {
            "summary": f"Idle {what} for {minutes:.0f} min: {who} on GPU {info['gpu']} ({info['model']})",
            "description": (
                f"{info['what']} has used under {self.rules.idle_util_ratio:.0%} of what it reserves since "
                f"{iso(since)} ({minutes:.0f} min); {gpu_h:.3f} GPU-hours reserved while idle, "
                f"cost wasted so far {cost}."
            ),
            "tenant": info["tenant"],
            "workload": info["workload"],
            "gpu": info["gpu"],
            "idle_since": iso(since),
            "idle_minutes": f"{minutes:.1f}",
            "wasted_gpu_hours": f"{gpu_h:.6f}",
            "wasted_cost": "" if wasted is None else str(wasted),
            "currency": cur,
        }

    def _end_episode(
        self, state: dict[str, Any], s: dict[str, Any], at: datetime, reason: str, ev: Evaluation
    ) -> None:
        fp = s.get("fp")
        s["ep"] = None
        s["fp"] = None
        alert = state["alerts"].get(fp) if fp else None
        if alert is None:
            return
        if alert["state"] == "firing":
            self._resolve(state, fp, at, ev, reason)
        else:
            del state["alerts"][fp]

    def _end_stale_series(self, state: dict[str, Any], now: datetime, ev: Evaluation) -> None:
        """A slice or GPU that stopped reporting (pod ended, node down) ends its episode."""
        r = self.rules
        for key in list(state["series"]):
            s = state["series"][key]
            last = parse_iso(s["last_ts"])
            age = (now - last).total_seconds()
            if s["ep"] is not None and age > r.silent_intervals * s["interval_s"]:
                self._end_episode(state, s, at=last, reason="no longer reported", ev=ev)
            if s["ep"] is None and age > r.lookback_s + r.reorder_slack_s:
                del state["series"][key]  # keeps the state small: only recently seen series

    # -- per-evaluation rules -------------------------------------------------------------------

    def _step_eval(
        self,
        state: dict[str, Any],
        rule: str,
        labels: dict[str, str],
        cond: bool,
        now: datetime,
        for_s: float,
        annotations: dict[str, str],
        ev: Evaluation,
        resolve_after: int | None = None,
    ) -> None:
        fp = fingerprint(labels)
        alert = state["alerts"].get(fp)
        if cond:
            if alert is None:
                alert = state["alerts"][fp] = {
                    "rule": rule,
                    "labels": labels,
                    "state": "pending",
                    "active_since": iso(now),
                    "fired_at": None,
                    "info": {},
                    "key": None,
                }
            alert["annotations"] = annotations
            alert["misses"] = 0
            if (
                alert["state"] == "pending"
                and (now - parse_iso(alert["active_since"])).total_seconds() >= for_s
            ):
                self._fire(state, fp, now, ev)
        elif alert is not None:
            if alert["state"] == "pending":
                del state["alerts"][fp]
                return
            alert["misses"] = alert.get("misses", 0) + 1
            if alert["misses"] >= (resolve_after or self.rules.resolve_ticks):
                self._resolve(state, fp, now, ev, "condition cleared")

    def _eval_pools(self, state: dict[str, Any], gpus: list[tuple], now: datetime, ev: Evaluation) -> None:
        if "pool_unallocated" not in self.rules.enabled:
            return
        # The latest tick of each GPU seen recently; GPUs that stopped reporting drop out of the pool.
        latest = state.setdefault("gpu_last", {})
        for _key, cluster, node, gpu, model, ts, interval, sum_share, _busy, _n, _t in gpus:
            g = latest.get(gpu)
            if g is None or parse_iso(g["ts"]) < ts:
                latest[gpu] = {
                    "cluster": cluster,
                    "model": model,
                    "node": node,
                    "ts": iso(ts),
                    "interval_s": interval,
                    "share": float(sum_share),
                }
        pools: dict[tuple[str, str], list[float]] = defaultdict(list)
        for gpu in list(latest):
            g = latest[gpu]
            if (now - parse_iso(g["ts"])).total_seconds() > self.rules.silent_intervals * g["interval_s"]:
                del latest[gpu]
                continue
            pools[(g["cluster"], g["model"])].append(max(0.0, 1.0 - g["share"]))
        seen = set()
        for (cluster, model), free in sorted(pools.items()):
            ratio = sum(free) / len(free)
            labels = self._labels("pool_unallocated", cluster=cluster, model=model)
            seen.add(fingerprint(labels))
            price = self._price(model, now, 0.0)
            cur = self.price_book.currency if self.price_book else ""
            per_h = "" if price is None else f"{_cents(price * Decimal(repr(sum(free))))} {cur}"
            self._step_eval(
                state,
                "pool_unallocated",
                labels,
                ratio > self.rules.pool_unallocated_ratio,
                now,
                self.rules.pool_for_s,
                {
                    "summary": f"{ratio:.0%} of the {model} GPUs in cluster {cluster} are unallocated",
                    "description": (
                        f"{sum(free):.2f} of {len(free)} GPUs unallocated (threshold "
                        f"{self.rules.pool_unallocated_ratio:.0%})"
                        + (f"; capacity nobody pays for: {per_h} per hour." if per_h else ".")
                    ),
                    "unallocated_ratio": f"{ratio:.4f}",
                    "unallocated_gpus": f"{sum(free):.3f}",
                    "gpus": str(len(free)),
                },
                ev,
            )
        # pools that vanished (no GPU reporting) count as cleared
        for fp, a in list(state["alerts"].items()):
            if a["rule"] == "pool_unallocated" and fp not in seen:
                self._step_eval(state, "pool_unallocated", a["labels"], False, now, 0, {}, ev)

    def _eval_silent(self, state: dict[str, Any], now: datetime, ev: Evaluation) -> None:
        if "collector_silent" not in self.rules.enabled:
            return
        for node in sorted(state["nodes"]):
            n = state["nodes"][node]
            last = parse_iso(n["last_ts"])
            age = (now - last).total_seconds()
            labels = self._labels("collector_silent", cluster=n["cluster"], node=node)
            if age > self.rules.silent_forget_s:
                del state["nodes"][node]
                if fingerprint(labels) in state["alerts"]:
                    self._resolve(state, fingerprint(labels), now, ev, "node forgotten")
                continue
            silent = age > self.rules.silent_intervals * n["interval_s"]
            self._step_eval(
                state,
                "collector_silent",
                labels,
                silent,
                now,
                0.0,
                {
                    "summary": f"No ticks from node {node} for {age / 60:.1f} min",
                    "description": (
                        f"The collector of node {node} (cluster {n['cluster']}) last reported at "
                        f"{iso(last)}; its GPU time is unobserved (reported as coverage, never billed)."
                    ),
                    "last_tick": iso(last),
                },
                ev,
                resolve_after=1,  # a tick arrived: the node is back
            )

    def _eval_lag(self, state: dict[str, Any], now: datetime, ev: Evaluation) -> None:
        if "ingest_lag" not in self.rules.enabled or self.lag_probe is None:
            return
        try:
            reading = self.lag_probe()
        except Exception as exc:  # the broker being away must not stop idle alerts
            log.warning("alerts: ingest lag unknown: %r", exc)
            return
        if reading is None:
            return
        labels = self._labels("ingest_lag", group=reading.group, topic=reading.topic)
        self._step_eval(
            state,
            "ingest_lag",
            labels,
            reading.total > self.rules.lag_messages,
            now,
            self.rules.lag_for_s,
            {
                "summary": f"Ingest is {reading.total} messages behind on {reading.topic}",
                "description": (
                    f"Consumer group {reading.group} lags {reading.total} messages "
                    f"(threshold {self.rules.lag_messages}); per partition: "
                    + ", ".join(f"{p}={v}" for p, v in sorted(reading.per_partition.items()))
                ),
                "lag_messages": str(reading.total),
            },
            ev,
        )

    def _eval_rollbacks(self, state: dict[str, Any], now: datetime, ev: Evaluation) -> None:
        """One GpuCapRolledBack alert per rollback the enforcer recorded in its audit since the last
        evaluation (issued_at after the rule's watermark, up to now): fired at once, resolved after
        the hold. The first evaluation looks back ``lookback_s``."""
        rule = "cap_rolled_back"
        for fp, a in sorted(state["alerts"].items()):
            if (
                a["rule"] == rule
                and (now - parse_iso(a["fired_at"])).total_seconds() >= self.rules.rollback_hold_s
            ):
                self._resolve(state, fp, now, ev, "the rollback restored the cap")
        if rule not in self.rules.enabled:
            return
        wm = state.get("rollback_watermark")
        since = parse_iso(wm) if wm else now - timedelta(seconds=self.rules.lookback_s)
        rows = rollbacks_since(self.lake, since, now)
        for r in rows:
            labels = self._labels(
                rule,
                tenant=r["tenant"],
                cluster=r["cluster"],
                node=r["node"],
                pool=r["pool"],
                slice_id=r["slice_id"],
                resource=r["resource"],
            )
            fp = fingerprint(labels)
            if fp in state["alerts"]:
                continue  # this slice's earlier rollback still firing: one alert for both
            unit = "MiB" if r["resource"] == "memory" else "%"
            state["alerts"][fp] = {
                "rule": rule,
                "labels": labels,
                "state": "pending",
                "active_since": iso(r["issued_at"]),
                "fired_at": None,
                "info": {},
                "key": None,
                "misses": 0,
                "annotations": {
                    "summary": (
                        f"{r['resource']} cap of {r['slice_id']} rolled back "
                        f"{r['old_cap']} -> {r['new_cap']} {unit}"
                    ),
                    "description": r["reason"],
                    "decision_id": r["decision_id"],
                    "mode": r["mode"],
                },
            }
            self._fire(state, fp, r["issued_at"], ev)
        if rows:
            state["rollback_watermark"] = iso(max(r["issued_at"] for r in rows))
        elif wm is None:
            state["rollback_watermark"] = iso(since)

    # -- transitions and notifications ----------------------------------------------------------

    def _fire(self, state: dict[str, Any], fp: str, at: datetime, ev: Evaluation) -> None:
        alert = state["alerts"][fp]
        alert["state"] = "firing"
        alert["fired_at"] = iso(at)
        alert["last_sent"] = iso(at)
        alert["repeats"] = 0
        self._enqueue(state, fp, alert, "firing", at, ev)

    def _resolve(self, state: dict[str, Any], fp: str, at: datetime, ev: Evaluation, reason: str) -> None:
        alert = state["alerts"].pop(fp)
        ann = dict(alert.get("annotations") or {})
        ann["resolved_reason"] = reason
        alert["annotations"] = ann
        self._enqueue(state, fp, alert, "resolved", at, ev)

    def _repeat(self, state: dict[str, Any], now: datetime, ev: Evaluation) -> None:
        for fp, alert in sorted(state["alerts"].items()):
            if alert["state"] != "firing":
                continue
            if (now - parse_iso(alert["last_sent"])).total_seconds() >= self.rules.repeat_s:
                alert["repeats"] += 1
                alert["last_sent"] = iso(now)
                self._enqueue(state, fp, alert, "repeat", now, ev)

    def _enqueue(
        self, state: dict[str, Any], fp: str, alert: dict[str, Any], event: str, at: datetime, ev: Evaluation
    ) -> None:
        starts = alert["fired_at"]
        nid = hashlib.sha256(f"{fp}|{starts}|{event}|{alert.get('repeats', 0)}".encode()).hexdigest()[:32]
        if any(n["id"] == nid for n in state["outbox"]):
            return
        status = "resolved" if event == "resolved" else "firing"
        targets = self.route(alert["labels"])
        note = {
            "id": nid,
            "event": event,
            "fingerprint": fp,
            "status": status,
            "labels": alert["labels"],
            "annotations": alert.get("annotations") or {},
            "startsAt": starts,
            "endsAt": iso(at) if status == "resolved" else ZERO_TIME,
            "event_ts": iso(at),
            "generatorURL": self.rules.external_url,
            "enqueued_at": iso(ev.now),
            "targets": {t["key"]: "pending" for t in targets},
            "attempts": 0,
        }
        if targets:
            state["outbox"].append(note)
        ev.notifications.append(note)

    def _expire_outbox(self, state: dict[str, Any], now: datetime) -> None:
        keep = []
        for n in state["outbox"]:
            age = (now - parse_iso(n["enqueued_at"])).total_seconds()
            if all(v != "pending" for v in n["targets"].values()):
                continue
            if age > self.rules.outbox_max_s:
                log.error(
                    "alerts: notification %s (%s) dropped undelivered after %.0f h",
                    n["id"],
                    n["labels"].get("alertname"),
                    age / 3600,
                )
                continue
            keep.append(n)
        state["outbox"] = keep

    def active(self) -> list[dict[str, Any]]:
        """Pending and firing alerts now (for dashboards and the Alertmanager v2 resend)."""
        state = self.load_state()
        return [dict(a, fingerprint=fp) for fp, a in sorted(state["alerts"].items())]


def rollbacks_since(lake: Lake, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """The enforcer's rollback decisions with since < issued_at <= until, oldest first (the audit,
    warehouse/enforcer_audit.py); [] when it holds none."""
    import duckdb

    from warehouse.sql import lit

    base = lake.root / "audit" / "enforcer" / "decisions"
    lo, hi = since.astimezone(UTC).date(), until.astimezone(UTC).date()
    files = sorted(  # only the date partitions the range touches: the audit grows forever
        lake.url(base / d / n)
        for d in lake.list_dirs(base)
        if d.startswith("date=") and lo.isoformat() <= d[5:] <= hi.isoformat()
        for n in lake.list_names(base / d)
    )
    if not files:
        return []
    src = f"read_parquet([{', '.join(lit(f) for f in files)}], hive_partitioning = false)"
    con = duckdb.connect()
    lake.register(con)
    try:
        cur = con.execute(
            "SELECT DISTINCT ON (decision_id) decision_id, issued_at, tenant, cluster, node, pool, "
            f"slice_id, resource, old_cap, new_cap, reason, mode FROM {src} "
            "WHERE action = 'rollback' AND issued_at > $since AND issued_at <= $until "
            "ORDER BY decision_id",
            {"since": since, "until": until},
        )
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, t, strict=True)) for t in cur.fetchall()]
    finally:
        con.close()
    return sorted(rows, key=lambda r: (r["issued_at"], r["decision_id"]))


def _cents(v: Decimal) -> Decimal:
    return v.quantize(Decimal("0.01"))
