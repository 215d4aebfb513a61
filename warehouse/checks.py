"""Data checks run on every rollup build, dbt-style: each is a query that counts the rows breaking
one rule of the contracts, so a failure names the rule, the date and an example instead of
surfacing later as a wrong bill.

- ``unique_ticks``: each (node, boot_id, seq) once within a committed batch. Across batches the
  staging rule keeps the first batch; a tick twice inside the batch it keeps would count twice.
- ``accepted_kinds``: every slice kind is one of whole, mig, vgpu, timeslice.
- ``share_in_range``: every slice tick's share is in (0, 1].
- ``reserved_within_capacity``: no GPU-hour reserves more GPU-seconds than it was observed for.

The rollup builder runs them on the tables it just computed (the same DuckDB connection, no
second read), per hour (rollups are recomputed by the hour), and keeps the hours' results under
``rollups/_state/checks/hourly/`` and their sum per date under ``rollups/_state/checks/``; `gpuledger jobs`
counts failures in its metrics and logs them, and the dashboards' Overview shows them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from warehouse.lake import Lake
from warehouse.rules import HOUR_NO_SQL, KINDS

log = logging.getLogger(__name__)

CHECKS_DIR = "checks"
HOURLY_DIR = "hourly"


@dataclass(frozen=True)
class CheckResult:
    check: str
    date: str
    failures: int  # rows breaking the rule
    example: str | None  # one of them, as text


def _kinds() -> str:
    return ", ".join(f"'{k}'" for k in KINDS)


# name -> (hour, count of failing rows, one example) per hour over the committed tick files of the
# hours being built ({ticks}) and the builder's temp tables: `a` (one row per slice tick with its
# share and hour `h`), `_slices` (the slice rows' kinds and hours), `_gpu_hourly` (the result).
QUERIES = {
    "unique_ticks": f"""
        SELECT h, count(*), any_value(node || ' ' || boot_id || ' seq ' || seq || ' batch ' || batch) FROM (
            SELECT {HOUR_NO_SQL} AS h, node, boot_id, seq, batch FROM {{ticks}} GROUP BY ALL
            HAVING count(*) > 1) GROUP BY h""",
    "accepted_kinds": f"""
        SELECT h, count(*), any_value(coalesce(kind, 'NULL')) FROM _slices
        WHERE kind IS NULL OR kind NOT IN ({_kinds()}) GROUP BY h""",
    "share_in_range": """
        SELECT h, count(*), any_value('share ' || coalesce(CAST(share AS VARCHAR), 'NULL')) FROM a
        WHERE share IS NULL OR NOT (share > 0 AND share <= 1) GROUP BY h""",
    "reserved_within_capacity": """
        SELECT CAST(epoch(hour) AS BIGINT) // 3600 AS h, count(*),
               any_value(gpu_uuid || ' ' || CAST(hour AS VARCHAR) || ': reserved '
                         || CAST(reserved_s AS VARCHAR) || ' s of ' || CAST(capacity_s AS VARCHAR))
        FROM _gpu_hourly WHERE reserved_s > capacity_s GROUP BY h""",
}


def run(
    con: duckdb.DuckDBPyConnection, date: str, ticks: str, hours: list[int]
) -> dict[int, list[CheckResult]]:
    """Every check on the builder's tables of the `hours` (hours since the epoch) it just built of
    one date (`ticks`: their committed tick rows): per hour, every check, failing or not."""
    out = {h: [CheckResult(name, date, 0, None) for name in QUERIES] for h in hours}
    for i, (name, q) in enumerate(QUERIES.items()):
        for h, n, example in con.execute(q.replace("{ticks}", ticks)).fetchall():
            out.setdefault(int(h), [CheckResult(c, date, 0, None) for c in QUERIES])[i] = CheckResult(
                name, date, int(n), example if n else None
            )
    return out


def combine(date: str, hourly: dict[int, list[CheckResult]]) -> list[CheckResult]:
    """A date's result: each check's failing rows summed over its hours, the first hour's example."""
    out = []
    for i, name in enumerate(QUERIES):
        rows = [hourly[h][i] for h in sorted(hourly)]
        n = sum(r.failures for r in rows)
        out.append(CheckResult(name, date, n, next((r.example for r in rows if r.failures), None)))
    return out


def load_hourly(lake: Lake, root: Path, date: str) -> dict[int, list[CheckResult]]:
    """The per-hour results kept by the last build of `date` (empty when none)."""
    try:
        doc = json.loads(lake.read_text(root / CHECKS_DIR / HOURLY_DIR / f"date={date}.json"))
    except (OSError, ValueError):
        return {}
    return {int(h): [CheckResult(**r) for r in rows] for h, rows in doc.items()}


def save(
    lake: Lake,
    root: Path,
    date: str,
    results: list[CheckResult],
    hourly: dict[int, list[CheckResult]] | None = None,
) -> None:
    """Keep a date's results (rebuilding the date replaces them) and log each failure once."""
    if hourly is not None:
        doc = {str(h): [asdict(r) for r in rows] for h, rows in sorted(hourly.items())}
        lake.write_bytes(root / CHECKS_DIR / HOURLY_DIR / f"date={date}.json", json.dumps(doc).encode())
    for r in results:
        if r.failures:
            log.warning(
                "data check %s failed on %s: %d row(s), e.g. %s", r.check, date, r.failures, r.example
            )
    body = json.dumps([asdict(r) for r in results], sort_keys=True).encode()
    lake.write_bytes(root / CHECKS_DIR / f"date={date}.json", body)


def failures(lake: Lake, root: Path) -> list[CheckResult]:
    """The failing checks of every date's latest build."""
    out: list[CheckResult] = []
    d = root / CHECKS_DIR
    for p in lake.find(d, "date=*.json"):
        try:
            rows = json.loads(lake.read_text(p))
        except (OSError, ValueError):
            continue  # replaced while read: the next look finds the new one
        out += [CheckResult(**r) for r in rows if r.get("failures")]
    return out
