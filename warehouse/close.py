"""The month close: a ledger and its manifest, reproducible to the byte, with corrections.

`ledger/month=YYYY-MM/charges.parquet` holds the lines, `usage.parquet` and `idle.parquet` the
usage they were computed from (what the month's reports show); `manifest.json` (written last: the
commit record) holds what they were computed from: the rollup files and their hashes, the sample
files the rollups were built from, the configuration that matters for money and its hash, the code
version, totals and the conservation check. Closing again with the same inputs writes the same
bytes. A closed month is never edited: data that arrives for it later changes its rollups, and the
next close finds the difference and bills it as correction lines in the month being closed.
"""

from __future__ import annotations

import decimal
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from warehouse import closed_usage
from warehouse.accounting import Accounting
from warehouse.chargeback import CTX, quantize_line
from warehouse.errors import CloseError
from warehouse.lake import Lake, as_lake
from warehouse.ledger_model import ChargeLine, lines_to_table, table_to_lines
from warehouse.money_settings import CloseSettings, _canonical
from warehouse.pricing import days, month_bounds

LEDGER = "ledger"
MANIFEST = "manifest.json"
CHARGES = "charges.parquet"


@dataclass
class CloseResult:
    month: str
    path: Path
    manifest: dict[str, Any]
    lines: list[ChargeLine]
    unchanged: bool  # the month was already closed with exactly these bytes


def code_version() -> str:
    try:
        return metadata.version("gpuledger")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def month_dates(month: str) -> list[str]:
    """Sample dates a month's hours can live in: its days and the next day's first minutes."""
    m0, m1 = month_bounds(month)
    return [d.isoformat() for d in days(m0, m1 + timedelta(days=1))]


def ledger_dir(lake: Lake | str | Path, month: str) -> Path:
    return as_lake(lake).root / LEDGER / f"month={month}"


def closed_months(lake: Lake | str | Path) -> list[str]:
    lake = as_lake(lake)
    return [p.parent.name[6:] for p in lake.find(lake.root / LEDGER, f"month=*/{MANIFEST}")]


def read_ledger(lake: Lake | str | Path, month: str) -> tuple[list[ChargeLine], dict[str, Any]]:
    lake = as_lake(lake)
    d = ledger_dir(lake, month)
    manifest = json.loads(lake.read_text(d / MANIFEST))
    return table_to_lines(lake.read_table(d / CHARGES)), manifest


def manifest_sha256(lake: Lake | str | Path, month: str) -> str:
    """What ties a report or a page to the closed ledger it shows."""
    lake = as_lake(lake)
    return hashlib.sha256(lake.read_bytes(ledger_dir(lake, month) / MANIFEST)).hexdigest()


def _inputs(acct: Accounting, month: str) -> list[dict[str, Any]]:
    """Rollup files of the month's dates with their hashes, and the sample files behind them."""
    out = []
    root = acct.lake.root
    for date_ in month_dates(month):
        for table in ("slice_hourly", "gpu_hourly", "idle_runs", "node_ticks"):
            p = acct.rollups.root / table / f"date={date_}" / "part.parquet"
            if acct.lake.exists(p):
                out.append({"path": str(p.relative_to(root)), "sha256": acct.lake.sha256(p)})
        samples = acct.rollups._inputs(date_)
        if samples:
            listing = hashlib.sha256(_canonical(samples)).hexdigest()
            out.append({"path": f"samples/*/date={date_}", "files": len(samples), "listing_sha256": listing})
    return out


def _key(ln: ChargeLine) -> tuple:
    kind = ln.line_type
    return (kind, ln.tenant, ln.cluster, ln.gpu_model, ln.charge_start, ln.price_from)


def _corrections(lake: Lake, month: str, acct_kw: dict[str, Any], closed: list[str]) -> list[ChargeLine]:
    """Correction lines for earlier closed months whose inputs changed since they were closed."""
    out: list[ChargeLine] = []
    for past in closed:
        if past >= month:
            continue
        lines, manifest = read_ledger(lake, past)
        settings = CloseSettings.from_json(manifest["config"])
        acct = settings.accounting(lake, **acct_kw)
        try:
            acct.update(month_dates(past))
            if _inputs(acct, past) == manifest["inputs"]:
                continue
            # What the month would be billed now, with the settings it was closed with ...
            now = settings.charges(acct, past).lines
        finally:
            acct.close()
        # ... minus what was billed: the closed lines and corrections already issued for it.
        billed: dict[tuple, list[Decimal]] = defaultdict(lambda: [Decimal(0)] * 4)
        templates: dict[tuple, ChargeLine] = {}
        issued = [
            ln
            for m in closed
            if past < m < month
            for ln in read_ledger(lake, m)[0]
            if ln.corrects_period == past
        ]
        with decimal.localcontext(CTX):
            for ln in [*[x for x in lines if x.corrects_period is None], *issued]:
                k = _key(replace(ln, line_type=_original_type(ln)))
                b = billed[k]
                b[0] -= ln.gpu_hours
                b[1] -= ln.kwh or 0
                b[2] -= ln.cost_exact
                b[3] -= ln.cost
                templates.setdefault(k, ln)
            for ln in map(quantize_line, now):
                k = _key(ln)
                b = billed[k]
                b[0] += ln.gpu_hours
                b[1] += ln.kwh or 0
                b[2] += ln.cost_exact
                b[3] += ln.cost
                templates[k] = ln
        for k in sorted(billed, key=lambda k: tuple(str(x) for x in k)):
            d_hours, d_kwh, d_cost, d_cents = billed[k]
            if d_hours == 0 and d_kwh == 0 and d_cost == 0 and d_cents == 0:
                continue
            t = templates[k]
            out.append(
                replace(
                    t,
                    billing_period=month,
                    line_type="correction",
                    gpu_hours=d_hours,
                    kwh=d_kwh if t.kwh is not None else None,
                    cost_exact=d_cost,
                    # billed as the cents difference: what the month bills now minus what it billed
                    cost=d_cents,
                    corrects_period=past,
                    reserved_gpu_hours=None,
                    used_gpu_hours=None,
                    corrects_line_type=k[0],
                )
            )
    return out


def _original_type(ln: ChargeLine) -> str:
    return ln.corrects_line_type or ln.line_type if ln.line_type == "correction" else ln.line_type


def close_month(
    lake: Lake | str | Path,
    month: str,
    settings: CloseSettings,
    *,
    now: datetime | None = None,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> CloseResult:
    """Close `month`: rollups up to date, charges + corrections, conservation, ledger + manifest."""
    _, m1 = month_bounds(month)
    now = now or datetime.now(UTC)
    if datetime.combine(m1, time(), UTC) > now:
        raise CloseError(
            f"month {month} is not over yet (it ends {m1.isoformat()} 00:00 UTC); close it after"
        )
    acct_kw = {"threads": threads, "memory_limit": memory_limit}
    lake = as_lake(lake)
    closed = closed_months(lake)
    corrections = _corrections(lake, month, acct_kw, closed)
    acct = settings.accounting(lake, **acct_kw)
    try:
        acct.update(month_dates(month))
        # The idle periods stitched once and kept beside the rollups (as `gpuledger jobs` does after
        # each update), so the next close, report or dashboard of these rollups loads them.
        acct.save_idle()
        charges = settings.charges(acct, month, corrections)
        inputs = _inputs(acct, month)
        usage, idle = closed_usage.build(acct, *month_bounds(month))
    finally:
        acct.close()
    lines = [quantize_line(ln) for ln in charges.lines]
    table = lines_to_table(lines)
    manifest = {
        "month": month,
        "code_version": code_version(),
        "config": settings.as_json(),
        "config_sha256": settings.sha256(),
        "inputs": inputs,
        "lines": len(lines),
        "totals": {
            "currency": settings.currency,
            "cost": _fmt(charges.total, "0.01"),
            "expected_exact": _fmt(charges.expected_total, "1e-12"),
            "capacity_gpu_hours": _fmt(charges.capacity_gpu_h, "1e-9"),
            "corrections": _fmt(
                sum((ln.cost for ln in charges.lines if ln.line_type == "correction"), Decimal(0)), "0.01"
            ),
        },
        "conservation": "ok: lines add up exactly to capacity x price, and to the cent after rounding",
        "corrects": sorted({ln.corrects_period for ln in corrections if ln.corrects_period}),
    }
    d = ledger_dir(lake, month)
    charges_bytes = _parquet_bytes(table)
    manifest["charges_sha256"] = hashlib.sha256(charges_bytes).hexdigest()
    usage_bytes, idle_bytes = _parquet_bytes(usage), _parquet_bytes(idle)
    manifest["usage_sha256"] = hashlib.sha256(usage_bytes).hexdigest()
    manifest["idle_sha256"] = hashlib.sha256(idle_bytes).hexdigest()
    manifest_bytes = json.dumps(manifest, sort_keys=True, indent=2).encode() + b"\n"
    if month in closed:
        old = lake.read_bytes(d / MANIFEST)
        if old == manifest_bytes and lake.read_bytes(d / CHARGES) == charges_bytes:
            return CloseResult(month, d, manifest, lines, unchanged=True)
        raise CloseError(
            f"month {month} is already closed with other inputs or settings; a closed month is never "
            f"rewritten: late data for it becomes correction lines when the next open month closes"
        )
    lake.write_bytes(d / CHARGES, charges_bytes)
    lake.write_bytes(d / closed_usage.USAGE, usage_bytes)  # the usage the bill was made from
    lake.write_bytes(d / closed_usage.IDLE, idle_bytes)
    lake.write_bytes(d / MANIFEST, manifest_bytes)  # last: the commit record
    return CloseResult(month, d, manifest, lines, unchanged=False)


def _fmt(value: Decimal, places: str) -> str:
    return f"{value.quantize(Decimal(places), context=CTX):f}"


def _parquet_bytes(table: Any) -> bytes:
    import io

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True)
    return buf.getvalue()
