"""The packaged GenTD26 trace loads completely, fast, and replays exactly what the files say."""

from __future__ import annotations

import csv
import gzip
import hashlib
from pathlib import Path

import pytest

from collector import traces
from collector.traces import DATA_DIR, DUTY_FILE, MEM_FILE, load_gentd26, load_gentd26_from

REPO = Path(__file__).resolve().parents[1]
SHARED_TRACE = REPO.parent / "shared" / "data" / "traces" / "alibaba-genai-2026"


@pytest.fixture(scope="module")
def trace() -> traces.Trace:
    return load_gentd26()


@pytest.fixture(scope="module")
def raw_duty() -> dict[str, dict[int, float]]:
    """Duty samples per pod straight from the CSV (csv module), keyed by grid index."""
    out: dict[str, dict[int, float]] = {}
    with gzip.open(DATA_DIR / DUTY_FILE, "rt", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    t0 = min(float(r["timestamp_anon"]) for r in rows)
    for r in rows:
        idx = round((float(r["timestamp_anon"]) - t0) / 57)
        out.setdefault(r["container_ip"], {})[idx] = float(r["value"])
    return out


def test_row_and_pod_counts(trace: traces.Trace) -> None:
    assert trace.duty_rows == 157_417
    assert trace.mem_rows == 161_413
    assert trace.duty_pods == 143
    assert trace.mem_pods == 144
    assert len(trace.pods) == 144  # union: one pod reports memory only
    assert trace.pods == sorted(set(trace.pods))


def test_busy_statistics_match_the_published_trace(trace: traces.Trace) -> None:
    assert abs(trace.busy_mean_raw - 7.03) < 0.01
    assert abs(trace.busy_zero_fraction_raw - 0.668) < 0.001


def test_grid_is_57_seconds_over_22_8_hours(trace: traces.Trace) -> None:
    assert trace.step_s == 57
    assert trace.n_steps == 1441
    assert trace.period_s == 1441 * 57
    assert (trace.n_steps - 1) * trace.step_s / 3600 == pytest.approx(22.8)


def test_lookups_return_the_raw_samples(trace: traces.Trace, raw_duty: dict[str, dict[int, float]]) -> None:
    checked = 0
    for pod in trace.pods[:20]:
        i = trace.pods.index(pod)
        for idx, value in raw_duty.get(pod, {}).items():
            assert trace.busy_pct(i, idx * 57 + 30) == value
            checked += 1
    assert checked > 10_000


def test_memory_lookup_matches_raw_sample(trace: traces.Trace) -> None:
    with gzip.open(DATA_DIR / MEM_FILE, "rt", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["timestamp_anon", "value", "container_ip"]
        first = next(reader)
    i = trace.pods.index(first[2])
    t = float(first[0]) - trace.start_anon
    assert trace.mem_bytes(i, t) == float(first[1])
    assert trace.mem_peak_bytes(i) >= float(first[1])


def test_gaps_carry_previous_and_outside_lifetime_is_zero(
    trace: traces.Trace, raw_duty: dict[str, dict[int, float]]
) -> None:
    gaps = 0
    late = 0
    for pod, samples in raw_duty.items():
        i = trace.pods.index(pod)
        first, last = min(samples), max(samples)
        for idx in range(first + 1, last):
            if idx not in samples:
                prev = max(k for k in samples if k < idx)
                assert trace.busy_pct(i, idx * 57) == samples[prev]
                gaps += 1
        if first > 0:
            assert trace.busy_pct(i, (first - 1) * 57) == 0.0
            late += 1
        if last < trace.n_steps - 1:
            assert trace.busy_pct(i, (last + 1) * 57) == 0.0
    assert gaps > 0 and late > 0
    memory_only = [p for p in trace.pods if p not in raw_duty]
    assert len(memory_only) == 1
    j = trace.pods.index(memory_only[0])
    assert all(trace.busy_pct(j, k * 57) == 0.0 for k in range(trace.n_steps))


def test_wraps_around_past_the_end(trace: traces.Trace) -> None:
    p = trace.period_s
    for i in (0, 17, 143):
        for t in (0.0, 1234.5, 80_000.0):
            assert trace.busy_pct(i, t + p) == trace.busy_pct(i, t)
            assert trace.busy_pct(i, t + 5 * p) == trace.busy_pct(i, t)
            assert trace.busy_pct(i, t - p) == trace.busy_pct(i, t)
            assert trace.mem_bytes(i, t + 3 * p) == trace.mem_bytes(i, t)


def test_busy_mean_integrates_the_series(trace: traces.Trace) -> None:
    i = trace.full_pods()[0]
    series = [trace.busy_pct(i, k * 57) for k in range(trace.n_steps)]
    assert trace.busy_mean(i, 570.0, 580.0) == pytest.approx(series[10])
    assert trace.busy_mean(i, 0.0, trace.period_s) == pytest.approx(sum(series) / len(series))
    assert trace.busy_mean(i, 100.0, 100.0 + 3 * trace.period_s) == pytest.approx(sum(series) / len(series))
    # straddling two samples: time-weighted average
    assert trace.busy_mean(i, 50.0, 64.0) == pytest.approx((7 * series[0] + 7 * series[1]) / 14)
    for t in range(0, 200_000, 7_919):
        assert 0.0 <= trace.busy_mean(i, t, t + 10.0) <= 100.0


def test_full_coverage_pods(trace: traces.Trace) -> None:
    full = trace.full_pods()
    assert 80 <= len(full) <= 143
    assert all(0.0 <= trace.coverage(i) <= 1.0 for i in range(len(trace.pods)))
    assert all(trace.coverage(i) >= 0.95 for i in full)


def test_loaded_from_the_package_and_cached() -> None:
    assert Path(traces.__file__).resolve().parent / "data" / "gentd26" == DATA_DIR
    assert (DATA_DIR / "README.md").read_text().count("CC BY 4.0") >= 1
    assert load_gentd26() is load_gentd26()


def test_cold_load_reads_the_files_again() -> None:
    tr = load_gentd26_from(DATA_DIR)
    assert tr is not load_gentd26() and tr.duty_rows == 157_417


# sha256 of the publisher's files as copied from ../shared/data/traces/alibaba-genai-2026/
PUBLISHED_SHA256 = {
    DUTY_FILE: "226e66fbf951d12e6b260915bdfed4eb95eb741c69b50649e44a18db776761ed",
    MEM_FILE: "66439bb08e016b9d7e8ab03bcc10bc0b6431045a51481652a352218684538c84",
}


@pytest.mark.parametrize("name", [DUTY_FILE, MEM_FILE])
def test_packaged_files_are_byte_identical_to_the_published_ones(name: str) -> None:
    assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == PUBLISHED_SHA256[name]
    if SHARED_TRACE.is_dir():
        assert hashlib.sha256((SHARED_TRACE / name).read_bytes()).hexdigest() == PUBLISHED_SHA256[name]
