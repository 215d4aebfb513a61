"""What the Caps dashboard page and the monthly report show of the enforcer, from the lake only:
each vGPU slice's caps against its use, the decisions with their acks, and capacity reclaimed.

Reclaimed memory of a slice = its allocation (the first cap the enforcer saw for it, kept in the
policy state: the enforcer never gives more) minus its cap at its last sample. Every function takes
`allowed` (None: every tenant) and returns only rows of those tenants.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from warehouse.enforcer_audit import audit_sql, load_state
from warehouse.enforcer_features import latest_slices
from warehouse.lake import Lake
from warehouse.sql import lit
from warehouse.staging import dates_between, samples_sql

Allowed = frozenset[str] | None


def _ok(tenant: Any, allowed: Allowed) -> bool:
    return allowed is None or tenant in allowed


def slices_now(
    lake: Lake,
    now: datetime,
    allowed: Allowed,
    tenant_rules: Sequence[Mapping[str, Any]] = (),
    default_tenant: str = "unassigned",
    *,
    hours: float = 24.0,
) -> list[dict[str, Any]]:
    """Each vGPU slice seen in the last `hours`: cap and use at its last sample, allocation, reclaimed."""
    state = load_state(lake).get("slices", {})
    out = []
    for s in latest_slices(lake, now, tenant_rules, default_tenant, hours=hours):
        if s["kind"] != "vgpu" or not _ok(s["tenant"], allowed):
            continue
        cap = s["mem_cap_mib"]
        alloc = (state.get(s["slice_id"]) or {}).get("requested_mem_mib") or cap
        reclaimed = max(0, int(alloc or 0) - int(cap or 0))
        total = s.get("gpu_mem_total_mib") or 0
        out.append(
            {
                "slice_id": s["slice_id"],
                "tenant": s["tenant"],
                "pool": f"{s['cluster']}/{s['model']}",
                "node": s["node"],
                "mem_cap_mib": cap,
                "mem_used_mib": s["mem_used_mib"],
                "core_cap_pct": s["core_cap_pct"],
                "allocation_mib": alloc,
                "reclaimed_mib": reclaimed,
                "gpu_equivalents": round(reclaimed / total, 4) if total else 0.0,
                "last_ts": s["last_ts"],
            }
        )
    out.sort(key=lambda r: (-r["reclaimed_mib"], r["slice_id"]))
    return out


def reclaimed_by(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """slices_now rows added up per (tenant, pool): slices, of them shrunk, GiB and GPU-equivalents."""
    acc: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        a = acc.setdefault(
            (r["tenant"], r["pool"]),
            {"tenant": r["tenant"], "pool": r["pool"], "slices": 0, "shrunk": 0, "gib": 0.0, "gpu_eq": 0.0},
        )
        a["slices"] += 1
        a["shrunk"] += 1 if r["reclaimed_mib"] > 0 else 0
        a["gib"] += r["reclaimed_mib"] / 1024.0
        a["gpu_eq"] += r["gpu_equivalents"]
    out = sorted(acc.values(), key=lambda a: (-a["gib"], a["tenant"], a["pool"]))
    for a in out:
        a["gib"], a["gpu_eq"] = round(a["gib"], 3), round(a["gpu_eq"], 4)
    return out


def decisions(
    lake: Lake, now: datetime, allowed: Allowed, *, hours: float = 24.0, limit: int = 200
) -> list[dict[str, Any]]:
    """The decisions of the last `hours`, newest first, with their state: recorded (not meant to be
    sent), held (failed the re-check), pending (sent, no ack, not expired), expired (sent, no ack),
    or the ack's status (applied / refused / applies-at-restart)."""
    dec = audit_sql(lake, "decisions")
    if dec is None:
        return []
    acks = audit_sql(lake, "acks")
    since = lit((now - timedelta(hours=hours)).isoformat())
    join = (
        "LEFT JOIN (SELECT decision_id, arg_max(status, acked_at) AS ack, "
        f"arg_max(reason, acked_at) AS ack_reason FROM {acks} GROUP BY 1) a USING (decision_id)"
        if acks
        else "LEFT JOIN (SELECT NULL::VARCHAR decision_id, NULL::VARCHAR ack, NULL::VARCHAR ack_reason "
        "WHERE FALSE) a USING (decision_id)"
    )
    if allowed is None:
        who = ""
    else:
        who = "AND tenant IN (" + ", ".join(lit(t) for t in sorted(allowed)) + ")" if allowed else "AND FALSE"
    sql = f"""
SELECT decision_id, issued_at, expires_at, tenant, pool, slice_id, resource, action, old_cap, new_cap,
       mode, sent, held, reason, inputs, ack, ack_reason
FROM {dec} {join}
WHERE issued_at > {since}::TIMESTAMPTZ AND issued_at <= {lit(now.isoformat())}::TIMESTAMPTZ {who}
ORDER BY issued_at DESC, decision_id LIMIT {int(limit)}"""
    cols = [
        "decision_id", "issued_at", "expires_at", "tenant", "pool", "slice_id", "resource", "action",
        "old_cap", "new_cap", "mode", "sent", "held", "reason", "inputs", "ack", "ack_reason",
    ]  # fmt: skip
    out = []
    for row in duckdb.connect().sql(sql).fetchall():
        r = dict(zip(cols, row, strict=True))
        if not r["sent"]:
            r["state"] = "held" if r["held"] else "recorded"
        elif r["ack"]:
            r["state"] = r["ack"]
        else:
            r["state"] = "pending" if r["expires_at"] > now else "expired"
        r["inputs"] = json.loads(r["inputs"]) if r["inputs"] else {}
        out.append(r)
    return out


def cap_series(
    lake: Lake, now: datetime, slice_ids: Sequence[str], *, hours: float = 24.0, window_s: int = 300
) -> dict[str, list[dict[str, Any]]]:
    """Per slice, per window: the highest use and the cap (its highest in the window)."""
    if not slice_ids:
        return {}
    since = now - timedelta(hours=hours)
    where = f"ts > {lit(since.isoformat())}::TIMESTAMPTZ AND ts <= {lit(now.isoformat())}::TIMESTAMPTZ"
    days = dates_between(since.astimezone(UTC).date(), now.astimezone(UTC).date())
    src = samples_sql(lake, "slice", days, where)
    if src is None:
        return {}
    ids = ", ".join(lit(s) for s in slice_ids)
    sql = f"""
SELECT slice_id, to_timestamp(floor(epoch(ts) / {int(window_s)}) * {int(window_s)}) AS w,
       max(mem_used_mib) AS used, max(mem_cap_mib) AS cap
FROM {src} WHERE slice_id IN ({ids}) GROUP BY ALL ORDER BY slice_id, w"""
    out: dict[str, list[dict[str, Any]]] = {}
    for sid, w, used, cap in duckdb.connect().sql(sql).fetchall():
        out.setdefault(sid, []).append({"t": w, "used_mib": used, "cap_mib": cap})
    return out


def caps_view(
    lake: Lake,
    now: datetime,
    allowed: Allowed,
    tenant_rules: Sequence[Mapping[str, Any]] = (),
    default_tenant: str = "unassigned",
    *,
    hours: float = 24.0,
    top: int = 6,
) -> dict[str, Any]:
    """Everything the Caps page draws, for the tenants in `allowed` only."""
    rows = slices_now(lake, now, allowed, tenant_rules, default_tenant, hours=hours)
    decs = decisions(lake, now, allowed, hours=hours)
    shown = [r["slice_id"] for r in rows[:top]]
    band: dict[str, list[dict[str, Any]]] = {}
    for d in sorted(decs, key=lambda d: d["issued_at"]):
        if d["resource"] == "memory" and d["slice_id"] in shown and "recommendation_mib" in d["inputs"]:
            band.setdefault(d["slice_id"], []).append(
                {
                    "t": d["issued_at"],
                    "floor_mib": d["inputs"].get("floor_mib"),
                    "recommendation_mib": d["inputs"]["recommendation_mib"],
                }
            )
    return {
        "now": now,
        "slices": rows,
        "by_tenant_pool": reclaimed_by(rows),
        "decisions": decs,
        "series": cap_series(lake, now, shown, hours=hours),
        "band": band,
    }


def rightsizing_month(
    lake: Lake | str,
    month: str,
    tenant_rules: Sequence[Mapping[str, Any]] = (),
    default_tenant: str = "unassigned",
    book: Any = None,
) -> list[dict[str, Any]]:
    """Memory the enforcer reclaimed in `month`, per (tenant, cluster, GPU model): slices below
    their allocation, GiB-hours (allocation - cap, tick by tick), the same as GPU-hours (over the
    GPU's memory) and what those are worth at the price book (`book`: a PriceBook; None or a model
    without a price: no worth). Empty when the enforcer never changed a cap."""
    from decimal import Decimal

    from warehouse.errors import PriceError
    from warehouse.pricing import month_bounds
    from warehouse.rules import tenant_sql

    lake = lake if isinstance(lake, Lake) else Lake(lake)
    alloc = {
        sid: int(s["requested_mem_mib"])
        for sid, s in load_state(lake).get("slices", {}).items()
        if s.get("requested_mem_mib")
    }
    if not alloc:
        return []
    m0, m1 = month_bounds(month)
    days = dates_between(m0, m1 - timedelta(days=1))
    src = samples_sql(lake, "slice", days)
    if src is None:
        return []
    values = ", ".join(f"({lit(k)}, {v})" for k, v in sorted(alloc.items()))
    sql = f"""
WITH a(slice_id, alloc) AS (VALUES {values}),
t AS (SELECT s.slice_id, s.cluster, s.model, ({tenant_sql(tenant_rules, default_tenant)}) AS tenant,
             CAST(s.ts AS DATE) AS day, (a.alloc - s.mem_cap_mib) * s.interval_s / 3600.0 AS mib_h,
             (a.alloc - s.mem_cap_mib) * s.interval_s / 3600.0 / s.gpu_mem_total_mib AS gpu_h
      FROM {src} s JOIN a USING (slice_id)
      WHERE s.kind = 'vgpu' AND s.mem_cap_mib < a.alloc AND s.gpu_mem_total_mib > 0)
SELECT tenant, cluster, model, day, count(DISTINCT slice_id), sum(mib_h), sum(gpu_h)
FROM t GROUP BY ALL ORDER BY tenant, cluster, model, day"""
    acc: dict[tuple[str, str, str], dict[str, Any]] = {}
    slices: dict[tuple[str, str, str], set[str]] = {}
    rows = duckdb.connect().sql(sql).fetchall()
    ids_sql = f"""
SELECT DISTINCT ({tenant_sql(tenant_rules, default_tenant)}), s.cluster, s.model, s.slice_id
FROM {src} s JOIN (VALUES {values}) a(slice_id, alloc) USING (slice_id)
WHERE s.kind = 'vgpu' AND s.mem_cap_mib < a.alloc"""
    for t, c, m, sid in duckdb.connect().sql(ids_sql).fetchall():
        slices.setdefault((t, c, m), set()).add(sid)
    for tenant, cluster, model, day, _n, mib_h, gpu_h in rows:
        a = acc.setdefault(
            (tenant, cluster, model),
            {
                "tenant": tenant,
                "cluster": cluster,
                "model": model,
                "slices": 0,
                "gib_h": 0.0,
                "gpu_h": 0.0,
                "worth": Decimal(0),
            },
        )
        a["gib_h"] += float(mib_h) / 1024.0
        a["gpu_h"] += float(gpu_h)
        if a["worth"] is not None:
            try:
                price = book.price_at(model, day).gpu_hour if book is not None else None
            except PriceError:
                price = None
            a["worth"] = None if price is None else a["worth"] + price * Decimal(str(round(float(gpu_h), 9)))
    out = []
    for key, a in sorted(acc.items()):
        a["slices"] = len(slices.get(key, ()))
        a["gib_h"], a["gpu_h"] = round(a["gib_h"], 3), round(a["gpu_h"], 6)
        if a["worth"] is not None:
            a["worth"] = a["worth"].quantize(Decimal("0.01"))
        out.append(a)
    return out
