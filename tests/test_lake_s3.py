"""The lake on object storage, against a real S3-compatible server (S3Proxy from Maven Central,
started by scripts/s3proxy.sh on a loopback port) and the real Kafka broker: the same exactly-once
checks as the local lake, a crash between the files and the offset commit, bad buckets and
credentials refused at start in one line, and transient store errors retried."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.fs as pafs
import pytest
import scenario
from test_ingest_kafka import START, env_for, produce_fleet

from collector.fleet import SimulatedFleet
from gpuledger.config import load_config
from pipeline.ingest import KafkaIngester
from warehouse.errors import LakeError
from warehouse.lake import Lake
from warehouse.sql import read_parquet
from warehouse.staging import committed_files, first_batch_ticks_sql, sample_dates, samples_sql

REPO = Path(__file__).resolve().parents[1]
KEY, SECRET = "gpuledger-test", "gpuledger-test-secret"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_REGION": "us-east-1",
    # S3Proxy does not take the streaming checksum trailers newer AWS SDKs send by default
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """host:port of an S3Proxy of this session, with the credentials above in the environment."""
    env = {**os.environ, "S3PROXY_PORT": str(_free_port()), "S3PROXY_IDENTITY": KEY}
    env["S3PROXY_CREDENTIAL"] = SECRET
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "s3proxy.sh"), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    endpoint = out.stdout.strip().split("=", 1)[1]
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        yield endpoint
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "s3proxy.sh"), "stop"], env=env, timeout=60)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _bucket(endpoint: str) -> str:
    name = f"lake-{uuid.uuid4().hex[:10]}"
    fs = pafs.S3FileSystem(
        access_key=KEY,
        secret_key=SECRET,
        endpoint_override=endpoint,
        scheme="http",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir(name)
    return name


def s3_path(endpoint: str, bucket: str, prefix: str = "gpuledger") -> str:
    return f"s3://{bucket}/{prefix}?endpoint_override={endpoint}&scheme=http"


@pytest.fixture
def s3_lake(s3_endpoint: str) -> str:
    return s3_path(s3_endpoint, _bucket(s3_endpoint))


def lake_ids(location: str) -> tuple[set[tuple[str, str, int]], int, int, int]:
    """Through the staging layer, as every reader does: the tick ids queries see, their rows, the
    raw tick rows in the store, and the committed slice rows."""
    lake = Lake(location)
    dates = sample_dates(lake)
    con = duckdb.connect()
    lake.register(con)
    try:
        ticks = committed_files(lake, "tick", dates)
        rows = con.sql(first_batch_ticks_sql(read_parquet(ticks))).fetchall() if ticks else []
        ids = (
            {
                (r[1], r[2], r[3])
                for r in con.sql(
                    f"SELECT cluster, node, boot_id, seq FROM ({first_batch_ticks_sql(read_parquet(ticks))})"
                ).fetchall()
            }
            if ticks
            else set()
        )
        raw = con.sql(f"SELECT count(*) FROM {read_parquet(ticks)}").fetchall()[0][0] if ticks else 0
        src = samples_sql(lake, "slice", dates)
        slices = con.sql(f"SELECT count(*) FROM {src}").fetchall()[0][0] if src else 0
        return ids, len(rows), raw, slices
    finally:
        con.close()


def _env(kafka: str, topic: str, location: str, tmp: Path, group: str, **extra: str) -> dict[str, Any]:
    env = env_for(kafka, topic, tmp / "unused", group, **extra)
    env["GPULEDGER_LAKE_PATH"] = location
    return env


@pytest.mark.kafka
def test_ingest_into_s3_exactly_once(kafka_bootstrap, make_topic, s3_lake, tmp_path):
    topic = make_topic("samples", partitions=2)
    fleet = SimulatedFleet(seed=3, start=START, interval_s=10.0)
    _, ids, slice_rows = produce_fleet(kafka_bootstrap, topic, 40, fleet=fleet)
    cfg = load_config(
        env=_env(
            kafka_bootstrap,
            topic,
            s3_lake,
            tmp_path,
            f"g-{uuid.uuid4().hex[:8]}",
            GPULEDGER_LAKE_BATCH_MAX_MESSAGES="300",
        )
    )
    stats = KafkaIngester(cfg).run(idle_exit_s=4)
    assert stats.ticks == len(ids) and stats.rejected == 0
    got, rows, raw, slices = lake_ids(s3_lake)
    assert got == ids and rows == len(ids) == raw
    assert slices == slice_rows


@pytest.mark.kafka
def test_crash_after_objects_before_commit_is_still_exactly_once(
    kafka_bootstrap, make_topic, s3_lake, tmp_path
):
    topic = make_topic("samples", partitions=2)
    _, ids, slice_rows = produce_fleet(kafka_bootstrap, topic, 30)
    group = f"g-crash-{uuid.uuid4().hex[:8]}"
    env = _env(
        kafka_bootstrap,
        topic,
        s3_lake,
        tmp_path,
        group,
        GPULEDGER_LAKE_BATCH_MAX_MESSAGES="200",
        GPULEDGER_FAULT_CRASH_BEFORE_COMMIT="1",
    )
    cmd = [sys.executable, "-m", "gpuledger.cli", "ingest", "--idle-exit", "4"]
    first = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert first.returncode == 99, first.stderr[-2000:]
    _, _, raw_after_crash, _ = lake_ids(s3_lake)
    assert raw_after_crash >= 200 and raw_after_crash % 200 == 0  # objects PUT, no offset committed
    env.pop("GPULEDGER_FAULT_CRASH_BEFORE_COMMIT")
    # the crashed member never left the group: its partitions come back after the session timeout
    cmd[-1] = "20"
    second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr[-2000:]
    got, rows, raw, slices = lake_ids(s3_lake)
    assert raw == len(ids) + raw_after_crash  # the redelivered ticks are in the store twice...
    assert got == ids and rows == len(ids)  # ...and the staging layer counts each once
    assert slices == slice_rows


def test_a_batch_without_its_tick_object_is_not_committed(s3_lake):
    """Row objects PUT, the tick object (the commit record) not: readers leave the batch out."""
    lake = Lake(s3_lake)
    scenario.write(lake, scenario.messages()[:10])
    ticks = committed_files(lake, "tick", sample_dates(lake))
    assert len(ticks) == 1
    lake.fs.delete_file(ticks[0][len("s3://") :])  # as if the process died before the last PUT
    assert lake_ids(s3_lake)[1:] == (0, 0, 0)


@pytest.mark.parametrize("what", ["bucket", "credentials"])
def test_ingest_stops_at_start_naming_the_path(s3_endpoint, tmp_path, what):
    if what == "bucket":
        location = s3_path(s3_endpoint, "no-such-bucket-gpuledger")
        extra = {}
    else:
        location = s3_path(s3_endpoint, _bucket(s3_endpoint))
        extra = {"AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    env = {**_env("127.0.0.1:1", "t", location, tmp_path, "g"), **extra}
    out = subprocess.run(
        [sys.executable, "-m", "gpuledger.cli", "ingest", "--idle-exit", "1"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"gpuledger ingest: lake {location} cannot be written: "), lines


class Flaky(pafs.FileSystemHandler):
    """pyarrow's S3 as the lake sees it, with its first `fail` PUTs failing as a dropped
    connection does (the fault at the filesystem boundary); optionally refusing instead."""

    def __init__(self, real: pafs.FileSystem, fail: int, message: str) -> None:
        self.real, self.fail, self.message, self.puts = real, fail, message, 0

    def open_output_stream(self, path, metadata):
        self.puts += 1
        if self.puts <= self.fail:
            raise OSError(self.message)
        return self.real.open_output_stream(path, metadata=metadata)

    def __getattr__(self, name):  # everything else goes to the real store
        return getattr(self.real, name)

    def get_type_name(self):
        return "flaky"

    def get_file_info(self, paths):
        return self.real.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.real.get_file_info(selector)

    def create_dir(self, path, recursive):
        return self.real.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        return self.real.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        return self.real.delete_dir_contents(path)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        return self.real.delete_file(path)

    def move(self, src, dest):
        return self.real.move(src, dest)

    def copy_file(self, src, dest):
        return self.real.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.real.open_input_stream(path)

    def open_input_file(self, path):
        return self.real.open_input_file(path)

    def open_append_stream(self, path, metadata):
        return self.real.open_append_stream(path, metadata=metadata)

    def normalize_path(self, path):
        return path

    def equals(self, other):
        return False


def test_a_transient_store_error_is_retried(s3_lake):
    lake = Lake(s3_lake, retry_s=10)
    reset = "When uploading: AWS Error NETWORK_CONNECTION during PutObject: Connection reset"
    flaky = Flaky(lake.fs, 2, reset)
    lake.fs = pafs.PyFileSystem(flaky)
    scenario.write(lake, scenario.messages()[:10])
    assert flaky.puts == 2 + 3  # two refused, then the gpu, slice and tick objects
    assert lake_ids(s3_lake)[1] == 10


def test_a_refused_put_raises_so_the_batch_is_never_committed(s3_lake):
    lake = Lake(s3_lake, retry_s=10)
    flaky = Flaky(lake.fs, 1, "AWS Error ACCESS_DENIED during PutObject operation")
    lake.fs = pafs.PyFileSystem(flaky)
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        scenario.write(lake, scenario.messages()[:10])
    assert flaky.puts == 1  # not retried, and nothing after it was written
    assert lake_ids(s3_lake)[1:] == (0, 0, 0)


def test_lake_error_for_a_bad_location() -> None:
    with pytest.raises(LakeError, match="lake s3://"):
        Lake("s3://bucket/prefix?no_such_option=1").check()


# -- the rest of the pipeline on an object-store lake ---------------------------------------------


def _rollup_rows(location: str | Path) -> dict[str, list[tuple]]:
    """Every rollup table's rows in file order, read by DuckDB as the accounting reads them."""
    from warehouse.rollups import TABLES, Rollups
    from warehouse.sql import read_parquet

    lake = Lake(location)
    rollups = Rollups(lake)
    con = duckdb.connect()
    lake.register(con)
    try:
        return {t: con.sql(f"SELECT * FROM {read_parquet(rollups.files(t))}").fetchall() for t in TABLES}
    finally:
        con.close()


def _rollup_bytes(location: str | Path) -> dict[str, bytes]:
    from warehouse.rollups import ROLLUPS, TABLES

    lake = Lake(location)
    return {
        f"{t}/{p.parent.name}": lake.read_bytes(p)
        for t in TABLES
        for p in lake.find(lake.root / ROLLUPS / t, "date=*/*.parquet")
    }


def _run_job(location: str | Path, job: str) -> Any:
    from pipeline.jobs import JobMetrics, JobRunner

    cfg = load_config(env={"GPULEDGER_LAKE_PATH": str(location)})
    return JobRunner(cfg, metrics=JobMetrics()).run(job)


def test_rollups_job_on_s3_gives_the_rows_of_a_local_lake(s3_lake, tmp_path):
    """The same ticks, on a local lake and in a bucket: the rollups job (first build, then the
    incremental build after late ticks) leaves row-for-row and byte-for-byte the same rollups."""
    local = tmp_path / "lake"
    for loc in (local, s3_lake):
        scenario.write(Lake(loc), scenario.messages())
        run = _run_job(loc, "rollups")
        assert (run.result, run.error) == ("success", ""), run.error
        assert run.detail["rebuilt"] == 2 and run.detail["dates"] == 2
    first = _rollup_rows(local)
    assert all(first.values()) and sum(len(v) for v in first.values()) == 40
    assert _rollup_rows(s3_lake) == first
    assert _rollup_bytes(s3_lake) == _rollup_bytes(local)
    for loc in (local, s3_lake):  # node-b's missing ten minutes (00:21-00:30) arrive late: one date
        scenario.write(Lake(loc), scenario.messages(late=True))
        run = _run_job(loc, "rollups")
        assert (run.result, run.detail["rebuilt"]) == ("success", 1), run.error
        assert _run_job(loc, "rollups").detail["rebuilt"] == 0  # current: nothing to do
    after = _rollup_rows(local)
    assert after != first
    assert _rollup_rows(s3_lake) == after
    assert _rollup_bytes(s3_lake) == _rollup_bytes(local)
    lake = Lake(s3_lake)  # the idle periods and the job log went to the bucket too
    assert len(lake.find(lake.root / "rollups" / "_derived", "idle-*.parquet")) == 2
    assert len(lake.find(lake.root / "jobs", "date=*/*.parquet")) == 3


def _cli_config(tmp: Path, location: str | Path) -> Path:
    from test_close_report_cli import config

    cfg = config(tmp)  # writes the scenario to tmp/lake; the bucket gets it below
    text = cfg.read_text().replace(f'path = "{tmp / "lake"}"', f'path = "{location}"')
    cfg.write_text(text)
    return cfg


def test_close_and_report_on_s3_give_the_local_ledger(s3_lake, tmp_path):
    from test_cli import gpuledger

    from warehouse.close import ledger_dir

    scenario.write(Lake(s3_lake), scenario.messages())
    out: dict[str, Any] = {}
    for name, loc in (("local", tmp_path / "l" / "lake"), ("s3", s3_lake)):
        d = tmp_path / name[0]
        d.mkdir(exist_ok=True)
        cfg = _cli_config(d, loc)
        close = gpuledger(d, "--config", str(cfg), "close", "--month", "2026-10")
        assert close.rc == 0, close.err
        again = gpuledger(d, "--config", str(cfg), "close", "--month", "2026-10")
        assert again.rc == 0 and "unchanged" in again.out.splitlines()[0], again.err
        rep = gpuledger(
            d,
            "--config",
            str(cfg),
            "report",
            "--month",
            "2026-10",
            "--format",
            "csv,html",
            "--out",
            str(d / "out"),
        )
        assert rep.rc == 0, rep.err
        lake = Lake(loc)
        out[name] = {
            "close": [ln for ln in close.out.splitlines() if not ln.startswith("ledger ")],
            "charges": lake.read_bytes(ledger_dir(lake, "2026-10") / "charges.parquet"),
            "usage": lake.read_bytes(ledger_dir(lake, "2026-10") / "usage.parquet"),
            "csv": sorted(p.read_bytes() for p in (d / "out").glob("*.csv")),
        }
    assert "total        USD 22.00" in out["s3"]["close"] and "lines        11" in out["s3"]["close"]
    assert out["s3"] == out["local"]
    assert len(out["s3"]["csv"]) == 6  # the fleet and five tenants


def test_what_cannot_run_on_s3_says_so_in_one_line(s3_lake, tmp_path):
    from test_cli import gpuledger

    scenario.write(Lake(s3_lake), scenario.messages())
    cfg = _cli_config(tmp_path, s3_lake)
    rep = gpuledger(tmp_path, "--config", str(cfg), "report", "--month", "2026-10", "--format", "csv")
    assert rep.rc == 2 and rep.err.strip().splitlines() == [
        f"gpuledger report: lake {s3_lake} is on object storage; report files are written to a local "
        f"folder: give --out DIR"
    ]
    enf = gpuledger(tmp_path, "--config", str(cfg), "enforcer", "status")
    assert enf.rc == 2 and enf.err.strip().splitlines() == [
        f"gpuledger enforcer: lake {s3_lake}: the enforcer (its features, audit and state files) needs a "
        f"local lake path, not object storage (yet)"
    ]
    run = _run_job(s3_lake, "janitor")
    assert (run.result, run.error) == (
        "error",
        f"LakeError: lake {s3_lake}: the janitor needs a local lake path, not object storage (yet)",
    )


def test_alerts_job_and_dashboard_reads_on_s3(s3_lake, tmp_path):
    """The alerts job keeps its state in the bucket; the dashboard's month list and a closed month's
    charges read from the bucket equal those of the local lake."""
    from dashboards.data import DashboardData
    from warehouse.close import CloseSettings, close_month

    scenario.write(Lake(s3_lake), scenario.messages())
    seen = {}
    for name, loc in (("local", tmp_path / "l" / "lake"), ("s3", s3_lake)):
        (tmp_path / name[0]).mkdir(exist_ok=True)
        cfg = load_config(_cli_config(tmp_path / name[0], loc))
        run = _run_job(loc, "alerts")
        assert (run.result, run.error) == ("success", ""), run.error
        settings = CloseSettings.from_config(cfg)
        close_month(loc, "2026-10", settings)
        data = DashboardData(loc, settings, connections=1)
        try:
            ch = data.month_charges("2026-10")
            seen[name] = (data.months(), ch.closed, ch.lines, len(ch.source))
        finally:
            data.close()
    lake = Lake(s3_lake)
    assert lake.exists(lake.root / "alerts" / "_state.json")
    assert seen["s3"] == seen["local"] and seen["s3"][0] == ["2026-10"] and seen["s3"][1:2] == (True,)
    assert seen["s3"][3] == 64  # the manifest sha256 the page shows
    assert sum(ln.cost for ln in seen["s3"][2]) == Decimal("22.00")
