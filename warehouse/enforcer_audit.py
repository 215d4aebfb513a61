"""The enforcer's append-only audit in the lake: decisions (with their inputs), acks, and rejected control
messages, plus the policy's state between cycles.

`audit/enforcer/{decisions,acks,dlq}/date=D/part-<batch>.parquet`: each write is a new file, never a
rewrite, so the audit only grows; read with DuckDB through `audit_sql`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from warehouse.lake import Lake, new_batch_id
from warehouse.sql import lit

TS = pa.timestamp("us", tz="UTC")
DECISION_SCHEMA = pa.schema(
    [
        ("decision_id", pa.string()),
        ("issued_at", TS),
        ("expires_at", TS),
        ("cluster", pa.string()),
        ("node", pa.string()),
        ("pool", pa.string()),
        ("tenant", pa.string()),
        ("slice_id", pa.string()),
        ("slice_kind", pa.string()),
        ("gpu_uuid", pa.string()),
        ("resource", pa.string()),
        ("action", pa.string()),
        ("old_cap", pa.int64()),
        ("new_cap", pa.int64()),
        ("mode", pa.string()),
        ("sent", pa.bool_()),
        ("held", pa.string()),  # why a decision meant to be sent was not (re-check), else null
        ("reason", pa.string()),
        ("note", pa.string()),
        ("inputs", pa.string()),  # JSON: percentiles, confidence, history length, use, floor
    ]
)
ACK_SCHEMA = pa.schema(
    [
        ("decision_id", pa.string()),
        ("acked_at", TS),
        ("cluster", pa.string()),
        ("node", pa.string()),
        ("slice_id", pa.string()),
        ("resource", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("used_mib", pa.int64()),
        ("cap_before", pa.int64()),
        ("cap_after", pa.int64()),
    ]
)
DLQ_SCHEMA = pa.schema(
    [("received_at", TS), ("topic", pa.string()), ("reason", pa.string()), ("payload", pa.binary())]
)
TABLES = {
    "decisions": (DECISION_SCHEMA, "issued_at"),
    "acks": (ACK_SCHEMA, "acked_at"),
    "dlq": (DLQ_SCHEMA, "received_at"),
}


def _ts(v: Any) -> datetime:
    if isinstance(v, datetime):
        return v
    return datetime.fromisoformat(str(v).replace("Z", "+00:00"))


def append(lake: Lake, table: str, rows: Iterable[Mapping[str, Any]]) -> list[Path]:
    """Append rows to one audit table (a new file per date partition); nothing when no rows."""
    schema, tcol = TABLES[table]
    out = []
    norm = []
    for r in rows:
        r = {k: r.get(k) for k in schema.names}
        for f in schema:
            if f.type == TS and r[f.name] is not None:
                r[f.name] = _ts(r[f.name]).astimezone(UTC)
        if table == "decisions" and not isinstance(r["inputs"], str):
            r["inputs"] = json.dumps(r["inputs"] or {}, sort_keys=True, default=str)
        norm.append(r)
    by_date: dict[str, list[dict[str, Any]]] = {}
    for r in norm:
        by_date.setdefault(r[tcol].date().isoformat(), []).append(r)
    batch = new_batch_id()
    for day, rs in sorted(by_date.items()):
        path = lake.root / "audit" / "enforcer" / table / f"date={day}" / f"part-{batch:020d}.parquet"
        out.append(lake.write_file(pa.Table.from_pylist(rs, schema=schema), path))
    return out


def audit_sql(lake: Lake, table: str) -> str | None:
    """A DuckDB relation over one audit table; None while it has no files."""
    base = lake.root / "audit" / "enforcer" / table
    if not lake.find(base, "date=*/*.parquet"):
        return None
    return f"read_parquet({lit(str(base / 'date=*' / '*.parquet'))}, hive_partitioning = false)"


STATE = Path("state") / "enforcer.json"


def load_state(lake: Lake) -> dict[str, Any]:
    try:
        return json.loads(lake.read_text(lake.root / STATE))
    except FileNotFoundError:
        return {}


def save_state(lake: Lake, state: Mapping[str, Any]) -> None:
    lake.write_bytes(lake.root / STATE, json.dumps(state, sort_keys=True).encode())
