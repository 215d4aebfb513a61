"""The enforcer's history of every slice, kept incrementally in compact numpy state (DESIGN §8, issue 10).

A policy cycle over 100,000 slices cannot rebuild 8 days of 5-minute windows per slice (2,304
Python objects each) every cycle: `FleetHistory` folds each window once, as it closes, into

- `w` [slices, buckets]: the decaying histogram of memory peaks. A window starting at t adds
  2^((t - ref) / half_life) to bucket floor(log_{1+b} peak) (0 for peak <= 1); the percentile at
  any instant is independent of `ref` (a common factor), which is rebased before it grows large.
  The histogram is decay-only: a point 8 days old weighs 2^-8 of a fresh one at the default 24 h
  half-life, and is never cut (exact expiry would need every window kept);
- a ring of the last `ring` windows (24 h + rollback margin): peak, highest busy %, ticks, pinned
  ticks and the OOM flag, for the 24 h maximum, the core P95, the pinned fractions, the OOM windows
  and the last peaks. A window folded again (late data) replaces its earlier values, in the ring
  and in the histogram, so folding is idempotent; a window older than the ring is dropped;
- an hourly ring of memory maxima over `window_days` for the MIG / time-slice right-sizing peak.

This is the one implementation of the decaying percentile: the job, the offline evaluation and the
tests all read it from here. Windows lie on a grid `origin_s + k x window_s` (epoch seconds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from gpuledger.config import EnforcerConfig

_CHUNK = 8192  # rows per vectorised step: bounds the temporaries at 100,000 slices
_MAX_MIB = float(1 << 18)  # the last bucket holds everything from 256 GiB up
_REBASE_HALF_LIVES = 60.0
NO_WINDOW = 1 << 40  # window index sentinel: "none" (|k| x window_s stays inside int64)


@dataclass(frozen=True)
class Summaries:
    """Per-row summaries at `now` (NaN: no data): what `decide` reads for every slice."""

    percentile: np.ndarray  # decaying percentile of memory peaks (bucket upper bound)
    max24: np.ndarray  # highest memory peak of the windows in (now - 24 h, now]
    history_hours: np.ndarray  # now - first window with a memory peak, at most window_days
    core_p95: np.ndarray  # P95 (nearest rank) of the windows' highest busy % in the last 24 h
    pinned: np.ndarray  # pinned ticks / ticks over the last core_window_minutes
    util_start_s: np.ndarray  # start of the first window with a busy %
    peak: np.ndarray  # highest memory peak over window_days (hour granularity)
    last_oom_s: np.ndarray  # start of the latest suspected out-of-memory window in the ring (-1: none)


@dataclass(frozen=True, slots=True)
class SliceSummary:
    """One slice's summaries as Python scalars (None: no data)."""

    percentile: float | None
    max24: float | None
    history_hours: float | None
    core_p95: float | None
    pinned: float
    util_start: datetime | None
    peak: float | None
    last_oom: datetime | None = None


def _f(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _f32(x: Any) -> float | None:
    """A busy % kept as float32, back as the float64 it was written from (shortest float32 repr:
    12.3 stays 12.3 in the audit, not 12.300000190734863)."""
    x = float(x)
    return None if math.isnan(x) else float(str(np.float32(x)))


class FleetHistory:
    """Decaying histogram + recent ring + hourly maxima of every slice (row per slice id)."""

    def __init__(self, cfg: EnforcerConfig, origin_s: int = 0, rows: int = 0) -> None:
        self.window_s = round(cfg.peak_minutes * 60)
        self.half_life_s = cfg.half_life_hours * 3600.0
        self.bucket_pct = cfg.bucket_pct
        self.base = 1.0 + cfg.bucket_pct / 100.0
        self.window_days = cfg.window_days
        self.origin_s = int(origin_s) % self.window_s
        self.n_buckets = math.floor(math.log(_MAX_MIB) / math.log(self.base)) + 2
        margin = max(cfg.rollback_hours * 3600.0, 3600.0, cfg.core_window_minutes * 60.0) + 3600.0
        self.ring = math.ceil((24 * 3600.0 + margin) / self.window_s)
        self.hours = math.ceil(cfg.window_days * 24) + 1
        self.ids: dict[str, int] = {}
        self.names: list[str] = []
        self.ref_s: float | None = None
        self.head = -NO_WINDOW  # highest window index folded
        self.head_h = -NO_WINDOW
        self.slot_w = np.full(self.ring, -NO_WINDOW, dtype=np.int64)
        self.slot_h = np.full(self.hours, -NO_WINDOW, dtype=np.int64)
        self.dropped = 0  # windows older than the ring when they came
        self._cache: dict[tuple[Any, ...], Summaries] = {}
        self._memo: dict[int, SliceSummary] = {}
        self._alloc(max(rows, 1))
        self.n = 0

    # -- storage ------------------------------------------------------------------------------

    def _alloc(self, cap: int) -> None:
        old = getattr(self, "w", None)
        n = self.n if old is not None else 0
        fields = {
            "w": (np.float64, (self.n_buckets,), 0.0),
            "n_mem": (np.int32, (), 0),
            "first_mem": (np.int64, (), NO_WINDOW),
            "first_util": (np.int64, (), NO_WINDOW),
            "r_mem": (np.float32, (self.ring,), np.nan),
            "r_util": (np.float32, (self.ring,), np.nan),
            "r_ticks": (np.uint16, (self.ring,), 0),
            "r_pin": (np.uint16, (self.ring,), 0),
            "r_oom": (np.bool_, (self.ring,), False),
            "h_mem": (np.float32, (self.hours,), np.nan),
        }
        for name, (dt, shape, fill) in fields.items():
            a = np.full((cap, *shape), fill, dtype=dt)
            if old is not None:
                a[:n] = getattr(self, name)[:n]
            setattr(self, name, a)
        self.cap = cap

    def rows(self, slice_ids: Sequence[str]) -> np.ndarray:
        """Row of each slice id, adding rows for new ones."""
        out = np.empty(len(slice_ids), dtype=np.int64)
        ids = self.ids
        for i, s in enumerate(slice_ids):
            r = ids.get(s)
            if r is None:
                r = ids[s] = len(self.names)
                self.names.append(s)
            out[i] = r
        if len(self.names) > self.cap:
            self._alloc(max(len(self.names), 2 * self.cap))
        self.n = len(self.names)
        return out

    def row(self, slice_id: str) -> int | None:
        return self.ids.get(slice_id)

    def _k(self, start_s: np.ndarray) -> np.ndarray:
        off = start_s - self.origin_s
        if np.any(off % self.window_s):
            bad = int(start_s[np.nonzero(off % self.window_s)[0][0]])
            raise ValueError(
                f"enforcer history: window start {datetime.fromtimestamp(bad, UTC).isoformat()} is not on "
                f"the {self.window_s} s grid of this history (origin {self.origin_s} s)"
            )
        return off // self.window_s

    def start_s(self, k: np.ndarray | int) -> Any:
        return self.origin_s + np.asarray(k, dtype=np.int64) * self.window_s

    def bucket(self, v: np.ndarray) -> np.ndarray:
        """floor(log_{1+b} v), 0 for v <= 1, capped at the last bucket."""
        v = np.asarray(v, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            b = np.floor(np.log(np.maximum(v, 1.0)) / math.log(self.base))
        return np.clip(b, 0, self.n_buckets - 1).astype(np.int64)

    def _weight(self, start_s: int) -> float:
        if self.ref_s is None:
            self.ref_s = float(start_s)
        e = (start_s - self.ref_s) / self.half_life_s
        if e > _REBASE_HALF_LIVES:
            self.w[: self.n] *= 2.0 ** (-e)
            self.ref_s, e = float(start_s), 0.0
        return 2.0**e

    # -- folding ------------------------------------------------------------------------------

    def fold(
        self,
        slice_ids: Sequence[str],
        start_s: Sequence[int] | np.ndarray,
        mem: Sequence[float | None] | np.ndarray,
        util: Sequence[float | None] | np.ndarray,
        ticks: Sequence[int] | np.ndarray,
        pinned: Sequence[int] | np.ndarray,
        oom: Sequence[bool] | np.ndarray,
    ) -> None:
        """Fold windows (any order; epoch-second starts; None/NaN: no value) into the history.

        Processed oldest first; a window already folded is replaced; one older than the ring is
        dropped (counted in `dropped`)."""
        self.fold_rows(self.rows(list(slice_ids)), start_s, mem, util, ticks, pinned, oom)

    def fold_rows(
        self,
        rows: np.ndarray,
        start_s: Sequence[int] | np.ndarray,
        mem: Sequence[float | None] | np.ndarray,
        util: Sequence[float | None] | np.ndarray,
        ticks: Sequence[int] | np.ndarray,
        pinned: Sequence[int] | np.ndarray,
        oom: Sequence[bool] | np.ndarray,
    ) -> None:
        """`fold` by row (rows from `rows()`), for callers that keep the rows of their slices."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise ValueError(f"enforcer history: a row outside 0..{self.n - 1}: register slices with rows()")
        start = np.asarray(start_s, dtype=np.int64)
        k = self._k(start)
        memv = np.array(
            [np.nan if x is None else x for x in mem] if not isinstance(mem, np.ndarray) else mem,
            dtype=np.float64,
        )
        utilv = np.array(
            [np.nan if x is None else x for x in util] if not isinstance(util, np.ndarray) else util,
            dtype=np.float64,
        )
        tk = np.asarray(ticks, dtype=np.int64)
        if np.any(tk < 1):
            raise ValueError("enforcer history: a window must hold at least one tick (ticks >= 1)")
        pin = np.asarray(pinned, dtype=np.int64)
        oomv = np.asarray(oom, dtype=np.bool_)
        if len(k) == 0:
            return
        self._cache.clear()
        order = np.lexsort((np.arange(len(k)), k))
        ks = k[order]
        bounds = np.flatnonzero(np.diff(ks)) + 1
        for g in np.split(order, bounds):
            self._fold_one(int(k[g[0]]), rows[g], memv[g], utilv[g], tk[g], pin[g], oomv[g])

    def _advance(self, k: int) -> None:
        if k <= self.head:
            return
        lo = max(self.head + 1, k - self.ring + 1)
        for j in range(lo, k + 1):
            c = j % self.ring
            self.r_mem[: self.n, c] = np.nan
            self.r_util[: self.n, c] = np.nan
            self.r_ticks[: self.n, c] = 0
            self.r_pin[: self.n, c] = 0
            self.r_oom[: self.n, c] = False
            self.slot_w[c] = j
        self.head = k

    def _advance_h(self, h: int) -> None:
        if h <= self.head_h:
            return
        for j in range(max(self.head_h + 1, h - self.hours + 1), h + 1):
            c = j % self.hours
            self.h_mem[: self.n, c] = np.nan
            self.slot_h[c] = j
        self.head_h = h

    def _fold_one(
        self,
        k: int,
        rows: np.ndarray,
        mem: np.ndarray,
        util: np.ndarray,
        ticks: np.ndarray,
        pinned: np.ndarray,
        oom: np.ndarray,
    ) -> None:
        if len(rows) > 1 and not bool(np.all(rows[1:] > rows[:-1])):
            # the same window twice in one call: the last one counts
            _, first = np.unique(rows[::-1], return_index=True)
            keep = np.sort(len(rows) - 1 - first)
            rows, mem, util, ticks, pinned, oom = (a[keep] for a in (rows, mem, util, ticks, pinned, oom))
        self._advance(k)
        if k <= self.head - self.ring:
            self.dropped += len(rows)
            return
        c = k % self.ring
        s = int(self.start_s(k))
        wt = self._weight(s)
        had = self.r_ticks[rows, c] > 0
        old = self.r_mem[rows, c].astype(np.float64)
        sub = had & ~np.isnan(old)
        if sub.any():
            r = rows[sub]
            self.w[r, self.bucket(old[sub])] -= wt
            self.n_mem[r] -= 1
        add = ~np.isnan(mem)
        if add.any():
            r = rows[add]
            self.w[r, self.bucket(mem[add].astype(np.float32))] += wt
            self.n_mem[r] += 1
            self.first_mem[r] = np.minimum(self.first_mem[r], k)
        empty = rows[self.n_mem[rows] == 0]
        if len(empty):
            self.w[empty] = 0.0
        has_u = ~np.isnan(util)
        self.first_util[rows[has_u]] = np.minimum(self.first_util[rows[has_u]], k)
        self.r_mem[rows, c] = mem
        self.r_util[rows, c] = util
        self.r_ticks[rows, c] = np.minimum(ticks, 65535)
        self.r_pin[rows, c] = np.minimum(pinned, 65535)
        self.r_oom[rows, c] = oom
        h = s // 3600
        self._advance_h(h)
        if h > self.head_h - self.hours:
            hc = h % self.hours
            self.h_mem[rows, hc] = np.fmax(self.h_mem[rows, hc], mem.astype(np.float32))

    def fold_windows(self, slice_id: str, wins: Sequence[Any]) -> None:
        """Fold `Window`-like objects (start, mem_peak_mib, util_max, ticks, pinned_ticks, oom_suspect)."""
        if not wins:
            self.rows([slice_id])
            return
        self.fold(
            [slice_id] * len(wins),
            [int(w.start.timestamp()) for w in wins],
            [w.mem_peak_mib for w in wins],
            [w.util_max for w in wins],
            [w.ticks for w in wins],
            [w.pinned_ticks for w in wins],
            [w.oom_suspect for w in wins],
        )

    # -- summaries ----------------------------------------------------------------------------

    def check(self, cfg: EnforcerConfig) -> None:
        """The policy's configuration must be the one this history was built with."""
        if (
            round(cfg.peak_minutes * 60) != self.window_s
            or cfg.half_life_hours * 3600.0 != self.half_life_s
            or cfg.bucket_pct != self.bucket_pct
        ):
            raise ValueError(
                "enforcer history: built with peak_minutes/half_life_hours/bucket_pct "
                f"{self.window_s / 60:g}/{self.half_life_s / 3600:g}/{self.bucket_pct:g}, asked with "
                f"{cfg.peak_minutes:g}/{cfg.half_life_hours:g}/{cfg.bucket_pct:g}"
            )

    def percentiles(self, p: float, rows: np.ndarray | None = None) -> np.ndarray:
        """The decaying `p` percentile of each row's memory peaks, as its bucket's upper bound (NaN: none)."""
        rows = np.arange(self.n) if rows is None else np.asarray(rows)
        out = np.full(len(rows), np.nan)
        for a in range(0, len(rows), _CHUNK):
            r = rows[a : a + _CHUNK]
            cs = np.cumsum(self.w[r], axis=1)
            total = cs[:, -1]
            need = (p / 100.0) * total * (1 - 1e-12)
            idx = np.argmax(cs >= need[:, None], axis=1)
            ok = (total > 0) & (self.n_mem[r] > 0)
            out[a : a + _CHUNK] = np.where(ok, self.base ** (idx + 1.0), np.nan)
        return out

    def summaries(self, now: datetime, cfg: EnforcerConfig) -> Summaries:
        """Every row's summaries at `now` (cached until the next fold)."""
        self.check(cfg)
        key = (now, cfg.percentile, cfg.core_window_minutes, cfg.window_days)
        hit = self._cache.get(key)
        if hit is not None and len(hit.percentile) == self.n:
            return hit
        now_s = now.timestamp()
        starts = self.start_s(self.slot_w).astype(np.float64)
        valid = self.slot_w > -NO_WINDOW
        in24 = np.flatnonzero(valid & (starts > now_s - 86400.0) & (starts <= now_s))
        inpin = np.flatnonzero(valid & (starts > now_s - cfg.core_window_minutes * 60.0) & (starts <= now_s))
        hs = self.slot_h.astype(np.float64) * 3600.0
        inh = np.flatnonzero(
            (self.slot_h > -NO_WINDOW) & (hs <= now_s) & (hs + 3600.0 > now_s - cfg.window_days * 86400.0)
        )
        n = self.n
        max24 = np.full(n, np.nan)
        p95 = np.full(n, np.nan)
        pinned = np.zeros(n)
        peak = np.full(n, np.nan)
        last_oom = np.full(n, -1, dtype=np.int64)
        upto = np.flatnonzero(valid & (starts <= now_s))
        for a in range(0, n, _CHUNK):
            b = min(n, a + _CHUNK)
            if len(in24):
                m = self.r_mem[a:b][:, in24]
                max24[a:b] = np.fmax.reduce(m, axis=1)
                u = np.sort(self.r_util[a:b][:, in24], axis=1)
                cnt = (~np.isnan(u)).sum(axis=1)
                idx = np.maximum(0, np.ceil(0.95 * cnt).astype(np.int64) - 1)
                v = np.take_along_axis(u, idx[:, None], axis=1)[:, 0].astype(np.float64)
                p95[a:b] = np.where(cnt > 0, v, np.nan)
            if len(inpin):
                t = self.r_ticks[a:b][:, inpin].sum(axis=1, dtype=np.int64)
                pn = self.r_pin[a:b][:, inpin].sum(axis=1, dtype=np.int64)
                pinned[a:b] = np.where(t > 0, pn / np.maximum(t, 1), 0.0)
            if len(inh):
                peak[a:b] = np.fmax.reduce(self.h_mem[a:b][:, inh], axis=1)
            if len(upto):
                hit = self.r_oom[a:b][:, upto] & (self.r_ticks[a:b][:, upto] > 0)
                st = self.start_s(self.slot_w[upto])
                last_oom[a:b] = np.where(hit, st[None, :], -1).max(axis=1)
        first = self.first_mem[:n]
        hist = np.where(
            first < NO_WINDOW,
            np.minimum((now_s - self.start_s(first)) / 3600.0, cfg.window_days * 24.0),
            np.nan,
        )
        fu = self.first_util[:n]
        out = Summaries(
            percentile=self.percentiles(cfg.percentile),
            max24=max24,
            history_hours=hist,
            core_p95=p95,
            pinned=pinned,
            util_start_s=np.where(fu < NO_WINDOW, self.start_s(fu), -1).astype(np.int64),
            peak=peak,
            last_oom_s=last_oom,
        )
        self._cache = {key: out}
        self._memo: dict[int, SliceSummary] = {}
        return out

    def slice_summary(self, row: int, now: datetime, cfg: EnforcerConfig) -> SliceSummary:
        s = self.summaries(now, cfg)
        hit = self._memo.get(row)
        if hit is not None:
            return hit
        us, lo = int(s.util_start_s[row]), int(s.last_oom_s[row])
        hit = self._memo[row] = SliceSummary(
            percentile=_f(s.percentile[row]),
            max24=_f(s.max24[row]),
            history_hours=_f(s.history_hours[row]),
            core_p95=_f32(s.core_p95[row]),
            pinned=float(s.pinned[row]),
            util_start=datetime.fromtimestamp(us, UTC) if us >= 0 else None,
            peak=_f(s.peak[row]),
            last_oom=datetime.fromtimestamp(lo, UTC) if lo >= 0 else None,
        )
        return hit

    # -- rare per-slice queries (the slice's ring row) ----------------------------------------

    def _occupied(self, row: int, now: datetime) -> tuple[np.ndarray, np.ndarray]:
        cols = np.flatnonzero((self.r_ticks[row] > 0) & (self.start_s(self.slot_w) <= now.timestamp()))
        return cols, self.start_s(self.slot_w[cols])

    def oom_windows(self, row: int, after: datetime | None, now: datetime) -> list[datetime]:
        """Starts of the suspected out-of-memory windows in (after, now] still in the ring."""
        cols, st = self._occupied(row, now)
        sel = self.r_oom[row, cols]
        if after is not None:
            sel &= st > after.timestamp()
        return [datetime.fromtimestamp(int(x), UTC) for x in np.sort(st[sel])]

    def last_peak(self, row: int, now: datetime, n: int = 3) -> float:
        """Highest memory peak of the slice's last `n` windows (no peak counts 0)."""
        cols, st = self._occupied(row, now)
        if not len(cols):
            return 0.0
        last = cols[np.argsort(st)[-n:]]
        return float(np.max(np.nan_to_num(self.r_mem[row, last], nan=0.0)))

    def pinned_fraction(self, row: int, since: datetime, until: datetime) -> float:
        """Pinned ticks / ticks of the slice's windows starting in (since, until]."""
        st = self.start_s(self.slot_w)
        cols = np.flatnonzero((self.r_ticks[row] > 0) & (st > since.timestamp()) & (st <= until.timestamp()))
        t = int(self.r_ticks[row, cols].sum(dtype=np.int64))
        return int(self.r_pin[row, cols].sum(dtype=np.int64)) / t if t else 0.0

    def nbytes(self) -> int:
        return sum(
            getattr(self, a).nbytes
            for a in (
                "w",
                "n_mem",
                "first_mem",
                "first_util",
                "r_mem",
                "r_util",
                "r_ticks",
                "r_pin",
                "r_oom",
                "h_mem",
            )
        )


def history_from_windows(
    cfg: EnforcerConfig, by_slice: dict[str, Sequence[Any]], origin: datetime | None = None
) -> FleetHistory:
    """A history of `Window`-like objects per slice id (the tests' and small tools' builder); the
    grid origin is `origin`, else the first window's start."""
    first = origin
    if first is None:
        first = next((ws[0].start for ws in by_slice.values() if ws), datetime(1970, 1, 1, tzinfo=UTC))
    h = FleetHistory(cfg, origin_s=int(first.timestamp()), rows=len(by_slice))
    ids, st, m, u, t, p, o = [], [], [], [], [], [], []
    for sid, ws in by_slice.items():
        h.rows([sid])
        for w in ws:
            ids.append(sid)
            st.append(int(w.start.timestamp()))
            m.append(w.mem_peak_mib)
            u.append(w.util_max)
            t.append(w.ticks)
            p.append(w.pinned_ticks)
            o.append(w.oom_suspect)
    h.fold(ids, st, m, u, t, p, o)
    return h


__all__ = ["FleetHistory", "SliceSummary", "Summaries", "history_from_windows", "timedelta"]
