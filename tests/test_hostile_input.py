"""Hostile input at ingest: ticks dated far from receive time, and objects with duplicate keys.

Both go to the DLQ with a reason in every decode path: the whole-batch path must hand such a
batch back, and the explaining path (typed decode, and the reference validator alone) must
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


@pytest.fixture(autouse=True)
def reader() -> None:
    """The whole-batch path needs the native reader (gpuledger/native): its one column reader."""
    import gpuledger.batch_decode as bd

    assert bd.native_reader() is not None, "the native reader is not built (pip install -e .)"


def _at(seq: int, ts: datetime) -> bytes:
    return orjson.dumps(valid_message(seq, ts=ts.strftime("%Y-%m-%dT%H:%M:%SZ")))


def _decode_all_paths(raws: list[bytes], **kw) -> list[tuple[str, object]]:
    """(path, result) for the whole-batch entry point, the typed path and the reference validator alone."""
    base = {"batch": 1, "max_message_bytes": MAX, **kw}
    return [
        ("fast", decode_batch_fast(raws, **base)),
        ("typed", decode_batch(raws, **base)),
        ("reference", decode_batch(raws, fast=False, **base)),
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


def _dup_cases() -> list[tuple[bytes, str]]:
    """(message, the key named) with a key twice at each level: top, GPU, slice, workload, labels."""
    m = orjson.dumps(valid_message(7)).decode()
    assert m.count('"seq":7') == 1 and m.count('"temp_c":51') == 1
    assert m.count('"namespace":"shared"') == 1 and m.count('"labels":{"team":"nlp"') == 1
    return [
        (m.replace('"seq":7', '"seq":-1,"seq":7').encode(), "seq"),
        (m.replace('"seq":7', '"seq":7,"se\\u0071":8').encode(), "seq"),  # same key, escaped
        (m.replace('"temp_c":51', '"temp_c":51,"temp_c":99').encode(), "temp_c"),
        (
            m.replace('"namespace":"shared"', '"namespace":"shared","namespace":"kube-system"').encode(),
            "namespace",
        ),
        (m.replace('"labels":{"team":"nlp"', '"labels":{"team":"nlp","team":"billing"').encode(), "team"),
    ]


@pytest.mark.parametrize("walker", ["native", "python"])
def test_duplicate_keys_are_rejected_naming_the_key_in_every_path(walker, monkeypatch):
    import gpuledger.decode as ex

    if walker == "python":
        monkeypatch.setattr(ex, "_native_duplicate_key", lambda: None)
    else:
        assert ex._native_duplicate_key() is not None, "the native reader is not built"
    cases = _dup_cases()
    good = [orjson.dumps(valid_message(100 + k)) for k in range(3)]
    raws = [good[0], *[c for c, _ in cases], good[1], good[2]]
    bad = {1 + k: key for k, (_, key) in enumerate(cases)}
    assert fast_decode(raws, batch=1, max_message_bytes=MAX) is None
    assert fast_decode(good, batch=1, max_message_bytes=MAX) is not None
    for path, got in _decode_all_paths(raws):
        assert got.accepted == [0, len(raws) - 2, len(raws) - 1], path
        assert [r.index for r in got.rejects] == sorted(bad), path
        for r in got.rejects:
            want = f"invalid JSON: duplicate key {bad[r.index]!r} in an object"
            assert r.reason == want + " (parsers disagree on which value wins)", (path, r.reason)
        assert got.tables["tick"]["seq"].to_pylist() == [100, 101, 102], path


@pytest.mark.parametrize("walker", ["native", "python"])
def test_duplicate_key_walker_edges(walker, monkeypatch):
    import gpuledger.decode as ex

    if walker == "python":
        monkeypatch.setattr(ex, "_native_duplicate_key", lambda: None)
    d = ex.first_duplicate_key
    assert d(b'{"a":1,"b":[{"c":1},{"c":2}]}') is None  # same key in sibling objects is fine
    assert d(b'{"a":{"a":{"a":1}}}') is None  # and in nested ones
    assert d(b'{"a":[1,{"x":null,"y":true,"x":false}]}') == "x"
    many = "{" + ",".join(f'"k{i}":{i}' for i in range(200)) + ',"k150":0}'
    assert d(many.encode()) == "k150"  # past the linear-compare size
    assert d(memoryview(b'{"z":1,"z":2}')) == "z"
    assert d(b'{"a":') is None and d(b"not json") is None  # not JSON: other checks name the fault
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    assert d(deep) is None  # hostile nesting neither crashes nor recurses away
