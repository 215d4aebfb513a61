"""The real money path over a real lake: shares, reserved/used/unallocated, hours, dedup, tenants.

Per slice tick through the staging layer (warehouse/staging.py `slice_ticks_sql`, every rule from
warehouse/rules.py), per GPU and hour through the rollups and `Accounting` (what the dashboards,
reports and the ledger read). Every expected number is worked out by hand from DESIGN §6 in the
comments next to it, so the path is checked against the contract rather than against its own SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from lake_views import LakeViews as Warehouse
from messages import G0, G1, valid_message, whole_slice

from gpuledger.decode import decode_batch
from warehouse.lake import Lake, new_batch_id
from warehouse.rules import HOUR_NO_SQL, tenant_sql

MAX = 1 << 20
H100_MIB = 81559  # mem_total_mib of G1 in tests/messages.py
T0 = "2026-11-27T10:00:10Z"
MIG_ID = f"{G0}:mig:1:0"
VGPU_ID = f"{G1}:hami:u2/main"
TS_ID = f"{G1}:ts:0"


def approx(v: float) -> Any:
    return pytest.approx(v, rel=1e-9, abs=1e-12)


def msg(
    seq: int = 0,
    ts: str = T0,
    slices: list[dict[str, Any]] | None = None,
    node: str = "n1",
    interval_s: float = 10.0,
) -> dict[str, Any]:
    """valid_message, optionally with other slices (processes dropped then: they would dangle)."""
    m = valid_message(seq, node, ts)
    m["interval_s"] = interval_s
    if slices is not None:
        m["slices"] = slices
        m["processes"] = []
    return m


def vgpu(
    sid: str,
    mem: int,
    core: float,
    util: float | None = None,
    gpu: str = G1,
    workload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "slice_id": f"{gpu}:hami:{sid}",
        "gpu_uuid": gpu,
        "kind": "vgpu",
        "mem_cap_mib": mem,
        "core_cap_pct": core,
        "util_pct": util,
        "workload": workload,
    }


def write(lake: Lake, msgs: list[dict[str, Any]], batch: int) -> None:
    """Decode + write one ingest batch with a chosen batch id (all messages must be valid)."""
    decoded = decode_batch([orjson.dumps(m) for m in msgs], batch=batch, max_message_bytes=MAX)
    assert decoded.rejects == []
    lake.write_batch(decoded, batch)


def ingest_write(lake: Lake, msgs: list[dict[str, Any]]) -> None:
    """Write one batch the way ingest does: a fresh time-ordered batch id, Kafka offsets stamped."""
    batch = new_batch_id()
    decoded = decode_batch(
        [orjson.dumps(m) for m in msgs],
        batch=batch,
        max_message_bytes=MAX,
        partitions=[0] * len(msgs),
        offsets=list(range(len(msgs))),
    )
    assert decoded.rejects == []
    lake.write_batch(decoded, batch)


def rows(wh: Warehouse, query: str) -> list[dict[str, Any]]:
    rel = wh.sql(query)
    return [dict(zip(rel.columns, r, strict=True)) for r in rel.fetchall()]


def by(items: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    out = {r[key]: r for r in items}
    assert len(out) == len(items), f"duplicate {key} values"
    return out


def one(wh: Warehouse, query: str) -> Any:
    return wh.sql(query).fetchall()[0][0]


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake")


# -- share, reserved, used, unallocated ---------------------------------------------------------


def test_share_used_and_gpu_totals_of_the_reference_message(lake: Lake) -> None:
    write(lake, [msg()], batch=1)
    wh = Warehouse(lake)
    s = by(rows(wh, "SELECT * FROM slice_acct"), "slice_id")
    assert set(s) == {MIG_ID, VGPU_ID, TS_ID}
    # MIG 3g.40gb on an A100: max(3/7, 4/8) = max(0.428571.., 0.5) = 0.5
    assert s[MIG_ID]["share"] == approx(0.5)
    # vgpu: max(20480/81559 = 0.251106.., 30/100 = 0.30) = 0.30
    assert 20480 / H100_MIB < 0.30
    assert s[VGPU_ID]["share"] == approx(0.30)
    # timeslice with 4 replicas: 1/4
    assert s[TS_ID]["share"] == approx(0.25)
    # Σ on G1 = 0.30 + 0.25 = 0.55 ≤ 1, so reserved = Δ·share: 10·0.30 = 3.0, 10·0.25 = 2.5; G0: 10·0.5 = 5
    assert s[VGPU_ID]["gpu_sum_share"] == approx(0.55)
    assert s[VGPU_ID]["reserved_s"] == approx(3.0)
    assert s[TS_ID]["reserved_s"] == approx(2.5)
    assert s[MIG_ID]["reserved_s"] == approx(5.0)
    # used: MIG 40 % activity × compute fraction 3/7 → 0.4·3/7·10 = 12/7 = 1.714285..
    assert s[MIG_ID]["used_frac"] == approx(0.4 * 3 / 7)
    assert s[MIG_ID]["used_s"] == approx(12 / 7)
    # vgpu 12 % → 0.12·10 = 1.2; timeslice 20 % → 0.20·10 = 2.0
    assert s[VGPU_ID]["used_s"] == approx(1.2)
    assert s[TS_ID]["used_s"] == approx(2.0)

    g = by(rows(wh, "SELECT * FROM gpu_acct"), "uuid")
    # G0 (A100): capacity 10, reserved 10·0.5 = 5, unallocated 10·(1−0.5) = 5, used 12/7
    assert g[G0]["capacity_s"] == 10.0
    assert g[G0]["reserved_s"] == approx(5.0)
    assert g[G0]["unallocated_s"] == approx(5.0)
    assert g[G0]["used_s"] == approx(12 / 7)
    assert g[G0]["n_slices"] == 1
    # G1 (H100): reserved 10·0.55 = 5.5, unallocated 10·0.45 = 4.5, used 1.2 + 2.0 = 3.2
    assert g[G1]["capacity_s"] == 10.0
    assert g[G1]["reserved_s"] == approx(5.5)
    assert g[G1]["unallocated_s"] == approx(4.5)
    assert g[G1]["used_s"] == approx(3.2)
    assert g[G1]["n_slices"] == 2
    # conservation per GPU: reserved + unallocated = capacity
    for r in g.values():
        assert r["reserved_s"] + r["unallocated_s"] == approx(r["capacity_s"])


def test_whole_slice_share_is_one_and_used_is_its_util(lake: Lake) -> None:
    write(lake, [msg(slices=[whole_slice(G1)])], batch=1)
    wh = Warehouse(lake)
    (s,) = rows(wh, "SELECT * FROM slice_acct")
    # whole: share 1, reserved 10·1/max(1, 1) = 10, used 37.5 % · 10 = 3.75
    assert s["share"] == 1.0
    assert s["reserved_s"] == approx(10.0)
    assert s["used_s"] == approx(3.75)
    g = by(rows(wh, "SELECT * FROM gpu_acct"), "uuid")
    assert g[G1]["reserved_s"] == approx(10.0)
    assert g[G1]["unallocated_s"] == 0.0


def test_vgpu_share_memory_term_wins_and_core_zero_means_memory_only(lake: Lake) -> None:
    slices = [
        # mem 40960/81559 = 0.502213.. > core 0.20 → memory term
        vgpu("mem-wins", 40960, 20),
        # core 0 = no core reservation: compute term 0, share = 8192/81559 = 0.100442..
        vgpu("core-zero", 8192, 0),
    ]
    write(lake, [msg(slices=slices)], batch=1)
    wh = Warehouse(lake)
    s = by(rows(wh, "SELECT slice_id, share, reserved_s FROM slice_acct"), "slice_id")
    assert s[f"{G1}:hami:mem-wins"]["share"] == approx(40960 / H100_MIB)
    assert s[f"{G1}:hami:core-zero"]["share"] == approx(8192 / H100_MIB)
    # Σ = 49152/81559 = 0.602655.. < 1 → unallocated = 10·(1 − 49152/81559)
    (g,) = rows(wh, f"SELECT * FROM gpu_acct WHERE uuid = '{G1}'")
    assert g["reserved_s"] == approx(10 * 49152 / H100_MIB)
    assert g["unallocated_s"] == approx(10 * (1 - 49152 / H100_MIB))


def test_mig_share_compute_term_wins_for_1g_10gb(lake: Lake) -> None:
    mig = {
        "slice_id": f"{G0}:mig:9:0",
        "gpu_uuid": G0,
        "kind": "mig",
        "mig_profile": "1g.10gb",
        "gi_id": 9,
        "ci_id": 0,
        "compute_slices": 1,
        "memory_slices": 1,
        "gpu_compute_slices": 7,
        "gpu_memory_slices": 8,
        "util_pct": 50.0,
    }
    write(lake, [msg(slices=[mig])], batch=1)
    (s,) = rows(Warehouse(lake), "SELECT * FROM slice_acct")
    # max(1/7, 1/8) = 1/7; used 0.5·1/7·10 = 5/7
    assert s["share"] == approx(1 / 7)
    assert s["used_s"] == approx(5 / 7)


def test_overcommitted_hami_gpu_is_scaled_to_capacity(lake: Lake) -> None:
    slices = [
        # shares by core: 60 % and 80 % (memory terms 1024/81559 ≈ 0.0126 are smaller)
        vgpu("a", 1024, 60, util=30.0),
        vgpu("b", 1024, 80, util=10.0),
    ]
    write(lake, [msg(slices=slices)], batch=1)
    wh = Warehouse(lake)
    s = by(rows(wh, "SELECT * FROM slice_acct"), "slice_id")
    a, b = s[f"{G1}:hami:a"], s[f"{G1}:hami:b"]
    assert a["share"] == approx(0.6)
    assert b["share"] == approx(0.8)
    # Σ = 1.4 > 1 → reserved = 10·0.6/1.4 = 30/7 = 4.285714.., 10·0.8/1.4 = 40/7 = 5.714285..
    assert a["gpu_sum_share"] == approx(1.4)
    assert a["reserved_s"] == approx(30 / 7)
    assert b["reserved_s"] == approx(40 / 7)
    assert a["reserved_s"] + b["reserved_s"] == approx(10.0)
    # busy adds up to 0.4 ≤ 1: used is each slice's own, 0.30·10 = 3.0 and 0.10·10 = 1.0
    assert a["used_s"] == approx(3.0)
    assert b["used_s"] == approx(1.0)
    g = by(rows(wh, "SELECT * FROM gpu_acct"), "uuid")
    # the GPU never reserves more than its capacity: 10, unallocated max(0, 1 − 1.4)·10 = 0 (each
    # slice's seconds are floored to the nanosecond, so at most a nanosecond each stays unreserved)
    assert g[G1]["sum_share"] == approx(1.4)
    assert 10.0 - 2e-9 <= g[G1]["reserved_s"] <= 10.0
    assert 0.0 <= g[G1]["unallocated_s"] <= 2e-9
    assert g[G1]["used_s"] == approx(4.0)
    # G0 has no slice in this message: capacity 10, reserved 0, unallocated 10, used 0
    assert g[G0]["n_slices"] == 0
    assert g[G0]["capacity_s"] == 10.0
    assert g[G0]["reserved_s"] == 0.0
    assert g[G0]["unallocated_s"] == 10.0
    assert g[G0]["used_s"] == 0.0


def test_busy_past_the_whole_gpu_is_scaled_like_reserved(lake: Lake) -> None:
    """Over-committed in busy time too: 80 % + 70 % of one GPU is 1.5 GPUs of work, which the GPU
    cannot have done; used = Δ·busy / Σ busy, as everywhere (staging, rollups, alerts, exporter)."""
    write(lake, [msg(slices=[vgpu("a", 1024, 60, util=80.0), vgpu("b", 1024, 60, util=70.0)])], batch=1)
    wh = Warehouse(lake)
    s = by(rows(wh, "SELECT * FROM slice_acct"), "slice_id")
    assert s[f"{G1}:hami:a"]["used_s"] == approx(10 * 0.8 / 1.5)  # 5.333..
    assert s[f"{G1}:hami:b"]["used_s"] == approx(10 * 0.7 / 1.5)  # 4.666..
    (g,) = rows(wh, f"SELECT * FROM gpu_acct WHERE uuid = '{G1}'")
    assert 10.0 - 2e-9 <= g["used_s"] <= 10.0  # never more than the GPU's time
    # the summary, the dashboards and the ledger read the same rollups
    assert wh.summary()["used_gpu_h"] == approx(g["used_s"] / 3600)


def test_null_util_gives_no_used(lake: Lake) -> None:
    slices = [vgpu("quiet", 20480, 30, util=None), vgpu("busy", 20480, 10, util=25.0)]
    write(lake, [msg(slices=slices)], batch=1)
    wh = Warehouse(lake)
    s = by(rows(wh, "SELECT * FROM slice_acct"), "slice_id")
    # unknown utilisation: no busy fraction, 0 used (never billed as use), never idle
    assert s[f"{G1}:hami:quiet"]["used_frac"] is None
    assert s[f"{G1}:hami:quiet"]["used_s"] == 0.0
    assert s[f"{G1}:hami:quiet"]["idle"] is False
    # reserved still counts: 10·0.30 = 3.0 (20480/81559 = 0.2511 < 0.30)
    assert s[f"{G1}:hami:quiet"]["reserved_s"] == approx(3.0)
    # busy: 0.25·10 = 2.5; the GPU's used is just that
    assert s[f"{G1}:hami:busy"]["used_s"] == approx(2.5)
    (g,) = rows(wh, f"SELECT used_s FROM gpu_acct WHERE uuid = '{G1}'")
    assert g["used_s"] == approx(2.5)


def test_gpu_whose_only_slice_has_null_util_has_zero_used(lake: Lake) -> None:
    m = msg()
    m["slices"][0]["util_pct"] = None  # the MIG slice on G0 (GPM unsupported)
    write(lake, [m], batch=1)
    wh = Warehouse(lake)
    (g,) = rows(wh, f"SELECT used_s, reserved_s FROM gpu_acct WHERE uuid = '{G0}'")
    assert g["used_s"] == 0.0
    assert g["reserved_s"] == approx(5.0)


# -- hours ------------------------------------------------------------------------------------------


def test_fleet_hourly_assigns_ticks_by_their_interval(lake: Lake) -> None:
    # 10:00:10 covers 10:00:00–10:00:10 → hour 10; 11:00:00 covers 10:59:50–11:00:00 → hour 10;
    # 11:00:10 covers 11:00:00–11:00:10 → hour 11.
    msgs = [msg(0, "2026-11-27T10:00:10Z"), msg(1, "2026-11-27T11:00:00Z"), msg(2, "2026-11-27T11:00:10Z")]
    write(lake, msgs, batch=1)
    wh = Warehouse(lake)
    hours = {(r["model"], r["hour"].astimezone(UTC)): r for r in wh.fleet_hourly()}
    h10 = datetime(2026, 11, 27, 10, tzinfo=UTC)
    h11 = datetime(2026, 11, 27, 11, tzinfo=UTC)
    a100, h100 = "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"
    assert set(hours) == {(a100, h10), (h100, h10), (a100, h11), (h100, h11)}

    r = hours[(h100, h10)]
    # two ticks: capacity 20 s; reserved 2·5.5 = 11 s; used 2·3.2 = 6.4 s; unallocated 2·4.5 = 9 s
    assert r["cluster"] == "c1"
    assert r["capacity_gpu_h"] == approx(20 / 3600)
    assert r["reserved_gpu_h"] == approx(11 / 3600)
    assert r["used_gpu_h"] == approx(6.4 / 3600)
    assert r["unallocated_gpu_h"] == approx(9 / 3600)
    assert r["utilization"] == approx(6.4 / 20)  # 0.32
    assert r["allocation_rate"] == approx(11 / 20)  # 0.55

    r = hours[(a100, h10)]
    # two ticks: reserved 2·5 = 10 of 20 → 0.5; used 2·12/7 = 24/7 s → utilization (24/7)/20 = 6/35
    assert r["capacity_gpu_h"] == approx(20 / 3600)
    assert r["utilization"] == approx(6 / 35)
    assert r["allocation_rate"] == approx(0.5)

    r = hours[(h100, h11)]
    assert r["capacity_gpu_h"] == approx(10 / 3600)
    assert r["utilization"] == approx(0.32)
    assert r["allocation_rate"] == approx(0.55)

    # each tick's hour by the one rule (its midpoint)
    q = f"SELECT DISTINCT seq, to_timestamp(({HOUR_NO_SQL}) * 3600) AS hour FROM tick"
    got = {(r["seq"], r["hour"].astimezone(UTC)) for r in rows(wh, q)}
    assert got == {(0, h10), (1, h10), (2, h11)}


def test_summary_totals(lake: Lake) -> None:
    write(lake, [msg(0, "2026-11-27T10:00:10Z"), msg(1, "2026-11-27T10:00:20Z")], batch=1)
    s = Warehouse(lake).summary()
    assert (s["ticks"], s["nodes"], s["gpus"], s["slices"]) == (2, 1, 2, 3)
    # per tick: capacity 20, reserved 5 + 5.5 = 10.5, used 12/7 + 3.2, unallocated 5 + 4.5 = 9.5
    used = 2 * (12 / 7 + 3.2)
    assert s["capacity_gpu_h"] == approx(40 / 3600)
    assert s["reserved_gpu_h"] == approx(21 / 3600)
    assert s["used_gpu_h"] == approx(used / 3600)
    assert s["unallocated_gpu_h"] == approx(19 / 3600)
    assert s["utilization"] == approx(used / 40)
    assert s["allocation_rate"] == approx(21 / 40)  # 0.525
    assert s["tenants"] == 1  # no rules: everything is 'unassigned'


# -- at-least-once delivery --------------------------------------------------------------------


def _counts(wh: Warehouse) -> tuple[int, int, int, int, int]:
    return (
        one(wh, "SELECT count(*) FROM tick"),
        one(wh, "SELECT count(*) FROM gpu_sample"),
        one(wh, "SELECT count(*) FROM slice_sample"),
        one(wh, "SELECT count(*) FROM process_sample"),
        one(wh, "SELECT coalesce(sum(n_slices), 0) FROM gpu_acct"),  # slice ticks the rollups counted
    )


def test_same_ticks_in_two_batches_count_once(lake: Lake) -> None:
    msgs = [msg(0, "2026-11-27T10:00:10Z"), msg(1, "2026-11-27T10:00:20Z")]
    write(lake, msgs, batch=1)
    once = Warehouse(lake)
    counts, summary = _counts(once), once.summary()
    # 2 ticks · (2 GPUs, 3 slices, 2 processes)
    assert counts == (2, 4, 6, 4, 6)
    write(lake, msgs, batch=2)  # the whole batch delivered again
    wh = Warehouse(lake)
    assert one(wh, "SELECT count(*) FROM raw_slice") == 12
    assert _counts(wh) == counts
    assert wh.summary() == summary
    # the earliest committed batch is the one kept
    assert {r[0] for r in wh.sql("SELECT DISTINCT batch FROM slice_acct").fetchall()} == {1}
    # a redelivery that overlaps: seq 1 again plus a new seq 2 → 3 ticks, each once
    write(lake, [msgs[1], msg(2, "2026-11-27T10:00:30Z")], batch=3)
    assert _counts(wh) == (3, 6, 9, 6, 9)
    assert wh.summary()["ticks"] == 3
    assert wh.summary()["reserved_gpu_h"] == approx(3 * 10.5 / 3600)


def test_same_ticks_with_ingest_batch_ids_count_once(lake: Lake) -> None:
    msgs = [msg(k, f"2026-11-27T10:0{k}:00Z") for k in range(3)]
    ingest_write(lake, msgs)
    ingest_write(lake, msgs)
    wh = Warehouse(lake)
    assert one(wh, "SELECT count(DISTINCT batch) FROM raw_tick") == 2
    assert _counts(wh) == (3, 6, 9, 6, 9)
    s = wh.summary()
    assert s["ticks"] == 3
    assert s["capacity_gpu_h"] == approx(60 / 3600)


def test_tick_repeated_within_one_batch_counts_once(lake: Lake) -> None:
    # e.g. a spool replay of a send that had in fact landed: decode_batch keeps the first copy
    write(lake, [msg(0), msg(0)], batch=1)
    wh = Warehouse(lake)
    assert _counts(wh) == (1, 2, 3, 2, 3)
    # capacity 2 GPUs · 10 s; reserved 5 + 5.5 = 10.5 s (doubled rows would give Σ 1.1 on G1 and 40 s)
    assert wh.summary()["capacity_gpu_h"] == approx(20 / 3600)
    assert wh.summary()["reserved_gpu_h"] == approx(10.5 / 3600)


def _drop_tick_files(lake: Lake, batch: int) -> None:
    files = list(lake.table_dir("tick").rglob(f"part-{batch:020d}.parquet"))
    assert files
    for f in files:
        f.unlink()


def test_batch_without_tick_file_is_ignored(lake: Lake) -> None:
    msgs = [msg(0), msg(1, "2026-11-27T10:00:20Z")]
    # batch 1 crashed after its row files and before its tick file
    write(lake, msgs, batch=1)
    _drop_tick_files(lake, 1)
    wh = Warehouse(lake)
    assert one(wh, "SELECT count(*) FROM raw_slice") == 6
    assert _counts(wh) == (0, 0, 0, 0, 0)
    assert wh.summary()["ticks"] == 0
    # the re-delivered messages land in batch 2: counted once, from batch 2 only
    write(lake, msgs, batch=2)
    assert _counts(wh) == (2, 4, 6, 4, 6)
    assert {r[0] for r in wh.sql("SELECT DISTINCT batch FROM slice_sample").fetchall()} == {2}
    # a later crashed batch repeating committed ticks adds nothing either
    write(lake, msgs, batch=3)
    _drop_tick_files(lake, 3)
    assert _counts(wh) == (2, 4, 6, 4, 6)
    assert wh.summary()["reserved_gpu_h"] == approx(2 * 10.5 / 3600)


def test_ticks_spanning_two_dates_in_one_batch(lake: Lake) -> None:
    msgs = [msg(0, "2026-11-27T23:59:55Z"), msg(1, "2026-11-28T00:00:05Z")]
    write(lake, msgs, batch=1)
    wh = Warehouse(lake)
    assert sorted(p.parent.name for p in lake.table_dir("tick").rglob("*.parquet")) == [
        "date=2026-11-27",
        "date=2026-11-28",
    ]
    assert _counts(wh) == (2, 4, 6, 4, 6)


# -- tenants ------------------------------------------------------------------------------------------


def _tenants(wh: Warehouse) -> dict[str, str]:
    return {r[0]: r[1] for r in wh.sql("SELECT slice_id, tenant FROM slice_share").fetchall()}


def tenant_msg() -> dict[str, Any]:
    # MIG: namespace ml-vision, label team=vision; vgpu: namespace shared, label team=nlp;
    # timeslice: account physics, user bob; plus a second vgpu on G1 with only user carol.
    m = msg()
    m["slices"].append(vgpu("carol", 1024, 5, workload={"user": "carol"}))
    return m


def test_tenant_rules_each_matcher(lake: Lake) -> None:
    write(lake, [tenant_msg()], batch=1)
    rules = [
        {"tenant": "vision", "namespace": "ml-vision"},
        {"tenant": "nlp", "label": "team=nlp"},
        {"tenant": "phys", "account": "physics"},
        {"tenant": "carols", "user": "carol"},
    ]
    t = _tenants(Warehouse(lake, rules))
    assert t == {MIG_ID: "vision", VGPU_ID: "nlp", TS_ID: "phys", f"{G1}:hami:carol": "carols"}


def test_tenant_rules_first_match_wins_and_default(lake: Lake) -> None:
    write(lake, [tenant_msg()], batch=1)
    rules = [
        {"tenant": "by-label", "label": "team=vision"},
        {"tenant": "by-ns", "namespace": "ml-vision"},
        {"tenant": "by-user", "user": "bob"},
        {"tenant": "by-account", "account": "physics"},
    ]
    t = _tenants(Warehouse(lake, rules, default_tenant="platform"))
    # label rule before the namespace rule takes the MIG slice; user before account takes the timeslice;
    # nothing matches the vgpu slices (team=nlp, namespace shared; user carol) → the default
    assert t == {MIG_ID: "by-label", VGPU_ID: "platform", TS_ID: "by-user", f"{G1}:hami:carol": "platform"}
    # no rules at all: everything 'unassigned'
    assert set(_tenants(Warehouse(lake)).values()) == {"unassigned"}


def test_tenant_rule_values_with_quotes(lake: Lake) -> None:
    m = msg(
        slices=[
            vgpu("q", 1024, 10, workload={"namespace": "it's", "labels": {"o'k": "y'es"}}),
            vgpu("r", 1024, 10, workload={"namespace": "other", "labels": {"o'k": "y'es"}}),
        ]
    )
    write(lake, [m], batch=1)
    rules = [
        {"tenant": "o'brien", "namespace": "it's"},
        {"tenant": "l'abel", "label": "o'k=y'es"},
        {"tenant": "x", "user": "'; DROP TABLE tick; --"},
    ]
    wh = Warehouse(lake, rules, default_tenant="d'fault")
    assert _tenants(wh) == {f"{G1}:hami:q": "o'brien", f"{G1}:hami:r": "l'abel"}
    assert one(wh, "SELECT count(*) FROM tick") == 1
    assert tenant_sql([], "it's") == "'it''s'"


def test_tenant_rule_change_applies_at_query_time(lake: Lake) -> None:
    write(lake, [tenant_msg()], batch=1)
    before = _tenants(Warehouse(lake, [{"tenant": "nlp", "label": "team=nlp"}]))
    after = _tenants(Warehouse(lake, [{"tenant": "shared-pool", "namespace": "shared"}]))
    assert before[VGPU_ID] == "nlp"
    assert after[VGPU_ID] == "shared-pool"
    assert before[MIG_ID] == after[MIG_ID] == "unassigned"
    s = Warehouse(lake, [{"tenant": "a", "namespace": "ml-vision"}, {"tenant": "b", "account": "physics"}])
    assert s.summary()["tenants"] == 3  # a, b, unassigned


# -- empty and growing lakes --------------------------------------------------------------------


def test_empty_lake_has_zero_rows(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "nothing-here")
    for view in (
        "raw_tick",
        "raw_gpu",
        "raw_slice",
        "raw_process",
        "tick",
        "gpu_sample",
        "slice_sample",
        "process_sample",
        "slice_share",
        "slice_acct",
        "gpu_acct",
    ):
        assert one(wh, f"SELECT count(*) FROM {view}") == 0, view
    assert wh.fleet_hourly() == []
    s = wh.summary()
    assert (s["ticks"], s["nodes"], s["gpus"], s["slices"], s["tenants"]) == (0, 0, 0, 0, 0)
    assert s["capacity_gpu_h"] == 0.0
    assert s["utilization"] is None


def test_warehouse_sees_files_written_after_it_opened(lake: Lake) -> None:
    wh = Warehouse(lake)
    assert wh.summary()["ticks"] == 0
    # first batch: no slices or processes at all, so only tick and gpu files exist
    write(lake, [msg(0, slices=[])], batch=1)
    assert not lake.table_dir("slice").exists()
    assert one(wh, "SELECT count(*) FROM tick") == 1  # sql() refreshes
    (g,) = rows(wh, f"SELECT * FROM gpu_acct WHERE uuid = '{G1}'")
    assert g["unallocated_s"] == 10.0
    # then a batch with slices: picked up by refresh() too
    write(lake, [msg(1, "2026-11-27T10:00:20Z")], batch=2)
    wh.refresh()
    assert wh.con.sql("SELECT count(*) FROM slice_sample").fetchall() == [(3,)]
    s = wh.summary()
    assert s["ticks"] == 2
    # capacity 4 GPU ticks · 10 = 40 s; reserved only in tick 1: 5 + 5.5 = 10.5 s
    assert s["capacity_gpu_h"] == approx(40 / 3600)
    assert s["reserved_gpu_h"] == approx(10.5 / 3600)
    assert s["unallocated_gpu_h"] == approx(29.5 / 3600)
