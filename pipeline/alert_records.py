"""The record of every alert transition in the lake: ``alerts/date=D/part-*.parquet``, one row per
notification (firing, repeat, resolved), queryable with DuckDB beside the samples.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.alert_state import parse_iso
from warehouse.lake import Lake

ALERTS = "alerts"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "no end" for firing alerts

RECORD_SCHEMA = pa.schema(
    [
        ("event_ts", pa.timestamp("us", tz="UTC")),  # when it fired / resolved / was repeated
        ("evaluated_at", pa.timestamp("us", tz="UTC")),
        ("event", pa.string()),  # firing | repeat | resolved
        ("status", pa.string()),  # firing | resolved (Alertmanager's)
        ("alertname", pa.string()),
        ("fingerprint", pa.string()),
        ("notification_id", pa.string()),
        ("severity", pa.string()),
        ("tenant", pa.string()),
        ("starts_at", pa.timestamp("us", tz="UTC")),
        ("ends_at", pa.timestamp("us", tz="UTC")),
        ("cost", pa.decimal128(18, 2)),  # wasted so far (idle rules), in `currency`
        ("currency", pa.string()),
        ("labels", pa.string()),  # JSON object, sorted keys
        ("annotations", pa.string()),  # JSON object, sorted keys
        ("targets", pa.string()),  # JSON list of receiver/url the notification is routed to
    ]
)


def write_record(
    lake: Lake, root: Path, notes: list[dict[str, Any]], now: datetime, currency: str | None
) -> Path | None:
    """Transitions of this evaluation into alerts/date=D/; the name derives from the notification
    ids, so an evaluation redone after a crash rewrites the same file instead of adding one."""
    if not notes:
        return None
    cur = currency
    by_date: dict[date, list[dict[str, Any]]] = defaultdict(list)
    for n in notes:
        by_date[parse_iso(n["event_ts"]).date()].append(n)
    last = None
    for day, group in sorted(by_date.items()):
        rows = []
        for n in group:
            cost = n["annotations"].get("wasted_cost") or None
            rows.append(
                {
                    "event_ts": parse_iso(n["event_ts"]),
                    "evaluated_at": now,
                    "event": n["event"],
                    "status": n["status"],
                    "alertname": n["labels"]["alertname"],
                    "fingerprint": n["fingerprint"],
                    "notification_id": n["id"],
                    "severity": n["labels"].get("severity"),
                    "tenant": n["labels"].get("tenant"),
                    "starts_at": parse_iso(n["startsAt"]),
                    "ends_at": None if n["status"] == "firing" else parse_iso(n["endsAt"]),
                    "cost": None if cost is None else Decimal(cost),
                    "currency": cur if cost is not None else None,
                    "labels": json.dumps(n["labels"], sort_keys=True),
                    "annotations": json.dumps(n["annotations"], sort_keys=True),
                    "targets": json.dumps(sorted(n["targets"])),
                }
            )
        name = hashlib.sha256("|".join(n["id"] for n in group).encode()).hexdigest()[:24]
        table = pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
        last = lake.write_file(table, root / f"date={day.isoformat()}" / f"part-{name}.parquet")
    return last


def records_glob(lake: Lake | str) -> str:
    root = lake.root if isinstance(lake, Lake) else Path(lake)
    return str(root / ALERTS / "date=*" / "*.parquet")
