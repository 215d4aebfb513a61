"""Data checks run on every rollup build, dbt-style: each is a query that counts the rows breaking
one rule of the contracts, so a failure names the rule, the date and an example instead of
surfacing later as a wrong bill.

- ``unique_ticks``: each (node, boot_id, seq) once within a committed batch. Across batches the
  staging rule keeps the first batch; a tick twice inside the batch it keeps would count twice.
- ``accepted_kinds``: every slice kind is one of whole, mig, vgpu, timeslice.
- ``share_in_range``: every slice tick's share is in (0, 1].
- ``reserved_within_capacity``: no GPU-hour reserves more GPU-seconds than it was observed for.

The rollup builder runs them on the tables it just computed (the same DuckDB connection, no
second read) and keeps the result per date under ``rollups/_state/checks/``; `gpuledger jobs`
counts failures in its metrics and logs them, and the dashboards' Overview shows them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from warehouse.lake import write_bytes_atomic
from warehouse.rules import KINDS

log = logging.getLogger(__name__)

CHECKS_DIR = "checks"


@dataclass(frozen=True)
class CheckResult:
    check: str
    date: str
    failures: int  # rows breaking the rule
    example: str | None  # one of them, as text


def _kinds() -> str:
    return ", ".join(f"'{k}'" for k in KINDS)


# name -> (count of failing rows, one example) over the date's committed tick files ({ticks}) and the
# builder's temp tables: `a` (one row per slice tick with its share), `_slices` (the slice rows'
# kinds), `_gpu_hourly` (the result).
QUERIES = {
    "unique_ticks": """
        SELECT count(*), any_value(node || ' ' || boot_id || ' seq ' || seq || ' batch ' || batch) FROM (
            SELECT node, boot_id, seq, batch FROM {ticks} GROUP BY ALL HAVING count(*) > 1)""",
    "accepted_kinds": f"""
        SELECT count(*), any_value(coalesce(kind, 'NULL')) FROM _slices
        WHERE kind IS NULL OR kind NOT IN ({_kinds()})""",
    "share_in_range": """
        SELECT count(*), any_value('share ' || coalesce(CAST(share AS VARCHAR), 'NULL')) FROM a
        WHERE share IS NULL OR NOT (share > 0 AND share <= 1)""",
    "reserved_within_capacity": """
        SELECT count(*), any_value(gpu_uuid || ' ' || CAST(hour AS VARCHAR) || ': reserved '
                                   || CAST(reserved_s AS VARCHAR) || ' s of ' || CAST(capacity_s AS VARCHAR))
        FROM _gpu_hourly WHERE reserved_s > capacity_s""",
}


def run(con: duckdb.DuckDBPyConnection, date: str, ticks: str) -> list[CheckResult]:
    """Every check on the builder's tables of one date (`ticks`: its committed tick files)."""
    out = []
    for name, q in QUERIES.items():
        n, example = con.execute(q.replace("{ticks}", ticks)).fetchall()[0]
        out.append(CheckResult(name, date, int(n), example if n else None))
    return out


def save(root: Path, date: str, results: list[CheckResult]) -> None:
    """Keep a date's results (rebuilding the date replaces them) and log each failure once."""
    for r in results:
        if r.failures:
            log.warning(
                "data check %s failed on %s: %d row(s), e.g. %s", r.check, date, r.failures, r.example
            )
    body = json.dumps([asdict(r) for r in results], sort_keys=True).encode()
    write_bytes_atomic(root / CHECKS_DIR / f"date={date}.json", body)


def failures(root: Path) -> list[CheckResult]:
    """The failing checks of every date's latest build."""
    out: list[CheckResult] = []
    d = root / CHECKS_DIR
    for p in sorted(d.glob("date=*.json")) if d.exists() else []:
        try:
            rows = json.loads(p.read_text())
        except (OSError, ValueError):
            continue  # replaced while read: the next look finds the new one
        out += [CheckResult(**r) for r in rows if r.get("failures")]
    return out
