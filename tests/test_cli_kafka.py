"""`gpuledger collect`, `ingest` and `demo --kafka` run as a user runs them, against the real broker.

The `collect --backend nvml` and replay-without-a-trace checks need no broker (they fail before
any Kafka client exists); they sit here beside the simulate and replay runs.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from lake_views import LakeViews as Warehouse
from test_cli import gpuledger, summary
from test_ingest_kafka import env_for, lake_ids

pytestmark = pytest.mark.kafka

SENT_RE = re.compile(r"collect: (\d+) ticks from (\d+) simulated nodes; (\d+) acknowledged by Kafka at \S+")
STOPPED_RE = re.compile(r"ingest stopped: (\d+) ticks, \d+ slice rows, (\d+) rejected")
UNREACHABLE = "127.0.0.1:1"  # a broker address nothing listens on
COLLECT_5M = ("collect", "--backend", "simulate", "--until", "5m", "--fast")


def group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def test_collect_replay_needs_its_trace(tmp_path: Path) -> None:
    r = gpuledger(tmp_path, "collect", "--backend", "replay", "--kafka", UNREACHABLE, timeout=60)
    assert r.rc == 2
    assert r.out == ""
    assert r.err == "gpuledger collect --backend replay: give the trace directory (GenTD26 layout)\n"


def test_collect_replay_of_a_trace_lands_every_tick_once(
    kafka_bootstrap: str, make_topic, tmp_path: Path
) -> None:
    from test_replay import GIB, write_trace

    # two pods, 10 steps of 57 s: at the default 10 s interval, 57 ticks of one node
    trace = write_trace(
        tmp_path / "trace",
        [(s, p, float(10 * s + (5 if p == "y" else 0))) for s in range(10) for p in ("x", "y")],
        [(s, p, GIB) for s in range(10) for p in ("x", "y")],
    )
    topic = make_topic("replay", partitions=2)
    lake = tmp_path / "lake"
    env = env_for(UNREACHABLE, topic, lake, group())
    c = gpuledger(
        tmp_path, "collect", "--backend", "replay", str(trace), "--fast", "--kafka", kafka_bootstrap, env=env
    )
    assert c.rc == 0, c.err[-2000:]
    assert c.err.strip().splitlines()[-1] == (
        f"collect: 57 ticks from 1 replay nodes (2 pods of {trace}); "
        f"57 acknowledged by Kafka at {kafka_bootstrap}"
    )
    env["GPULEDGER_KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    i = gpuledger(tmp_path, "ingest", "--idle-exit", "5", env=env)
    assert i.rc == 0, i.err[-2000:]
    ids, rows, raw = lake_ids(lake)
    # Exactly once in queries. On disk a batch may be there twice: kafka-python often rebalances
    # a fresh single-member group once right after its first join, and a batch that finished
    # after the revoke is written again without its first copy being committed (counted once).
    assert len(ids) == rows == 57 and raw in (57, 114), i.err[-6000:]
    wh = Warehouse(lake)
    try:
        got = wh.sql(
            "SELECT labels['trace-pod'], count(*), round(avg(util_pct), 4) FROM slice_sample GROUP BY ALL"
        ).fetchall()
    finally:
        wh.close()
    # busy 10 s % per 57 s step: the mean over the 570 s replayed is 45 % for x, 50 % for y
    assert sorted(got) == [("x", 57, 45.0), ("y", 57, 50.0)]


def test_collect_nvml_without_a_gpu_fails_in_one_clear_line(tmp_path: Path) -> None:
    """These machines have no NVIDIA driver: the agent says so and exits 1 (scripts/gpu-check.sh
    runs the real NVML path on a GPU machine)."""
    r = gpuledger(
        tmp_path, "collect", "--backend", "nvml", "--kafka", UNREACHABLE, "--metrics-port", "0", timeout=60
    )
    assert r.rc == 1
    assert r.out == ""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpuledger collect: NVML could not start"), r.err


def test_collect_then_ingest_lands_every_tick_once(kafka_bootstrap: str, make_topic, tmp_path: Path) -> None:
    topic = make_topic("collect", partitions=2)
    lake = tmp_path / "lake"
    # The environment names a dead broker: collect must take the real one from --kafka.
    env = env_for(UNREACHABLE, topic, lake, group())
    c = gpuledger(tmp_path, *COLLECT_5M, "--kafka", kafka_bootstrap, env=env)
    assert c.rc == 0, c.err[-2000:]
    assert c.out == ""
    m = SENT_RE.fullmatch(c.err.strip().splitlines()[-1])
    assert m, c.err[-2000:]
    sent, nodes = int(m.group(1)), int(m.group(2))
    assert int(m.group(3)) == sent  # every tick acknowledged, none left in the spool
    # 5 min at the default 10 s is 30 ticks per node, less the few a rebooting node skips
    assert nodes >= 20 and 0.9 * 30 * nodes <= sent <= 30 * nodes

    env["GPULEDGER_KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    i = gpuledger(tmp_path, "ingest", "--idle-exit", "5", env=env)
    assert i.rc == 0, i.err[-2000:]
    m = STOPPED_RE.search(i.err)
    assert m, i.err[-2000:]
    assert (int(m.group(1)), int(m.group(2))) == (sent, 0), i.err[-4000:]

    ids, rows, raw = lake_ids(lake)
    # every (node, boot_id, seq) exactly once in queries; on disk a batch redone after a
    # rebalance may be there twice (see the replay test above)
    assert len(ids) == rows == sent and sent <= raw <= 2 * sent
    assert len({node for node, _, _ in ids}) == nodes
    wh = Warehouse(lake)
    try:
        per_node = wh.sql("SELECT max(n) FROM (SELECT count(*) AS n FROM tick GROUP BY node)").fetchall()
    finally:
        wh.close()
    assert per_node == [(30,)]


def test_demo_through_kafka(kafka_bootstrap: str, make_topic, tmp_path: Path) -> None:
    topic = make_topic("demo", partitions=2)
    lake = tmp_path / "lake"
    env = env_for(kafka_bootstrap, topic, tmp_path / "env-lake", group())
    demo = ("demo", "--until", "10m", "--no-serve", "--kafka", kafka_bootstrap, "--lake", str(lake))
    r = gpuledger(tmp_path, *demo, env=env, timeout=180)
    assert r.rc == 0, r.err[-2000:]
    s = summary(r.out)
    produced, nodes = int(s["ticks produced"]), int(s["nodes"])
    # 10 min at 10 s is 60 ticks per node, less the few a rebooting node skips
    assert nodes >= 20 and 0.9 * 60 * nodes <= produced <= 60 * nodes
    assert int(s["ticks ingested"]) == produced
    assert int(s["rejected to DLQ"]) == 0
    assert int(s["GPUs"]) >= nodes and int(s["tenants"]) > 1
    assert not (tmp_path / "env-lake").exists()  # --lake wins over the environment
    ids, rows, raw = lake_ids(lake)
    assert len(ids) == rows == raw == produced


def test_demo_through_kafka_uses_its_own_topic(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Without a topic set, the demo's ticks go to gpu.samples.demo.v1, never to the production
    topic a later `ingest` would bill; the config it leaves says which topic it used."""
    import tomllib

    from gpuledger.demo import DEMO_TOPIC

    r = gpuledger(
        tmp_path,
        "demo",
        "--until",
        "2m",
        "--no-serve",
        "--kafka",
        kafka_bootstrap,
        "--lake",
        "lake",
        timeout=180,
    )
    assert r.rc == 0, r.err[-2000:]
    assert f"through {kafka_bootstrap} topic {DEMO_TOPIC}" in r.err
    s = summary(r.out)
    assert int(s["ticks ingested"]) == int(s["ticks produced"]) > 0
    written = tomllib.loads((tmp_path / "gpuledger.toml").read_text())
    assert written["kafka"] == {
        "bootstrap_servers": kafka_bootstrap,
        "topic": DEMO_TOPIC,
        "dlq_topic": "gpu.samples.demo.dlq.v1",
    }
    assert "ingest_lag" in written["alerts"]["rules"]
