"""The enforcer's loop: lake -> features -> policy -> re-check -> audit -> `gpu.caps.v1`; acks -> lake.

One cycle (`Enforcer.cycle`, run every `enforcer.interval_s` by `gpuledger jobs`) reads the features
through warehouse/enforcer_features.py, calls the pure policy, re-checks each decision meant to be
sent against the slice's freshest sample, appends every decision (sent, held or recommended) with
its inputs to the audit, and only then sends. `recommend` mode writes decisions and sends nothing.
`land_acks` moves the node agents' acks from `gpu.cap-acks.v1` into the audit (bad ones to its
DLQ table with the reason). A rollback is alerted by the alert engine's `GpuCapRolledBack` rule
(pipeline/alerts.py), which reads it from the audit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pyarrow as pa
import pyarrow.compute as pc

from gpuledger.config import Config
from pipeline.enforcer_history import NO_WINDOW, FleetHistory
from pipeline.enforcer_policy import Decision, PolicyState, SliceFeatures, decide, recheck
from warehouse.enforcer_audit import append, load_state, save_state
from warehouse.enforcer_features import latest_slices, windows
from warehouse.lake import Lake

DECISION_SCHEMA_ID = "gpuledger.cap-decision/v1"


def _schema(name: str) -> jsonschema.Draft202012Validator:
    from importlib import resources

    return jsonschema.Draft202012Validator(
        json.loads(resources.files("gpuledger").joinpath(name).read_text())
    )


DECISION_VALIDATOR = _schema("cap_decision.schema.json")
ACK_VALIDATOR = _schema("cap_ack.schema.json")


def _z(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_message(d: Decision) -> dict[str, Any]:
    """The `gpu.caps.v1` message of a decision (cap_decision.schema.json)."""
    m = asdict(d)
    m.pop("send")
    m["issued_at"], m["expires_at"] = _z(d.issued_at), _z(d.expires_at)
    m["inputs"] = json.loads(json.dumps(d.inputs, default=str))
    return {"schema": DECISION_SCHEMA_ID, **m}


def fold_table(history: FleetHistory, wins: pa.Table) -> None:
    """Fold windows() rows (an Arrow table) into the history, column-wise."""
    if wins.num_rows == 0:
        return
    starts = pc.divide(pc.cast(pc.cast(wins["w_start"], pa.timestamp("us", tz="UTC")), pa.int64()), 1_000_000)
    history.fold(
        wins["slice_id"].to_pylist(),
        starts.to_numpy(zero_copy_only=False),
        pc.cast(wins["mem_peak_mib"], pa.float64()).to_numpy(zero_copy_only=False),
        pc.cast(wins["util_max"], pa.float64()).to_numpy(zero_copy_only=False),
        wins["ticks"].to_numpy(zero_copy_only=False),
        wins["pinned_ticks"].to_numpy(zero_copy_only=False),
        pc.fill_null(wins["oom_suspect"], False).to_numpy(zero_copy_only=False),
    )


def build_features(meta: Iterable[dict[str, Any]], history: FleetHistory) -> list[SliceFeatures]:
    """SliceFeatures from latest_slices() rows, each pointing at its row of the history."""
    out = []
    for m in meta:
        row = history.row(m["slice_id"])
        first = m["first_seen"]
        k = min(history.first_mem[row], history.first_util[row]) if row is not None else NO_WINDOW
        if k < NO_WINDOW:  # the first window seen, as the windows' list gave it before
            first = min(first, datetime.fromtimestamp(int(history.start_s(k)), UTC))
        out.append(
            SliceFeatures(
                slice_id=m["slice_id"],
                cluster=m["cluster"],
                node=m["node"],
                model=m["model"] or "",
                kind=m["kind"],
                tenant=m["tenant"],
                gpu_uuid=m["gpu_uuid"],
                first_seen=first,
                last_ts=m["last_ts"],
                interval_s=m["interval_s"],
                mem_cap_mib=m["mem_cap_mib"],
                core_cap_pct=m["core_cap_pct"],
                mem_used_mib=m["mem_used_mib"],
                gpu_mem_total_mib=m["gpu_mem_total_mib"],
                pod_uid=m["pod_uid"],
                container=m["container"],
                memory_slices=m["memory_slices"],
                gpu_memory_slices=m["gpu_memory_slices"],
                replicas=m["replicas"],
                history=history,
                row=-1 if row is None else row,
            )
        )
    return out


class Enforcer:
    """The policy cycle over one lake; `send(node, message)` puts a decision on `gpu.caps.v1`."""

    def __init__(self, cfg: Config, send: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self.lake = Lake(cfg.lake.path, cfg.lake.zstd_level)
        self.lake.unsupported("the enforcer (its features, audit and state files)")
        self.send = send
        self.history: FleetHistory | None = None
        self.folded_at: datetime | None = None

    def features(self, now: datetime) -> list[SliceFeatures]:
        """The slices' features at `now`. The history is kept between cycles: built from
        `window_days` of windows at first use (or when the clock goes back), afterwards only the
        windows since the start of the previous cycle's day are folded again (late ticks of the
        day replace what was folded; windows are idempotent)."""
        e = self.cfg.enforcer
        since = None
        if self.history is None or self.folded_at is None or now < self.folded_at:
            self.history = FleetHistory(e)
        else:
            day = datetime.combine(self.folded_at.astimezone(UTC).date(), datetime.min.time(), UTC)
            since = day - timedelta(seconds=1)
        wins = windows(
            self.lake,
            now,
            days=e.window_days,
            window_s=int(e.peak_minutes * 60),
            pinned_points=e.core_pinned_points,
            near_cap_frac=e.oom_near_cap_frac,
            since=since,
        )
        fold_table(self.history, wins)
        self.folded_at = now
        meta = latest_slices(self.lake, now, self.cfg.tenants.rules, self.cfg.tenants.default)
        return build_features(meta, self.history)

    def cycle(self, now: datetime) -> dict[str, Any]:
        """One policy cycle; returns counts for the job log."""
        e = self.cfg.enforcer
        if e.mode == "off" and not e.pools and not e.tenants:
            return {"mode": "off"}
        state = PolicyState.from_json(load_state(self.lake))
        decisions, state = decide(state, self.features(now), now, e)
        to_send = [d for d in decisions if d.send]
        fresh = {
            r["slice_id"]: r
            for r in latest_slices(self.lake, now, hours=1.0, slice_ids=[d.slice_id for d in to_send])
        }
        rows, sent, held = [], 0, 0
        for d in decisions:
            why = None
            if d.send:
                f = fresh.get(d.slice_id, {})
                cap = f.get("mem_cap_mib") if d.resource == "memory" else f.get("core_cap_pct")
                why = recheck(
                    d, cap, f.get("mem_used_mib"), f.get("last_ts"), f.get("interval_s") or 60.0, now, e
                )
            go = d.send and why is None and self.send is not None
            rows.append({**asdict(d), "sent": go, "held": why})
            if go:
                sent += 1
            elif d.send:
                held += 1
                state.slices[d.slice_id].pending_until.pop(d.resource, None)
        append(self.lake, "decisions", rows)  # audit before send: nothing goes out unrecorded
        for d, r in zip(decisions, rows, strict=True):
            if r["sent"] and self.send is not None:
                self.send(d.node, to_message(d))
        save_state(self.lake, state.to_json())
        return {"decisions": len(decisions), "sent": sent, "held": held, "demoted": sorted(state.demoted)}


def land_acks(lake: Lake, messages: Iterable[tuple[str, bytes]], now: datetime) -> tuple[int, int]:
    """Acks (topic, raw) into the audit; a malformed one into the audit's DLQ with the reason."""
    acks, bad = [], []
    for topic, raw in messages:
        try:
            msg = json.loads(raw)
            errs = sorted(ACK_VALIDATOR.iter_errors(msg), key=lambda e: list(e.path))
            if errs:
                where = "/".join(str(p) for p in errs[0].path) or "(root)"
                raise ValueError(f"{where}: {errs[0].message}")
        except ValueError as e:
            bad.append({"received_at": now, "topic": topic, "reason": str(e), "payload": raw})
            continue
        acks.append(msg)
    append(lake, "acks", acks)
    append(lake, "dlq", bad)
    return len(acks), len(bad)


class AckLander:
    """`gpu.cap-acks.v1` into the audit, once per enforcer cycle (`gpuledger jobs`): one consumer
    kept across cycles (group `<client_id>-enforcer-acks`), offsets committed after the acks are
    in the lake (a crash in between lands those acks twice: the audit is at-least-once)."""

    def __init__(self, cfg: Config, lake: Lake) -> None:
        self.cfg, self.lake = cfg, lake
        self._consumer: Any = None

    def land(self, now: datetime, *, max_polls: int = 5, poll_ms: int = 200) -> dict[str, int]:
        if self._consumer is None:
            from kafka import KafkaConsumer

            self._consumer = KafkaConsumer(
                self.cfg.kafka.cap_acks_topic,
                bootstrap_servers=self.cfg.kafka.bootstrap_servers,
                group_id=f"{self.cfg.kafka.client_id}-enforcer-acks",
                client_id=f"{self.cfg.kafka.client_id}-enforcer-acks",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
        msgs: list[tuple[str, bytes]] = []
        for _ in range(max_polls):
            batch = self._consumer.poll(timeout_ms=poll_ms)
            for recs in batch.values():
                msgs += [(r.topic, r.value) for r in recs]
            if not batch and msgs:
                break
        if not msgs:
            return {"acks": 0, "bad_acks": 0}
        good, bad = land_acks(self.lake, msgs, now)
        self._consumer.commit()
        return {"acks": good, "bad_acks": bad}

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def kafka_sender(cfg: Config) -> Callable[[str, dict[str, Any]], None] | None:
    """A sender onto `kafka.caps_topic` (key = node), made on first use so a recommend-only or off
    enforcer never connects; None when no mode anywhere can send."""
    modes = {cfg.enforcer.mode, *cfg.enforcer.pools.values()}
    if modes <= {"off", "recommend"}:
        return None
    holder: dict[str, Any] = {}

    def send(node: str, msg: dict[str, Any]) -> None:
        if "p" not in holder:
            from kafka import KafkaProducer

            holder["p"] = KafkaProducer(
                bootstrap_servers=cfg.kafka.bootstrap_servers,
                client_id=f"{cfg.kafka.client_id}-enforcer",
                acks="all",
            )
        holder["p"].send(
            cfg.kafka.caps_topic, key=node.encode(), value=json.dumps(msg, sort_keys=True).encode()
        )
        holder["p"].flush()

    return send


def memory_sender(
    lake: Lake,
    deliver: Callable[[dict[str, Any]], dict[str, Any] | None],
    acks_topic: str,
    clock: Callable[[], datetime],
) -> Callable[[str, dict[str, Any]], None]:
    """An in-process sender (the demo's, without a broker): each decision, as its JSON would travel
    on `gpu.caps.v1`, goes to `deliver` (the node side, e.g. a simulated fleet's agent), and the ack
    that comes back lands in the audit at once through `land_acks`, as if read from `acks_topic`.
    `deliver` returns None for a decision it already answered (nothing lands)."""

    def send(node: str, msg: dict[str, Any]) -> None:
        ack = deliver(json.loads(json.dumps(msg, sort_keys=True)))
        if ack is not None:
            land_acks(lake, [(acks_topic, json.dumps(ack, sort_keys=True).encode())], clock())

    return send


def status(cfg: Config, now: datetime) -> dict[str, Any]:
    """What `gpuledger enforcer status` prints: modes, demoted tenants, last 24 h of decisions and acks."""
    import duckdb

    from warehouse.enforcer_audit import audit_sql

    lake = Lake(cfg.lake.path)
    lake.unsupported("the enforcer (its features, audit and state files)")
    state = PolicyState.from_json(load_state(lake))
    out: dict[str, Any] = {
        "mode": cfg.enforcer.mode,
        "pools": dict(cfg.enforcer.pools),
        "tenants": dict(cfg.enforcer.tenants),
        "opt_out": list(cfg.enforcer.opt_out),
        "demoted": dict(state.demoted),
        "decisions_24h": {},
        "acks_24h": {},
    }
    since = f"'{(now - timedelta(hours=24)).isoformat()}'::TIMESTAMPTZ"
    con = duckdb.connect()
    dec = audit_sql(lake, "decisions")
    if dec:
        q = f"SELECT action || CASE WHEN sent THEN ' sent' ELSE ' recorded' END, count(*) FROM {dec} "
        out["decisions_24h"] = dict(
            con.sql(q + f"WHERE issued_at > {since} GROUP BY 1 ORDER BY 1").fetchall()
        )
    acks = audit_sql(lake, "acks")
    if acks:
        q = f"SELECT status, count(*) FROM {acks} WHERE acked_at > {since} GROUP BY 1 ORDER BY 1"
        out["acks_24h"] = dict(con.sql(q).fetchall())
    return out
