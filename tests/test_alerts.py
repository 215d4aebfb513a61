"""Alert rules and lifecycle on hand-built and simulated lakes, with exact fire and resolve times."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
import scenario

from gpuledger.config import Config
from gpuledger.decode import decode_batch
from pipeline.alert_records import ZERO_TIME, records_glob
from pipeline.alert_rules import ALERTNAMES, AlertRules
from pipeline.alert_state import fingerprint
from pipeline.alerts import AlertEngine
from pipeline.kafka_lag import LagReading, kafka_lag
from warehouse.accounting import Accounting
from warehouse.lake import Lake, new_batch_id
from warehouse.pricing import PriceBook

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
MODEL = "NVIDIA H100 80GB HBM3"
BOOK = [{"model": MODEL, "gpu_hour": "3.60", "from": "2026-01-01"}]


def rules(**over: Any) -> AlertRules:
    cfg = Config()
    for k, v in over.items():
        setattr(cfg.alerts, k, v)
    return AlertRules.from_config(cfg)


def write(lake: Lake, msgs: list[dict[str, Any]]) -> None:
    batch = new_batch_id()
    decoded = decode_batch([orjson.dumps(m) for m in msgs], batch=batch, max_message_bytes=1 << 20)
    assert not decoded.rejects, decoded.rejects[:3]
    lake.write_batch(decoded, batch)


def tick(
    k: int,
    *,
    node: str = "n1",
    gpus: list[tuple[str, float | None]] = (),  # type: ignore[assignment]
    slices: list[dict[str, Any]] = (),  # type: ignore[assignment]
    start: datetime = T0,
    interval: float = 60.0,
) -> dict[str, Any]:
    """Tick k of a node (ts = start + k intervals) with (uuid, util %) GPUs and the given slices."""
    return {
        "schema": "gpuledger.sample/v1",
        "cluster": "c1",
        "node": node,
        "boot_id": "b0000000-0000-4000-8000-000000000000",
        "seq": k,
        "ts": (start + timedelta(seconds=k * interval)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "interval_s": interval,
        "gpus": [
            {
                "uuid": u,
                "index": i,
                "model": MODEL,
                "mem_total_mib": 81920,
                "mem_used_mib": 100,
                "util_pct": util,
                "power_w": 100.0,
                "energy_j": 100.0 * interval,
                "temp_c": 40,
                "mig_mode": False,
                "state": "ok",
            }
            for i, (u, util) in enumerate(gpus)
        ],
        "slices": list(slices),
        "processes": [],
    }


def whole(uuid: str, util: float | None, pod: str = "train-0", ns: str = "ml") -> dict[str, Any]:
    return {
        "slice_id": f"{uuid}:whole:{pod}",
        "gpu_uuid": uuid,
        "kind": "whole",
        "util_pct": util,
        "workload": {"namespace": ns, "pod": pod, "container": "main", "pod_uid": f"uid-{pod}"},
    }


def at(minutes: float, start: datetime = T0) -> str:
    return (start + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_minutes(
    engine: AlertEngine, minutes: Iterable[int], start: datetime = T0
) -> list[tuple[int, str, str, dict[str, Any]]]:
    """Evaluate once per minute; (minute, event, alertname, notification) of every transition."""
    out = []
    for m in minutes:
        ev = engine.evaluate(start + timedelta(minutes=m))
        out += [(m, n["event"], n["labels"]["alertname"], n) for n in ev.notifications]
    return out


# -- the golden scenario --------------------------------------------------------------------------


def test_golden_scenario_fires_and_resolves_at_exact_times(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    scenario.write(lake, scenario.messages())
    eng = AlertEngine(lake, rules(), tenant_rules=scenario.RULES, price_book=PriceBook(scenario.BOOK))
    # every minute around what happens (the first evaluation starts the state; the last sees the end)
    events = run_minutes(eng, [1, *range(50, 100), 120], scenario.START)
    got = [(m, ev, name, n["startsAt"], n["endsAt"]) for m, ev, name, n in events]
    assert got == [
        # A1 idle from tick 31 (23:31, period from 23:30): 30 minutes reached at 00:00
        (60, "firing", "GpuSliceIdle", "2026-10-16T00:00:00Z", ZERO_TIME),
        # node-b's last tick before its gap is 00:20; > 3 intervals (180 s) of silence at 00:24
        (84, "firing", "GpuCollectorSilent", "2026-10-16T00:24:00Z", ZERO_TIME),
        # its next tick (00:31) ends the silence
        (91, "resolved", "GpuCollectorSilent", "2026-10-16T00:24:00Z", "2026-10-16T00:31:00Z"),
        # A1 busy again from 00:31: resolved on the third busy tick (resolve_ticks = 3)
        (93, "resolved", "GpuSliceIdle", "2026-10-16T00:00:00Z", "2026-10-16T00:33:00Z"),
    ]
    fired, resolved = events[0][3], events[3][3]
    assert fired["labels"] == {
        "alertname": "GpuSliceIdle",
        "severity": "warning",
        "tenant": "research",
        "workload": "lab/sweep-0",
        "cluster": "east",
        "node": "node-a",
        "gpu": scenario.A1,
        "model": scenario.A100,
        "slice_id": f"{scenario.A1}:whole:p-sweep",
        "kind": "whole",
    }
    assert fired["fingerprint"] == fingerprint(fired["labels"])
    a = fired["annotations"]
    # 30 idle minutes at $2.00/GPU-h (the 00:00 tick still counts in the 23:00 hour of the 15th)
    assert (a["idle_since"], a["idle_minutes"], a["wasted_gpu_hours"], a["wasted_cost"], a["currency"]) == (
        "2026-10-15T23:30:00Z",
        "30.0",
        "0.500000",
        "1.00",
        "USD",
    )
    assert a["tenant"] == "research" and a["workload"] == "lab/sweep-0" and a["gpu"] == scenario.A1
    assert a["summary"] == (
        f"Idle slice for 30 min: tenant research, workload lab/sweep-0 on GPU {scenario.A1} ({scenario.A100})"
    )
    r = resolved["annotations"]
    # the whole period: 30 min at $2.00 + 30 min at $2.40 (from the 16th) = $2.20, as the accounting says
    assert (r["idle_minutes"], r["wasted_gpu_hours"], r["wasted_cost"], r["resolved_reason"]) == (
        "60.0",
        "1.000000",
        "2.20",
        "busy",
    )
    acct = Accounting(lake, tenant_rules=scenario.RULES, price_book=PriceBook(scenario.BOOK))
    acct.update()
    periods = acct.idle_periods()
    acct.close()
    assert [(p["slice_id"], p["cost"], p["minutes"]) for p in periods] == [
        (f"{scenario.A1}:whole:p-sweep", Decimal("2.20"), 60.0)
    ]
    eng.close()


def test_alert_records_in_the_lake(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    scenario.write(lake, scenario.messages())
    eng = AlertEngine(
        lake, rules(rules=["idle_slice"]), tenant_rules=scenario.RULES, price_book=PriceBook(scenario.BOOK)
    )
    for m in (59, 60, 92, 93):
        eng.evaluate(scenario.START + timedelta(minutes=m))
    eng.close()
    rows = duckdb.sql(
        f"SELECT event, status, alertname, tenant, strftime(starts_at, '%H:%M'), strftime(ends_at, '%H:%M'), "
        f"cost, currency, date FROM read_parquet('{records_glob(lake)}', hive_partitioning = true) "
        f"ORDER BY event_ts"
    ).fetchall()
    assert [r[:8] for r in rows] == [
        ("firing", "firing", "GpuSliceIdle", "research", "00:00", None, Decimal("1.00"), "USD"),
        ("resolved", "resolved", "GpuSliceIdle", "research", "00:00", "00:33", Decimal("2.20"), "USD"),
    ]
    assert [str(r[8]) for r in rows] == ["2026-10-16", "2026-10-16"]


# -- flapping, hysteresis, restarts ---------------------------------------------------------------


def _one_slice_lake(tmp_path: Path, busy: Callable[[int], bool], n: int = 80) -> Lake:
    lake = Lake(tmp_path)
    g = "GPU-11111111-0000-4000-8000-000000000000"
    write(
        lake,
        [tick(k, gpus=[(g, 50.0)], slices=[whole(g, 50.0 if busy(k) else 0.0)]) for k in range(1, n + 1)],
    )
    return lake


def test_one_busy_tick_inside_an_idle_period_neither_resolves_nor_refires(tmp_path: Path) -> None:
    lake = _one_slice_lake(tmp_path, lambda k: k == 41 or k >= 61)
    eng = AlertEngine(lake, rules(rules=["idle_slice"], resolve_ticks=3))
    events = [(m, e, n["endsAt"]) for m, e, _name, n in run_minutes(eng, range(5, 81, 5))]
    # idle from tick 1 (period from minute 0): fires at minute 30; the busy tick 41 is absorbed;
    # busy from 61: resolved on the third busy tick, minute 63 (seen by the evaluation at 65)
    assert events == [(30, "firing", ZERO_TIME), (65, "resolved", at(63))]
    eng.close()


def test_without_hysteresis_one_busy_tick_resolves(tmp_path: Path) -> None:
    lake = _one_slice_lake(tmp_path, lambda k: k == 41 or k >= 61)
    eng = AlertEngine(lake, rules(rules=["idle_slice"], resolve_ticks=1))
    events = [(m, e, n["endsAt"]) for m, e, _name, n in run_minutes(eng, range(5, 81, 5))]
    # 42..60 is 19 idle minutes: too short to fire again
    assert events == [(30, "firing", ZERO_TIME), (45, "resolved", at(41))]
    eng.close()


def test_pending_is_dropped_by_one_busy_tick(tmp_path: Path) -> None:
    # an idle period is a run of idle ticks (DESIGN §6): 20 idle, 1 busy, 25 idle never reaches 30 min
    lake = _one_slice_lake(tmp_path, lambda k: k == 21 or k > 46, n=60)
    eng = AlertEngine(lake, rules(rules=["idle_slice"]))
    assert run_minutes(eng, range(1, 61)) == []
    eng.close()


def test_fire_times_do_not_depend_on_how_often_the_job_runs(tmp_path: Path) -> None:
    lake = _one_slice_lake(tmp_path, lambda k: k >= 61)
    eng = AlertEngine(lake, rules(rules=["idle_slice"]))
    ev = eng.evaluate(T0 + timedelta(minutes=80))  # one evaluation after everything happened
    assert [(n["event"], n["startsAt"], n["endsAt"]) for n in ev.notifications] == [
        ("firing", at(30), ZERO_TIME),
        ("resolved", at(30), at(63)),
    ]
    eng.close()


def test_restart_continues_from_saved_state_and_sends_nothing_again(tmp_path: Path) -> None:
    lake = _one_slice_lake(tmp_path, lambda k: False, n=80)
    eng = AlertEngine(lake, rules(rules=["idle_slice"]))
    assert [e for _m, e, _n, _x in run_minutes(eng, range(25, 36))] == ["firing"]
    eng.close()
    again = AlertEngine(lake, rules(rules=["idle_slice"]))  # a new process on the same lake
    assert run_minutes(again, range(36, 80)) == []
    (alert,) = again.active()
    assert (alert["state"], alert["fired_at"], alert["annotations"]["idle_minutes"]) == (
        "firing",
        at(30),
        "79.0",
    )
    # a long idle period costs what all its ticks reserved: 79 GPU-minutes at $3.60 would be $4.74
    again.close()


def test_repeat_interval(tmp_path: Path) -> None:
    lake = _one_slice_lake(tmp_path, lambda k: False, n=200)
    eng = AlertEngine(
        lake, rules(rules=["idle_slice"], repeat_interval_minutes=60), price_book=PriceBook(BOOK)
    )
    events = [(m, e, n["annotations"]["wasted_cost"]) for m, e, _x, n in run_minutes(eng, range(10, 200, 10))]
    # 90 idle GPU-minutes at $3.60/h = $5.40; 150 = $9.00
    assert events == [(30, "firing", "1.80"), (90, "repeat", "5.40"), (150, "repeat", "9.00")]
    eng.close()


def test_a_slice_that_disappears_resolves_at_its_last_tick(tmp_path: Path) -> None:
    lake = _one_slice_lake(tmp_path, lambda k: False, n=40)  # the pod ends after tick 40
    eng = AlertEngine(lake, rules(rules=["idle_slice"]))
    events = [
        (m, e, n["endsAt"], n["annotations"].get("resolved_reason"))
        for m, e, _x, n in run_minutes(eng, range(30, 50))
    ]
    # > 3 intervals without a tick: seen at minute 44 (age 240 s > 180 s)
    assert events == [(30, "firing", ZERO_TIME, None), (44, "resolved", at(40), "no longer reported")]
    eng.close()


# -- whole GPUs, pools, silence, lag --------------------------------------------------------------


def test_idle_gpu_and_unallocated_pool(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    g0, g1, g2 = (f"GPU-{i}2222222-0000-4000-8000-000000000000" for i in range(3))
    # g0 unallocated; g1 held whole and idle at the GPU level; g2 held by a vGPU slice and busy.
    vg = {
        "slice_id": f"{g2}:hami:p/c",
        "gpu_uuid": g2,
        "kind": "vgpu",
        "mem_cap_mib": 40960,
        "core_cap_pct": 50,
        "mem_used_mib": 1000,
        "util_pct": 40.0,
        "workload": {"namespace": "nlp", "pod": "p", "container": "c", "pod_uid": "uid-p"},
    }
    msgs = [
        tick(
            k,
            gpus=[(g0, 0.0), (g1, 1.0 if k <= 50 else 60.0), (g2, 40.0)],
            slices=[whole(g1, 1.0 if k <= 50 else 60.0), vg],
        )
        for k in range(1, 71)
    ]
    write(lake, msgs)
    eng = AlertEngine(
        lake,
        rules(
            rules=["idle_gpu", "pool_unallocated"], pool_unallocated_pct=40.0, pool_unallocated_minutes=10.0
        ),
        price_book=PriceBook(BOOK),
        tenant_rules=[{"tenant": "nlp", "namespace": "nlp"}],
    )
    events = [(m, e, name, n["endsAt"]) for m, e, name, n in run_minutes(eng, range(1, 71))]
    # pool: unallocated (1 + 0 + 0.5) / 3 = 50 % > 40 %, pending from the first evaluation (minute 1),
    # firing 10 minutes later; g1 at 1 % is idle from minute 0, fires at 30, busy from 51: resolved at 53
    assert events == [
        (11, "firing", "GpuPoolUnallocated", ZERO_TIME),
        (30, "firing", "GpuIdle", ZERO_TIME),
        (53, "resolved", "GpuIdle", at(53)),
    ]
    pool = next(a for a in eng.active() if a["labels"]["alertname"] == "GpuPoolUnallocated")
    assert pool["labels"] == {
        "alertname": "GpuPoolUnallocated",
        "severity": "info",
        "cluster": "c1",
        "model": MODEL,
    }
    assert pool["annotations"]["unallocated_gpus"] == "1.500" and pool["annotations"]["gpus"] == "3"
    # 1.5 unallocated GPUs x $3.60
    assert pool["annotations"]["description"].endswith("capacity nobody pays for: 5.40 USD per hour.")
    eng.close()


def test_ingest_lag_rule_with_a_probe(tmp_path: Path) -> None:
    readings = iter([100, 20_000, 20_000, 20_000, 20_000, 20_000, 5, 5, 5])

    def probe() -> LagReading:
        return LagReading("g", "gpu.samples.v1", {0: next(readings)})

    eng = AlertEngine(
        Lake(tmp_path), rules(rules=["ingest_lag"], ingest_lag_minutes=3.0, resolve_ticks=2), lag_probe=probe
    )
    events = [(m, e, n["endsAt"]) for m, e, _x, n in run_minutes(eng, range(0, 9))]
    # above 10000 from minute 1, for 3 minutes: firing at 4; below from 6: resolved at the 2nd, minute 7
    assert events == [(4, "firing", ZERO_TIME), (7, "resolved", at(7))]
    eng.close()


def test_a_broken_lag_probe_does_not_stop_idle_alerts(tmp_path: Path) -> None:
    lake = _one_slice_lake(tmp_path, lambda k: False, n=40)

    def probe() -> LagReading:
        raise ConnectionError("broker away")

    eng = AlertEngine(lake, rules(rules=["idle_slice", "ingest_lag"]), lag_probe=probe)
    assert [e for _m, e, _n, _x in run_minutes(eng, range(30, 31))] == ["firing"]
    eng.close()


@pytest.mark.kafka
def test_kafka_lag_reads_committed_and_end_offsets(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata, TopicPartition

    topic = make_topic("lag", partitions=2)
    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for i in range(7):
        prod.send(topic, b"x", partition=i % 2)  # 4 on partition 0, 3 on partition 1
    prod.flush()
    prod.close()
    group = f"g-{topic}"
    assert kafka_lag(kafka_bootstrap, group, topic).per_partition == {0: 4, 1: 3}  # never committed
    c = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    c.commit({TopicPartition(topic, 0): OffsetAndMetadata(3, "", -1)})
    c.close()
    lag = kafka_lag(kafka_bootstrap, group, topic)
    assert (lag.per_partition, lag.total) == ({0: 1, 1: 3}, 4)


# -- fingerprints ---------------------------------------------------------------------------------


def test_fingerprint_is_alertmanagers() -> None:
    # FNV-1a 64 offset basis for the empty set, as Alertmanager's emptyLabelSignature
    assert fingerprint({}) == "cbf29ce484222325"
    a = {"alertname": "GpuSliceIdle", "tenant": "nlp", "gpu": "GPU-1"}
    assert fingerprint(a) == fingerprint(dict(reversed(list(a.items()))))
    assert fingerprint(a) != fingerprint({**a, "tenant": "vision"})
    # name/value boundaries matter (the 0xff separator): {"ab": "c"} is not {"a": "bc"}
    assert fingerprint({"ab": "c"}) != fingerprint({"a": "bc"})
    assert len(fingerprint(a)) == 16 and int(fingerprint(a), 16) >= 0


def test_alertnames_are_the_rules() -> None:
    assert sorted(ALERTNAMES) == sorted(Config().alerts.rules)


# -- the simulated fleet against the accounting ---------------------------------------------------


def test_simulated_fleet_fires_when_accounting_periods_qualify(tmp_path: Path) -> None:
    from collector.fleet import SimulatedFleet

    start = datetime(2026, 11, 3, 6, 0, tzinfo=UTC)
    fleet = SimulatedFleet(seed=11, start=start, interval_s=60)
    lake = Lake(tmp_path)
    ticks = 150
    write(lake, [m for _ in range(ticks) for m in fleet.next_tick()])
    models = sorted(
        {g.model for g in fleet.gpus.values()}
        if isinstance(fleet.gpus, dict)
        else {g.model for g in fleet.gpus}
    )
    book = PriceBook([{"model": m, "gpu_hour": "2.50", "from": "2026-01-01"} for m in models])
    eng = AlertEngine(
        lake,
        rules(rules=["idle_slice"], resolve_ticks=1, lookback_minutes=180.0),
        tenant_rules=fleet.tenant_rules(),
        price_book=book,
    )
    notes = []
    for m in range(10, ticks + 11, 10):  # every 10 minutes, and once after the data ends
        notes += eng.evaluate(start + timedelta(minutes=m)).notifications
    eng.close()
    acct = Accounting(lake, tenant_rules=fleet.tenant_rules(), price_book=book)
    acct.update()
    periods = acct.idle_periods()
    acct.close()
    assert len(periods) >= 5, "the simulated fleet should have idle allocations"
    fired = sorted((n["labels"]["slice_id"], n["startsAt"]) for n in notes if n["event"] == "firing")
    expected = sorted(
        (p["slice_id"], (p["start"] + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")) for p in periods
    )
    assert fired == expected
    # every alert resolved (busy again, pod gone, or data ended) with the period's exact cost
    resolved = {(n["labels"]["slice_id"], n["startsAt"]): n for n in notes if n["event"] == "resolved"}
    assert sorted(resolved) == expected
    for p in periods:
        n = resolved[(p["slice_id"], (p["start"] + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ"))]
        end_idle = p["end"].strftime("%Y-%m-%dT%H:%M:%SZ")
        busy_next = (p["end"] + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert n["endsAt"] in (end_idle, busy_next), (p, n["endsAt"])
        assert Decimal(n["annotations"]["wasted_cost"]) == p["cost"], p
        assert n["labels"]["tenant"] == p["tenant"] and n["labels"]["workload"] == p["workload"]
    json.dumps(notes)  # notifications are plain JSON
