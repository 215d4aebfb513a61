"""The fleet history (pipeline/enforcer_history.py) against direct computations from the points."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuledger.config import EnforcerConfig
from pipeline.enforcer_history import FleetHistory, history_from_windows
from pipeline.enforcer_policy import Window

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
C = EnforcerConfig()


def direct(points: list[tuple[datetime, float]], now: datetime, c: EnforcerConfig) -> float | None:
    """The decay-only percentile written out: weight 2^(-age / half-life), 5 % buckets from 1."""
    base = 1 + c.bucket_pct / 100
    weights: dict[int, float] = {}
    for t, v in points:
        i = 0 if v <= 1 else math.floor(math.log(v) / math.log(base))
        weights[i] = weights.get(i, 0.0) + 2.0 ** (-(now - t).total_seconds() / (c.half_life_hours * 3600))
    total = sum(weights.values())
    if total <= 0:
        return None
    acc = 0.0
    for i in sorted(weights):
        acc += weights[i]
        if acc >= c.percentile / 100 * total * (1 - 1e-12):
            return base ** (i + 1)
    raise AssertionError("unreachable")


def at(k: int) -> datetime:
    """Start of the k-th 5-minute window before NOW (k = 0: NOW)."""
    return NOW - timedelta(minutes=5 * k)


def hist(wins: list[Window], c: EnforcerConfig = C) -> FleetHistory:
    return history_from_windows(c, {"s": wins}, origin=NOW)


@given(
    st.lists(
        st.tuples(st.integers(0, 2303), st.one_of(st.none(), st.integers(0, 200_000))),
        min_size=0,
        max_size=60,
    ),
    st.sampled_from([50.0, 90.0, 98.0, 100.0]),
)
def test_percentile_equals_the_direct_computation(series: list[tuple[int, int | None]], pct: float) -> None:
    c = dataclasses.replace(C, percentile=pct)
    by_k = dict(series)  # one window per start: a later one replaces an earlier one
    h = hist([Window(at(k), v, None) for k, v in series], c)
    pts = [(at(k), float(v)) for k, v in by_k.items() if v is not None]
    got = h.summaries(NOW, c).percentile[0]
    want = direct(pts, NOW, c)
    if want is None:
        assert math.isnan(got)
    else:
        assert got == pytest.approx(want, rel=1e-12)


def test_folding_the_same_windows_twice_counts_them_once() -> None:
    wins = [Window(at(k), 1000 + 37 * k, 10.0 + k % 7, ticks=30, pinned_ticks=k % 3) for k in range(300)]
    h = hist(wins)
    once = (h.w[:1].copy(), h.summaries(NOW, C))
    h.fold_windows("s", wins)
    assert np.allclose(h.w[:1], once[0], rtol=1e-12, atol=0)
    s = h.summaries(NOW, C)
    for f in ("percentile", "max24", "core_p95", "pinned", "peak", "history_hours"):
        assert np.array_equal(getattr(s, f), getattr(once[1], f)), f
    assert int(h.n_mem[0]) == 300


def test_a_late_window_replaces_the_one_folded_before() -> None:
    c = dataclasses.replace(C, percentile=100.0)
    h = hist([Window(at(2), 5000, 10.0), Window(at(1), 5000, 10.0), Window(at(0), 5000, 10.0)], c)
    assert h.summaries(NOW, c).max24[0] == 5000
    h.fold_windows("s", [Window(at(1), 20_000, 60.0, ticks=3, pinned_ticks=3, oom_suspect=True)])
    s = h.slice_summary(0, NOW, c)
    assert s.max24 == 20_000
    assert s.percentile == pytest.approx(direct([(at(2), 5000), (at(1), 20_000), (at(0), 5000)], NOW, c))
    assert s.core_p95 == 60.0
    assert int(h.n_mem[0]) == 3
    assert h.oom_windows(0, None, NOW) == [at(1)]
    # replaced by a window without a peak: the histogram forgets the old one
    h.fold_windows("s", [Window(at(1), None, 10.0)])
    assert h.slice_summary(0, NOW, c).max24 == 5000
    assert int(h.n_mem[0]) == 2
    h2 = hist([Window(at(0), None, 10.0)])
    h2.fold_windows("s", [Window(at(0), 7000, 10.0)])
    h2.fold_windows("s", [Window(at(0), None, 10.0)])
    assert h2.slice_summary(0, NOW, C).percentile is None  # nothing left, no rounding residue


def test_the_ring_wraps_and_drops_what_is_older_than_it() -> None:
    h = hist(
        [Window(at(k), 100_000 if k == 300 else 1000, 90.0 if k == 300 else 5.0) for k in range(400, -1, -1)]
    )
    assert h.ring < 400
    s = h.slice_summary(0, NOW, C)
    assert s.max24 == 1000  # the spike 25 h ago is out of the 24 h max
    assert s.core_p95 == 5.0
    assert s.peak == 100_000  # the right-sizing peak spans window_days
    assert s.history_hours == pytest.approx(400 * 5 / 60)
    before = h.w[0].copy()
    h.fold_windows("s", [Window(at(399), 50_000, 5.0)])  # older than the ring: dropped
    assert h.dropped == 1
    assert np.array_equal(h.w[0], before)
    # the columns of windows still in the ring hold exactly the last `ring` windows
    assert sorted(h.start_s(h.slot_w).tolist()) == [int(at(k).timestamp()) for k in range(h.ring - 1, -1, -1)]


def test_new_slices_get_rows_and_keep_the_others() -> None:
    h = FleetHistory(C, origin_s=int(NOW.timestamp()), rows=1)
    h.fold(["a"], [int(at(1).timestamp())], [3000.0], [10.0], [30], [0], [False])
    h.fold(
        ["b", "c", "a"],
        [int(at(0).timestamp())] * 3,
        [4000.0, 5000.0, 3500.0],
        [1, 2, 3],
        [30] * 3,
        [0] * 3,
        [False] * 3,
    )
    assert h.n == 3 and h.cap >= 3
    assert [h.row(x) for x in "abc"] == [0, 1, 2]
    s = h.summaries(NOW, dataclasses.replace(C, percentile=100.0))
    assert list(s.max24) == [3500.0, 4000.0, 5000.0]
    assert h.slice_summary(0, NOW, C).history_hours == pytest.approx(5 / 60)


def test_rebase_keeps_the_percentile() -> None:
    c = dataclasses.replace(C, half_life_hours=0.5, percentile=60.0)  # 60 half-lives in 30 h
    wins = [Window(at(k), 1000 + (k * 7919) % 9000, None) for k in range(500, -1, -1)]
    h = hist(wins, c)
    assert h.ref_s is not None and h.ref_s > at(500).timestamp()  # rebased on the way
    got = h.slice_summary(0, NOW, c).percentile
    assert got == pytest.approx(direct([(w.start, float(w.mem_peak_mib)) for w in wins], NOW, c), rel=1e-12)


def test_rare_queries_read_the_slices_ring_row() -> None:
    wins = [
        Window(at(k), 1000 * (10 - k), 50.0, ticks=10, pinned_ticks=k, oom_suspect=k in (2, 5))
        for k in range(9, -1, -1)
    ]
    h = hist(wins)
    assert h.oom_windows(0, None, NOW) == [at(5), at(2)]
    assert h.oom_windows(0, at(5), NOW) == [at(2)]
    assert h.last_peak(0, NOW, 3) == 10_000
    assert h.last_peak(0, at(3), 3) == 7_000  # windows after `now` are not seen
    assert h.pinned_fraction(0, at(3), at(1)) == pytest.approx((2 + 1) / 20)


def test_bad_input_is_named() -> None:
    h = FleetHistory(C, origin_s=int(NOW.timestamp()))
    with pytest.raises(ValueError, match="not on the 300 s grid"):
        h.fold(["a"], [int(NOW.timestamp()) + 60], [1.0], [1.0], [1], [0], [False])
    with pytest.raises(ValueError, match="ticks >= 1"):
        h.fold(["a"], [int(NOW.timestamp())], [1.0], [1.0], [0], [0], [False])
    with pytest.raises(ValueError, match="half_life_hours"):
        h.summaries(NOW, dataclasses.replace(C, half_life_hours=12.0))


def test_a_busy_percent_comes_back_as_written() -> None:
    h = hist([Window(at(k), 1000, 12.3 if k == 0 else 0.1) for k in range(3, -1, -1)])
    assert h.slice_summary(0, NOW, C).core_p95 == 12.3
