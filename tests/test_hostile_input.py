"""Hostile input at ingest: ticks dated far from receive time, and objects with duplicate keys.

Both go to the DLQ with a reason in every decode path: the whole-batch path (native reader and
Arrow's reader) must hand such a batch back, and the typed path and the exact checker must
reject exactly the bad messages and keep every good one of the same batch.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from messages import valid_message

from gpuledger.batch_decode import decode_batch_fast, fast_decode
from gpuledger.config import load_config
from gpuledger.decode import TsWindow, decode_batch

MAX = 1 << 20
NOW = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
WINDOW = TsWindow(future_s=300.0, past_s=7 * 86400.0)


@pytest.fixture(autouse=True, params=["native", "arrow"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every case runs with both column readers of the whole-batch path."""
    import gpuledger.batch_decode as bd

    if request.param == "native":
        assert bd.native_reader() is not None, "the native reader is not built (pip install -e .)"
    else:
        monkeypatch.setattr(bd, "native_reader", lambda: None)
    return request.param


def _at(seq: int, ts: datetime) -> bytes:
    return orjson.dumps(valid_message(seq, ts=ts.strftime("%Y-%m-%dT%H:%M:%SZ")))


def _decode_all_paths(raws: list[bytes], **kw) -> list[tuple[str, object]]:
    """(path, result) for the whole-batch entry point, the typed path and the exact checker."""
    base = {"batch": 1, "max_message_bytes": MAX, **kw}
    return [
        ("fast", decode_batch_fast(raws, **base)),
        ("typed", decode_batch(raws, **base)),
        ("exact", decode_batch(raws, fast=False, **base)),
    ]


def test_ticks_outside_the_receive_window_are_rejected_with_the_reason_in_every_path():
    cases = [
        (NOW, None),
        (NOW + timedelta(seconds=300), None),  # exactly 5 min ahead: inside
        (NOW + timedelta(seconds=301), "is 301 s after receive time 2026-11-27T10:00:00Z (more than"),
        (datetime(2199, 12, 31, 23, 59, 50, tzinfo=UTC), "after receive time"),
        (datetime(2030, 1, 1, tzinfo=UTC), "lake.max_tick_future_s = 300 s in the future"),
        (NOW - timedelta(days=7), None),  # exactly the age bound: inside
        (NOW - timedelta(days=7, seconds=1), "is 604801 s before receive time 2026-11-27T10:00:00Z (older"),
        (datetime(1900, 1, 1, tzinfo=UTC), "older than lake.max_tick_age_s = 604800 s"),
    ]
    raws = [_at(i, ts) for i, (ts, _) in enumerate(cases)]
    bad = {i: why for i, (_, why) in enumerate(cases) if why is not None}
    assert fast_decode(raws, batch=1, max_message_bytes=MAX, ts_window=WINDOW, now=NOW) is None
    good_only = [r for i, r in enumerate(raws) if i not in bad]
    assert fast_decode(good_only, batch=1, max_message_bytes=MAX, ts_window=WINDOW, now=NOW) is not None
    for path, got in _decode_all_paths(raws, ts_window=WINDOW, now=NOW):
        assert got.accepted == [i for i in range(len(raws)) if i not in bad], path
        assert [r.index for r in got.rejects] == sorted(bad), path
        for r in got.rejects:
            assert r.reason.startswith("ts: "), (path, r.reason)
            assert bad[r.index] in r.reason, (path, r.reason)
        assert got.tables["tick"]["seq"].to_pylist() == got.accepted, path
    # Without a window (tools, backfills) the same batch is all accepted.
    assert decode_batch_fast(raws, batch=1, max_message_bytes=MAX).accepted == list(range(len(raws)))


def test_window_bounds_are_configurable_and_zero_turns_one_off():
    cfg = load_config(env={"GPULEDGER_LAKE_MAX_TICK_FUTURE_S": "60", "GPULEDGER_LAKE_MAX_TICK_AGE_S": "0"})
    window = TsWindow(cfg.lake.max_tick_future_s, cfg.lake.max_tick_age_s)
    raws = [_at(0, NOW + timedelta(seconds=61)), _at(1, datetime(1900, 1, 1, tzinfo=UTC))]
    got = decode_batch_fast(raws, batch=1, max_message_bytes=MAX, ts_window=window, now=NOW)
    assert got.accepted == [1]
    assert [r.index for r in got.rejects] == [0] and "max_tick_future_s = 60 s" in got.rejects[0].reason
    defaults = load_config(env={})
    assert (defaults.lake.max_tick_future_s, defaults.lake.max_tick_age_s) == (300.0, 604800.0)
    with pytest.raises(Exception, match="max_tick_age_s"):
        load_config(env={"GPULEDGER_LAKE_MAX_TICK_AGE_S": "-1"})


def test_ingest_sends_out_of_window_ticks_to_the_dlq(tmp_path):
    """Through the real pipeline (MemoryIngester, default config): dated 2199 and 1900 go to dlq/."""
    import pyarrow.parquet as pq

    from gpuledger.bus import MemoryBus
    from pipeline.ingest import MemoryIngester
    from warehouse.lake import Lake

    cfg = load_config(env={"GPULEDGER_LAKE_PATH": str(tmp_path / "lake")})
    now = datetime.now(UTC).replace(microsecond=0)
    bus = MemoryBus()
    dates = [now - timedelta(seconds=10 * k) for k in range(20)]
    dates[5] = datetime(2199, 1, 1, tzinfo=UTC)
    dates[12] = datetime(1900, 1, 1, tzinfo=UTC)
    for k, ts in enumerate(dates):
        bus.append(cfg.kafka.topic, b"n1", _at(k, ts))
    ing = MemoryIngester(bus, Lake(tmp_path / "lake"), cfg, workers=0)
    try:
        stats = ing.drain()
    finally:
        ing.close()
    assert (stats.ticks, stats.rejected) == (18, 2)
    dlq = pq.read_table(tmp_path / "lake" / "dlq").to_pylist()
    assert len(dlq) == 2
    reasons = sorted(r["reason"] for r in dlq)
    assert "after receive time" in reasons[0] or "after receive time" in reasons[1]
    assert any("older than lake.max_tick_age_s" in r for r in reasons)
