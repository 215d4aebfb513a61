"""The fault suite: real broker on loopback, real `gpuledger collect` / `gpuledger ingest` processes,
faults injected from outside, and every row counted independently of the code under test.

    PYTHONPATH=. python bench/faults.py [--quick] [--only NAME,...] [--bootstrap HOST:PORT]

Each scenario prints one row: sent, in topic, landed, lost, duplicated-in-queries and
duplicated-on-disk (plus the malformed messages sent and found in the DLQ topic). Ground truth:

- *sent*: the simulated fleet's ticks regenerated from its seed (collector/fleet.py is
  deterministic by seed, start and interval), or the ticks this harness produced itself with a
  plain kafka-python producer;
- *in topic*: the samples topic re-read from the start with a plain kafka-python consumer;
- *landed* / *duplicated in queries*: the lake read the way every query reads it (the staging
  layer's committed files, first batch per (node, boot_id, seq)); *duplicated on disk*: every
  tick row in every file on disk, committed or not, minus the distinct ticks among them.

`lost` = sent ticks that queries do not see; the goal is 0 lost and 0 duplicated in queries in
every row (duplicates on disk are expected: a batch re-delivered after a crash is written twice
and counted once). The outage scenarios need a broker that may be stopped: the suite starts its
own (tests/broker.py, the repo's jars, own KAFKA_HOME and free ports) and never touches another.
Every wait is bounded; a scenario that runs past its deadline reports what it has.

Full disk: an unprivileged run cannot mount a small tmpfs, so the suite uses two loop-free
stand-ins: RLIMIT_FSIZE on the ingest process (every write past the limit fails with EFBIG, as a
full disk fails with ENOSPC) and a read-only lake (as root: a read-only bind mount in a mount
namespace of the faulted process's own, `unshare -m`, EROFS; otherwise folders of mode 555);
each is followed by a normal ingest run once the "disk" has room again.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the project's stoppable-broker helper

from collector.fleet import SimulatedFleet  # noqa: E402
from warehouse.lake import Lake  # noqa: E402
from warehouse.sql import read_parquet  # noqa: E402
from warehouse.staging import committed_files, first_batch_ticks_sql  # noqa: E402

TickId = tuple[str, str, int]
PAST = datetime(2026, 11, 1, tzinfo=UTC)  # fleet time of the replayed scenarios
INTERVAL_S = 10.0


@dataclass
class Row:
    scenario: str
    fault: str
    sent: int = 0
    in_topic: int = 0
    landed: int = 0
    lost: int = 0
    dup_queries: int = 0
    dup_disk: int = 0
    foreign: int = 0  # ticks in queries that were never sent (must be 0)
    kill_round_unsent: int = 0  # collector killed: ticks of the round in progress never spooled
    bad_sent: int = 0
    bad_in_dlq: int = 0
    seconds: float = 0.0
    note: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.dup_queries == 0
            and self.foreign == 0
            and self.bad_in_dlq >= self.bad_sent
        )

    HEADER = (
        "| scenario | fault | sent | in topic | landed | lost | dup in queries | dup on disk "
        "| malformed sent / in DLQ | s | ok |\n|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|"
    )

    def line(self) -> str:
        bad = f"{self.bad_sent} / {self.bad_in_dlq}" if self.bad_sent else "-"
        return (
            f"| {self.scenario} | {self.fault} | {self.sent} | {self.in_topic} | {self.landed} | {self.lost} "
            f"| {self.dup_queries} | {self.dup_disk} | {bad} | {self.seconds:.0f} | "
            f"{'yes' if self.ok else 'NO'} |"
        )


# ---------------------------------------------------------------- ground truth, counted apart


def fleet_ticks(seed: int, start: datetime, n: int) -> list[list[dict]]:
    """The simulated fleet's first `n` rounds (one message per node each), regenerated from its seed."""
    fleet = SimulatedFleet(seed=seed, start=start, interval_s=INTERVAL_S)
    return [fleet.next_tick() for _ in range(n)]


def ids_of(rounds: Iterable[list[dict]]) -> set[TickId]:
    return {(m["node"], m["boot_id"], m["seq"]) for r in rounds for m in r}


def topic_ids(bootstrap: str, topic: str, timeout_s: float = 60.0) -> tuple[set[TickId], int]:
    """Distinct tick ids among the topic's well-formed messages, and how many messages it holds."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_bytes=32 << 20
    )
    ids: set[TickId] = set()
    n = 0
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        c.assign(parts)
        c.seek_to_beginning(*parts)
        end = c.end_offsets(parts)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(c.position(tp) < end[tp] for tp in parts):
            for recs in c.poll(timeout_ms=500, max_records=5000).values():
                for r in recs:
                    n += 1
                    try:
                        m = orjson.loads(r.value)
                        ids.add((m["node"], m["boot_id"], m["seq"]))
                    except Exception:  # malformed input: counted by the DLQ column
                        pass
    finally:
        c.close()
    return ids, n


def topic_count(bootstrap: str, topic: str) -> int:
    return topic_ids(bootstrap, topic)[1]


def lake_counts(lake_dir: Path) -> tuple[list[TickId], int, int]:
    """Tick ids as queries see them (committed, first batch per tick), raw tick rows on disk and
    the distinct ticks among them."""
    lake = Lake(lake_dir)
    tick_dir = lake.table_dir("tick")
    dates = sorted(p.name.split("=", 1)[1] for p in tick_dir.glob("date=*")) if tick_dir.exists() else []
    con = duckdb.connect()
    try:
        files = committed_files(lake, "tick", dates)
        rows = (
            con.sql(
                f"SELECT node, boot_id, seq FROM ({first_batch_ticks_sql(read_parquet(files))})"
            ).fetchall()
            if files
            else []
        )
        raw_files = sorted(str(p) for p in tick_dir.glob("date=*/*.parquet")) if dates else []
        raw, raw_distinct = (
            con.sql(
                f"SELECT count(*), count(DISTINCT (node, boot_id, seq)) FROM {read_parquet(raw_files)}"
            ).fetchall()[0]
            if raw_files
            else (0, 0)
        )
    finally:
        con.close()
    return [(n, b, s) for n, b, s in rows], raw, raw_distinct


def count(row: Row, sent: set[TickId], lake: Path, bootstrap: str, topic: str) -> Row:
    rows, raw, raw_distinct = lake_counts(lake)
    got = set(rows)
    in_topic, _ = topic_ids(bootstrap, topic)
    row.sent, row.in_topic, row.landed = len(sent), len(in_topic & sent), len(got & sent)
    row.lost = len(sent - got)
    row.foreign = len(got - sent)
    row.dup_queries = len(rows) - len(got)
    row.dup_disk = raw - raw_distinct
    return row


# ---------------------------------------------------------------- the processes under test


def env_for(bootstrap: str, topic: str, lake: Path, group: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULEDGER_")}
    env.update(
        {
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
            "GPULEDGER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "GPULEDGER_KAFKA_TOPIC": topic,
            "GPULEDGER_KAFKA_DLQ_TOPIC": topic + ".dlq",
            "GPULEDGER_KAFKA_GROUP_ID": group,
            "GPULEDGER_LAKE_PATH": str(lake),
            "GPULEDGER_LAKE_BATCH_MAX_SECONDS": "1",
            "GPULEDGER_LAKE_BATCH_MAX_MESSAGES": "200",
            "GPULEDGER_LAKE_DECODE_WORKERS": "1",
            "GPULEDGER_COLLECTOR_METRICS_PORT": "0",
            "GPULEDGER_COLLECTOR_SPOOL_DIR": str(lake.parent / "spool"),
            "GPULEDGER_COLLECTOR_INTERVAL_S": str(INTERVAL_S),
            "GPULEDGER_LAKE_MAX_TICK_AGE_S": "0",  # the replayed scenarios are a past month
        }
    )
    env.update(extra)
    return env


class Proc:
    """A `gpuledger` subprocess with its log in a file."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log: Path,
        preexec: Callable | None = None,
        ro_mount: Path | None = None,
    ):
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._f = log.open("ab")
        cmd = [sys.executable, "-m", "gpuledger.cli", *args]
        if ro_mount is not None:  # a read-only bind mount in a mount namespace of the process's own
            q = shlex.quote(str(ro_mount))
            run = " ".join(shlex.quote(a) for a in cmd)
            cmd = ["unshare", "-m", "sh", "-c", f"mount --bind -o ro {q} {q} && exec {run}"]
        self.p = subprocess.Popen(
            cmd,
            env=env,
            cwd=REPO,
            stdout=self._f,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.wait(30)

    def term(self, timeout: float = 60) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return self.p.wait(timeout=30)
        finally:
            self._f.close()


def wait_for(pred: Callable[[], bool], timeout: float, step: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def produce(bootstrap: str, topic: str, rounds: Iterable[list[dict]], bad: Iterable[bytes] = ()) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_request_size=4 << 20)
    try:
        for r in rounds:
            for m in r:
                p.send(topic, key=m["node"].encode(), value=orjson.dumps(m))
        for b in bad:
            p.send(topic, key=b"bad", value=b)
        p.flush(timeout=60)
    finally:
        p.close(timeout=10)


def make_topic(bootstrap: str, prefix: str, partitions: int) -> str:
    from kafka.admin import KafkaAdminClient, NewTopic

    name = f"faults-{prefix}-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="gpuledger-faults")
    try:
        admin.create_topics(
            [
                NewTopic(name, num_partitions=partitions, replication_factor=1),
                NewTopic(name + ".dlq", num_partitions=1, replication_factor=1),
            ]
        )
    finally:
        admin.close()
    return name


def drain(bootstrap: str, topic: str, lake: Path, group: str, work: Path, idle_s: float = 6, **env) -> int:
    """A normal ingest run until the topic has been idle `idle_s` seconds; its exit status."""
    p = Proc(
        ["ingest", "--idle-exit", str(idle_s)],
        env_for(bootstrap, topic, lake, group, **env),
        work / "drain.log",
    )
    return p.wait(240) or 0


def batches_written(log: Path) -> int:
    return log.read_text(errors="replace").count("batch:") if log.exists() else 0


# ---------------------------------------------------------------- scenarios


def ingest_sigkill(bootstrap: str, work: Path, kills: int = 10, rounds: int = 60) -> Row:
    """Ingest SIGKILLed `kills` times, each time after it holds partitions and wrote a batch,
    while ticks keep arriving; then one normal run drains the rest."""
    t0 = time.monotonic()
    row = Row("ingest-sigkill", f"ingest SIGKILLed {kills}x after it held partitions")
    topic = make_topic(bootstrap, "kill", 4)
    lake, group = work / "lake", f"g-{uuid.uuid4().hex[:8]}"
    data = fleet_ticks(seed=21, start=PAST, n=rounds)
    per = max(1, rounds // (kills + 1))
    produce(bootstrap, topic, data[:per])
    done = per
    for i in range(kills):
        log = work / f"ingest-{i}.log"
        p = Proc(["ingest"], env_for(bootstrap, topic, lake, group), log)
        wait_for(lambda log=log: "partitions assigned: [" in log.read_text() and batches_written(log) > 0, 60)
        produce(bootstrap, topic, data[done : done + per])  # more arrive while it holds them
        done += per
        time.sleep(0.3 + 0.4 * (i % 3))  # killed at varied points of the next batch
        p.kill()
    produce(bootstrap, topic, data[done:])
    rc = drain(bootstrap, topic, lake, group, work)
    row.note = f"drain rc {rc}"
    row.seconds = time.monotonic() - t0
    return count(row, ids_of(data), lake, bootstrap, topic)


def two_consumers(bootstrap: str, work: Path, rounds: int = 60) -> Row:
    """Two ingest members share 4 partitions; one is SIGKILLed after both wrote; the other goes on."""
    t0 = time.monotonic()
    row = Row("two-consumers", "2 ingest members, one SIGKILLed mid-stream")
    topic = make_topic(bootstrap, "pair", 4)
    lake, group = work / "lake", f"g-{uuid.uuid4().hex[:8]}"
    data = fleet_ticks(seed=22, start=PAST, n=rounds)
    env = env_for(bootstrap, topic, lake, group, GPULEDGER_LAKE_BATCH_MAX_MESSAGES="50")
    procs = [Proc(["ingest"], env, work / f"member-{i}.log") for i in range(2)]
    try:
        wait_for(lambda: all("partitions assigned: [" in p.text() for p in procs), 60)
        half = rounds // 2
        k = 0
        while k < half and not all(batches_written(p.log) for p in procs):
            produce(bootstrap, topic, data[k : k + 3])
            k += 3
            wait_for(lambda: all(batches_written(p.log) for p in procs), 4)
        produce(bootstrap, topic, data[k:half])
        procs[0].kill()
        produce(bootstrap, topic, data[half:])
        sent = ids_of(data)
        wait_for(lambda: set(lake_counts(lake)[0]) >= sent, 90, step=2)
        row.note = "survivor alive" if procs[1].p.poll() is None else "survivor died"
    finally:
        for p in procs:
            p.term()
    row.seconds = time.monotonic() - t0
    return count(row, sent, lake, bootstrap, topic)


def _dup_key(good: dict) -> bytes:
    body = orjson.dumps(good)
    return b'{"seq":-1,' + body[1:]  # the real seq comes later: a last-wins decoder takes it


def malformed_flood(bootstrap: str, work: Path, rounds: int = 40, bad_per_round: int = 25) -> Row:
    """Good ticks interleaved with malformed ones: duplicate keys, far-future and far-past ts,
    broken JSON, wrong types; every good tick lands once, every bad one reaches the DLQ topic."""
    t0 = time.monotonic()
    row = Row("malformed-flood", "dup keys, ts 1900/2030/2199, bad JSON, wrong types")
    topic = make_topic(bootstrap, "bad", 2)
    lake, group = work / "lake", f"g-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=rounds * INTERVAL_S + 60)
    data = fleet_ticks(seed=23, start=start, n=rounds)
    bad: list[bytes] = []
    for i in range(rounds * bad_per_round):
        g = dict(data[i % rounds][0])
        g["boot_id"] = str(uuid.UUID(int=i + 1))  # ids never sent as good ticks
        kind = i % 8
        if kind == 0:
            bad.append(_dup_key(g))
        elif kind in (1, 2, 3):
            year = ("1900", "2030", "2199")[kind - 1]
            bad.append(orjson.dumps({**g, "ts": f"{year}-01-01T00:00:00Z"}))
        elif kind == 4:
            bad.append(orjson.dumps(g)[:-7])  # truncated JSON
        elif kind == 5:
            bad.append(b"\xff\xfe not json")
        elif kind == 6:
            bad.append(orjson.dumps({**g, "seq": "seven"}))
        else:
            bad.append(orjson.dumps(g).replace(b'"node":', b'"node":"x","node":', 1))
    produce(bootstrap, topic, data, bad)
    rc = drain(bootstrap, topic, lake, group, work, GPULEDGER_LAKE_MAX_TICK_AGE_S="86400")
    row.bad_sent = len(bad)
    row.bad_in_dlq = topic_count(bootstrap, topic + ".dlq")
    row.note = f"drain rc {rc}"
    row.seconds = time.monotonic() - t0
    return count(row, ids_of(data), lake, bootstrap, topic)


def _fsize_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def full_disk(bootstrap: str, work: Path, rounds: int = 40, how: str = "fsize") -> Row:
    """The lake cannot be written (`fsize`: RLIMIT_FSIZE 16 KiB on ingest, so every row file
    fails with EFBIG; `readonly`: the lake's sample folders are read-only) while ticks arrive;
    then room comes back and a normal ingest run drains."""
    t0 = time.monotonic()
    fault = (
        "RLIMIT_FSIZE 16 KiB on ingest"
        if how == "fsize"
        else "read-only lake (ro bind mount as root, else mode 555)"
    )
    row = Row(f"full-disk-{how}", fault)
    topic = make_topic(bootstrap, "disk", 2)
    lake, group = work / "lake", f"g-{uuid.uuid4().hex[:8]}"
    data = fleet_ticks(seed=24, start=PAST, n=rounds)
    produce(bootstrap, topic, data)
    preexec = None
    ro: list[Path] = []
    ro_mount = None
    if how == "fsize":
        preexec = _fsize_limit(16 * 1024)
    else:
        for d in (lake / "samples", lake / "dlq"):
            d.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # root writes through file modes: a read-only mount of the lake
            ro_mount = lake
        else:
            ro = [lake, *(d for d in lake.rglob("*") if d.is_dir())]
            for d in ro:
                d.chmod(0o555)
    log = work / "ingest-full.log"
    p = Proc(["ingest", "--idle-exit", "8"], env_for(bootstrap, topic, lake, group), log, preexec, ro_mount)
    rc = p.wait(60)
    if "batch:" in p.text():
        row.note = "the faulted run wrote a batch: the fault did not take; "
    for d in ro:
        d.chmod(0o755)
    rc2 = drain(bootstrap, topic, lake, group, work)
    row.note += f"faulted run rc {rc}, drain rc {rc2}"
    row.seconds = time.monotonic() - t0
    return count(row, ids_of(data), lake, bootstrap, topic)


TICK_S = 0.2  # the collectors of the outage scenarios tick in real time at this interval


def _collect_args(rounds: int) -> list[str]:
    """A real-time simulated agent for `rounds` ticks. Its start is its clock's now, which the
    ground truth need not know: tick ids (node, boot_id, seq) depend on seed and count only."""
    until = (rounds + 0.5) * TICK_S  # half a tick over: `until // interval` is exactly `rounds`
    return ["collect", "--backend", "simulate", "--until", f"{until:.2f}s"]


def agent_ids(seed: int, rounds: int) -> list[set[TickId]]:
    """Each round's tick ids of an agent with this seed, regenerated."""
    fleet = SimulatedFleet(seed=seed, start=PAST, interval_s=TICK_S)
    return [ids_of([fleet.next_tick()]) for _ in range(rounds)]


def broker_restart(broker, work: Path, rounds: int = 300, outage_s: float = 20.0) -> Row:
    """The broker stops and comes back (data kept) under a running collector and ingest."""
    t0 = time.monotonic()
    row = Row("broker-restart", f"broker stopped {outage_s:.0f} s under running collect + ingest")
    bs = broker.bootstrap
    topic = make_topic(bs, "outage", 2)
    lake, group = work / "lake", f"g-{uuid.uuid4().hex[:8]}"
    seed = 25
    env = env_for(
        bs, topic, lake, group, GPULEDGER_COLLECTOR_SEED=str(seed), GPULEDGER_COLLECTOR_INTERVAL_S=str(TICK_S)
    )
    ing = Proc(["ingest"], env, work / "ingest.log")
    wait_for(lambda: "partitions assigned: [" in ing.text(), 60)
    col = Proc(_collect_args(rounds), env, work / "collect.log")
    wait_for(lambda: batches_written(ing.log) >= 2, 60)
    broker.run("stop")
    time.sleep(outage_s)
    broker.env["KAFKA_KEEP_DATA"] = "1"
    broker.run("restart-keep")
    crc = col.wait(rounds * TICK_S + 120)
    sent = set().union(*agent_ids(seed, rounds))
    wait_for(lambda: set(lake_counts(lake)[0]) >= sent, 120, step=2)
    irc = ing.term()
    row.note = f"collect rc {crc}, ingest rc {irc} after SIGTERM (it ran through the outage)"
    row.seconds = time.monotonic() - t0
    return count(row, sent, lake, bs, topic)


def collector_kill_in_outage(broker, work: Path, up_s: float = 5.0, outage_s: float = 10.0) -> Row:
    """The broker stops; the collector keeps ticking into its write-ahead spool and is SIGKILLed
    in the outage; the broker comes back and a new agent (new boot ids: another seed) starts on
    the same spool and drains it. The killed agent's ticks: its fleet's rounds up to the last one
    found in the topic (so a tick lost in the kill itself, at most one per node, is not seen; any
    other loss is)."""
    t0 = time.monotonic()
    row = Row("collector-kill-in-outage", f"broker down, collector SIGKILLed {outage_s:.0f} s into it")
    bs = broker.bootstrap
    topic = make_topic(bs, "ckill", 2)
    lake, group = work / "lake", f"g-{uuid.uuid4().hex[:8]}"
    seed1, seed2, rounds2 = 26, 27, 50
    env = env_for(bs, topic, lake, group, GPULEDGER_COLLECTOR_INTERVAL_S=str(TICK_S))
    most = int((up_s + outage_s + 60) / TICK_S)
    col = Proc(_collect_args(most), {**env, "GPULEDGER_COLLECTOR_SEED": str(seed1)}, work / "collect-1.log")
    time.sleep(up_s)
    broker.run("stop")
    time.sleep(outage_s)
    col.kill()
    broker.env["KAFKA_KEEP_DATA"] = "1"
    broker.run("restart-keep")
    col2 = Proc(
        _collect_args(rounds2), {**env, "GPULEDGER_COLLECTOR_SEED": str(seed2)}, work / "collect-2.log"
    )
    crc = col2.wait(rounds2 * TICK_S + 120)
    ing = Proc(["ingest", "--idle-exit", "6"], env, work / "ingest.log")
    irc = ing.wait(240)
    got_topic, _ = topic_ids(bs, topic)
    made = agent_ids(seed1, most)
    last = max((i for i, r in enumerate(made) if r & got_topic), default=-1)
    # The round in progress at the kill was partly made: its ticks missing from the topic are
    # the kill's own (at most one per node: the bound a write-ahead spool promises), not losses.
    unsent = made[last] - got_topic if last >= 0 else set()
    row.kill_round_unsent = len(unsent)
    sent = set().union(*made[:last], made[last] - unsent if last >= 0 else set(), *agent_ids(seed2, rounds2))
    row.note = (
        f"agent 1: {last + 1} rounds reached the topic, {len(unsent)} of the {len(made[last])} ticks "
        "of the round in progress at the kill did not (at most one per node) "
        f"(killed {outage_s / TICK_S:.0f} ticks into the outage); "
        f"agent 2 rc {crc}, ingest rc {irc}"
    )
    row.seconds = time.monotonic() - t0
    return count(row, sent, lake, bs, topic)


# ---------------------------------------------------------------- the run


SHARED = {
    "ingest-sigkill": ingest_sigkill,
    "two-consumers": two_consumers,
    "malformed-flood": malformed_flood,
    "full-disk-fsize": lambda bs, w, **kw: full_disk(bs, w, how="fsize", **kw),
    "full-disk-readonly": lambda bs, w, **kw: full_disk(bs, w, how="readonly", **kw),
}
OUTAGE = {"broker-restart": broker_restart, "collector-kill-in-outage": collector_kill_in_outage}
QUICK = {
    "ingest-sigkill": {"kills": 2, "rounds": 20},
    "two-consumers": {"rounds": 30},
    "malformed-flood": {"rounds": 10, "bad_per_round": 10},
    "full-disk-fsize": {"rounds": 10},
    "full-disk-readonly": {"rounds": 10},
    "broker-restart": {"rounds": 150, "outage_s": 10.0},
    "collector-kill-in-outage": {"up_s": 4.0, "outage_s": 5.0},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (the test's subset)")
    ap.add_argument("--only", help="comma list of scenarios")
    args = ap.parse_args(argv)
    from broker import SCRIPT, Broker

    names = [n.strip() for n in args.only.split(",")] if args.only else [*SHARED, *OUTAGE]
    root = Path(tempfile.mkdtemp(prefix="gpuledger-faults-"))
    broker = Broker(root / "kafka-home")
    rows: list[Row] = []
    print(f"# fault suite, {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores, {platform.python_version()}")
    try:
        broker.run("start")
        print(Row.HEADER, flush=True)
        for name in names:
            fn = SHARED.get(name) or OUTAGE[name]
            work = root / name
            work.mkdir()
            kw = QUICK[name] if args.quick else {}
            target = broker.bootstrap if name in SHARED else broker
            row = fn(target, work, **kw)
            rows.append(row)
            print(row.line(), flush=True)
            if row.note:
                print(f"<!-- {name}: {row.note} -->", flush=True)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=broker.env, capture_output=True, timeout=90)
        shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
