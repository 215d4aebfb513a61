"""Ingest throughput from the real broker into the lake, beside a bare kafka-python consumer.

    python bench/ingest_bench.py [--messages 30000] [--bootstrap HOST:PORT]

Produces simulated-fleet ticks into a fresh 4-partition topic, then in the same run:
  1. bare:   kafka-python consume-and-discard of every message (the ceiling),
  2. ingest: `gpuledger ingest` (KafkaIngester, decode in a worker process) into a fresh lake,
  3. ingest inline: the same with decoding in the consuming process.
Each ingest runs in its own process so its peak memory (own + worker) can be read.
Prints a table; record the numbers in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpuledger.memory import peak_rss_mb  # noqa: E402


def ensure_broker(bootstrap: str | None) -> str:
    if bootstrap:
        return bootstrap
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "kafka.sh"), "start"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().split("=", 1)[1]


def produce(bootstrap: str, topic: str, messages: int) -> tuple[int, int, int]:
    import orjson
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from collector.fleet import SimulatedFleet

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    admin.close()
    fleet = SimulatedFleet(seed=7)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20, max_request_size=4 << 20
    )
    n = slices = size = 0
    while n < messages:
        for msg in fleet.next_tick():
            raw = orjson.dumps(msg)
            producer.send(topic, key=msg["node"].encode(), value=raw)
            n += 1
            slices += len(msg["slices"])
            size += len(raw)
            if n >= messages:
                break
    producer.flush()
    producer.close()
    return n, slices, size


def bare(bootstrap: str, topic: str, n: int) -> dict:
    from kafka import KafkaConsumer

    c = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=2000,
        fetch_max_bytes=16 << 20,
        max_partition_fetch_bytes=4 << 20,
    )
    c.partitions_for_topic(topic)  # same kafka-python join workaround as the ingester
    got = 0
    t0 = None
    deadline = time.monotonic() + 600
    while got < n and time.monotonic() < deadline:
        polled = c.poll(timeout_ms=500)
        if polled and t0 is None:
            t0 = time.perf_counter()
        for recs in polled.values():
            got += len(recs)
    dt = time.perf_counter() - (t0 or time.perf_counter())
    c.close()
    use = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "messages": got,
        "seconds": dt,
        "max_rss_mb": peak_rss_mb(),
        "main_cpu_s": use.ru_utime + use.ru_stime,
        "worker_cpu_s": 0.0,
    }


def run_ingest(bootstrap: str, topic: str, n: int, workers: int) -> dict:
    """Run the ingest in a child process; it reports its time and peak memory as JSON."""
    lake = tempfile.mkdtemp(prefix="bench-lake-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULEDGER_")}
    env.update(
        {
            "GPULEDGER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "GPULEDGER_KAFKA_TOPIC": topic,
            "GPULEDGER_KAFKA_GROUP_ID": f"bench-{uuid.uuid4().hex[:6]}",
            "GPULEDGER_LAKE_PATH": lake,
            "GPULEDGER_LAKE_DECODE_WORKERS": str(max(0, workers)),
        }
    )
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(n)] + (["--bare"] if workers < 0 else []),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["lake"] = lake
    return res


def child(n: int) -> None:
    from gpuledger.config import load_config
    from pipeline.ingest import KafkaIngester

    cfg = load_config()
    cfg.lake.max_tick_age_s = 0  # the simulated fleet starts at a fixed date
    ing = KafkaIngester(cfg)
    stats = ing.run(max_messages=n, max_seconds=600)
    # Like the bare consumer: from the first record polled to the last batch committed.
    dt = (ing.finished_at or 0.0) - (ing.first_data_at or 0.0)
    own = peak_rss_mb()
    kids = sum(ing.worker_peaks_mb)
    use = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {"main_cpu_s": use.ru_utime + use.ru_stime, "worker_cpu_s": sum(ing.worker_cpu_s)}
    print(
        json.dumps(
            {
                "messages": stats.messages,
                "ticks": stats.ticks,
                "slice_rows": stats.slice_rows,
                "seconds": dt,
                "max_rss_mb": own + kids,
                "own_mb": own,
                "worker_mb": kids,
                **cpu,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--bootstrap")
    ap.add_argument("--child", type=int)
    ap.add_argument("--bare", action="store_true")
    args = ap.parse_args()
    if args.child and args.bare:
        from gpuledger.config import load_config

        cfg = load_config()
        print(json.dumps(bare(cfg.kafka.bootstrap_servers, cfg.kafka.topic, args.child)))
        return
    if args.child:
        child(args.child)
        return
    bootstrap = ensure_broker(args.bootstrap)
    topic = f"bench-ingest-{uuid.uuid4().hex[:6]}"
    t = time.perf_counter()
    n, slices, size = produce(bootstrap, topic, args.messages)
    print(
        f"produced {n} ticks ({slices} slice rows, {size / n / 1024:.1f} KiB/msg) "
        f"in {time.perf_counter() - t:.1f}s",
        file=sys.stderr,
    )
    b = run_ingest(bootstrap, topic, n, -1)  # workers < 0: the bare consumer, in its own process
    rows = [("kafka-python bare consume", b["messages"], b["seconds"], b["max_rss_mb"], b)]
    for workers, label in (
        (2, "gpuledger ingest (2 workers)"),
        (1, "gpuledger ingest (1 worker)"),
        (0, "gpuledger ingest (inline)"),
    ):
        r = run_ingest(bootstrap, topic, n, workers)
        assert r["slice_rows"] == slices and r["ticks"] == n, r
        rows.append((label, r["messages"], r["seconds"], r["max_rss_mb"], r))
    bare_rate = slices / b["seconds"]
    print(
        f"\n{'method':28s} {'msgs':>7s} {'seconds':>8s} {'msgs/s':>8s} {'slice rows/s':>13s} {'vs bare':>8s} "
        f"{'peak MB':>8s} {'CPU us/msg':>11s}"
    )
    for label, msgs, secs, rss, r in rows:
        rate = slices / secs
        cpu_us = (r["main_cpu_s"] + r["worker_cpu_s"]) / msgs * 1e6  # process totals, startup included
        print(
            f"{label:28s} {msgs:7d} {secs:8.2f} {msgs / secs:8.0f} {rate:13.0f} "
            f"{rate / bare_rate:8.2f} {rss:8.0f} {cpu_us:11.0f}"
        )


if __name__ == "__main__":
    main()
