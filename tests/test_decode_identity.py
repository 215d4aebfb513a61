"""The lake rows and DLQ reasons of one fixed mixed batch, pinned (issue 12: identical before and after).

The batch mixes real fleet ticks with every rejected example of the schema corpus, the JSON
text cases, ticks outside the receive window and a tick delivered twice. Each of the four
sample tables is pinned row by row (a digest of its rows in order); the DLQ is pinned as
(index, reason). `GPULEDGER_PIN=write` rewrites the pins (only when a change is intended).

The table digests and the rejected payloads are the ones pinned from the decoder before issue
12 (commit 62f97f8, exact checker); since then the reasons are the reference validator's
wording, naming the same field paths (the message-level ones as `(message)`).

Issue 17 appended columns (profiling, clocks, Xid events, memory health; `ISSUE17_COLUMNS` of
test_producer_golden): each table's ``digest`` is still taken over the columns that existed
before, and is unchanged; ``digest_all`` pins every column, the new ones included.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
from messages import valid_message
from test_batch_decode import TEXT_CASES, fleet
from test_producer_golden import ISSUE17_COLUMNS
from test_schema import REJECTED

from gpuledger.batch_decode import decode_batch_fast
from gpuledger.decode import TsWindow
from pipeline.ingest_worker import BatchBuilder, write_decoded
from warehouse.lake import Lake

PINS = Path(__file__).parent / "fixtures" / "decode_identity.json"
NOW = datetime(2026, 11, 27, 10, 1, 0, tzinfo=UTC)  # fixed receive time
WINDOW = TsWindow(future_s=300.0, past_s=30 * 86400.0)  # the fleet ticks (2026-11-01) are inside


def mixed_batch() -> list[bytes]:
    raws = list(fleet()[:40])
    for _name, mutate, _field in REJECTED:
        doc = valid_message(seq=1000 + len(raws))
        mutate(doc)
        raws.append(orjson.dumps(doc))
    for _name, raw, _clean in TEXT_CASES:
        raws.append(raw.replace(b'"seq":0', b'"seq":%d' % (2000 + len(raws)), 1))
    raws.append(orjson.dumps(valid_message(seq=3000, ts="2199-01-01T00:00:00Z")))
    raws.append(orjson.dumps(valid_message(seq=3001, ts="1900-01-01T00:00:00Z")))
    raws.append(raws[3])  # a tick twice in one batch
    return raws


def _digest(rows: list[dict[str, Any]]) -> str:
    text = json.dumps(rows, default=str, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def lake_of(tmp_path: Path) -> dict[str, Any]:
    """Decode and write the batch as the ingest worker does; read the lake back."""
    b = BatchBuilder()
    for i, raw in enumerate(mixed_batch()):
        b.add("gpu.samples.v1", i % 4, 500 + i, b"n", raw)
    batch = b.build()
    decoded = decode_batch_fast(
        batch.values,
        batch=11,
        max_message_bytes=1 << 20,
        partitions=batch.partitions,
        offsets=batch.offsets,
        joined=batch.blob,
        ts_window=WINDOW,
        now=NOW,
    )
    lake = Lake(tmp_path / "lake")
    write_decoded(lake, batch, decoded, 11)
    out: dict[str, Any] = {}
    for kind in ("tick", "gpu", "slice", "process"):
        rows = pq.read_table(lake.table_dir(kind), partitioning=None).to_pylist()
        before = [{k: v for k, v in r.items() if k not in ISSUE17_COLUMNS} for r in rows]
        out[kind] = {"rows": len(rows), "digest": _digest(before), "digest_all": _digest(rows)}
    dlq = pq.read_table(tmp_path / "lake" / "dlq", partitioning=None).to_pylist()
    out["dlq"] = [[r["offset"] - 500, r["reason"]] for r in sorted(dlq, key=lambda r: r["offset"])]
    out["dlq_payloads"] = _digest([r["payload"].hex() for r in sorted(dlq, key=lambda r: r["offset"])])
    return out


def test_lake_and_dlq_are_as_pinned(tmp_path: Path) -> None:
    got = lake_of(tmp_path)
    if os.environ.get("GPULEDGER_PIN") == "write":
        PINS.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")
    want = json.loads(PINS.read_text())
    for kind in ("tick", "gpu", "slice", "process"):
        assert got[kind] == want[kind], kind
    assert got["dlq_payloads"] == want["dlq_payloads"]
    assert got["dlq"] == want["dlq"]
