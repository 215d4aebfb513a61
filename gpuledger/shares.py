"""DESIGN §6 share and busy fraction of one slice, in Python, exactly as the warehouse's SQL.

The warehouse computes these in SQL (warehouse/rules.py); the node agent's exporter and the
simulated fleet need them in Python, and the collector may import only this shared kernel. One
function each, tested value for value against the SQL (tests/test_rules.py), so the exporter's
`gpuledger_slice_reserved_share` is the share the bill uses. Exact fractions: a 1/3 replica is 1/3,
and a threshold comparison is never decided by binary rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

KINDS = ("whole", "mig", "vgpu", "timeslice")


def _dec(v: float | int) -> Fraction:
    """A number as sent (its shortest decimal repr), to the micro-unit as the SQL casts it."""
    return Fraction(Decimal(repr(float(v))).quantize(Decimal("1e-6")))


def share(slice_: Mapping[str, Any], gpu_mem_total_mib: int | None = None) -> Fraction | None:
    """The fraction of the physical GPU a slice's allocation takes out of the pool.

    whole 1; mig max(compute/GPU compute, memory/GPU memory slices); vgpu max(mem cap / GPU
    memory, core % / 100), capped at 1, HAMi's core 0 (or unknown) is no core reservation and an
    unknown GPU memory leaves only the core term; timeslice 1/replicas. None where the SQL is NULL
    (an input it needs is unknown). Field names are the v1 message's.
    """
    kind = slice_.get("kind")
    if kind == "whole":
        return Fraction(1)
    if kind == "mig":
        terms = [
            Fraction(slice_[n], slice_[d])
            for n, d in (("compute_slices", "gpu_compute_slices"), ("memory_slices", "gpu_memory_slices"))
            if slice_.get(n) is not None and slice_.get(d)
        ]
        return max(terms) if terms else None
    if kind == "vgpu":
        cap, core = slice_.get("mem_cap_mib"), slice_.get("core_cap_pct")
        mem = Fraction(cap, gpu_mem_total_mib) if cap is not None and gpu_mem_total_mib else Fraction(0)
        return min(Fraction(1), max(mem, _dec(core or 0) / 100))
    if kind == "timeslice":
        r = slice_.get("replicas")
        return Fraction(1, r) if r else None
    return None


def used_fraction(slice_: Mapping[str, Any]) -> Fraction | None:
    """Busy fraction of the whole GPU attributable to the slice (MIG: activity x compute fraction);
    None when its utilisation is unknown (never billed as use, never idle)."""
    util = slice_.get("util_pct")
    if util is None:
        return None
    u = _dec(util) / 100
    if slice_.get("kind") == "mig":
        u *= Fraction(slice_["compute_slices"], slice_["gpu_compute_slices"])
    return u


def is_idle_tick(used: Fraction | None, share_: Fraction | None, ratio: float) -> bool:
    """DESIGN §6 idle test of a slice tick on a GPU that is not over-committed: used < ratio x share,
    exactly (a ratio of exactly the threshold is not idle)."""
    if used is None or share_ is None:
        return False
    return used < Fraction(Decimal(repr(float(ratio)))) * share_
