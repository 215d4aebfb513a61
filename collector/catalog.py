"""The GPU and MIG catalog the simulated fleet is built from: real models, real MIG profiles.

Why its own module: these are facts about hardware (memory as NVML reports it, power and
temperature envelopes, the GPU-instance profiles `nvidia-smi mig -lgip` lists, the layouts MIG
can place, the instance ids it hands out), not about the fleet's tenants or their activity.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MigProfile:
    """A real GPU-instance profile: name as ``nvidia-smi mig -lgip`` prints it, slices, memory."""

    name: str
    compute: int
    memory: int
    mem_mib: int


@dataclass(frozen=True)
class GpuModel:
    """One GPU model: what NVML reports, its power and temperature envelope, its MIG profiles."""

    name: str
    mem_total_mib: int
    idle_w: float
    tdp_w: float
    temp_idle_c: float
    temp_max_c: float
    mig: dict[str, MigProfile] | None  # profile key -> profile; None: no MIG on this model
    gpm: bool  # GPM profiling (SM/tensor/DRAM activity; Hopper and newer); A100 has none -> null
    sm_clock_idle_mhz: int = 345  # SM clock at idle and at full boost (nvidia-smi -q -d CLOCK)
    sm_clock_max_mhz: int = 1980
    mem_clock_mhz: int = 2619
    # Memory health NVML can report: ECC (off on consumer GPUs) and how bad memory is repaired:
    # "retire" pages (before Ampere), "remap" rows (Ampere and newer), None (neither).
    ecc: bool = True
    memory_repair: str | None = "remap"


def _profiles(names: tuple[str, ...], mems: tuple[int, ...]) -> dict[str, MigProfile]:
    # Keys are size classes shared by all models so that combinations can be written once.
    keys = ("1g", "1g2m", "2g", "3g", "4g", "7g")
    shape = {"1g": (1, 1), "1g2m": (1, 2), "2g": (2, 2), "3g": (3, 4), "4g": (4, 4), "7g": (7, 8)}
    return {k: MigProfile(n, *shape[k], m) for k, n, m in zip(keys, names, mems, strict=True)}


# Instance memory as `nvidia-smi mig -lgip` lists it (GiB there, MiB here).
_A100_MIG = _profiles(
    ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
    (9728, 19968, 19968, 40192, 40192, 80896),
)
_H100_MIG = _profiles(
    ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
    (9984, 20096, 20096, 40448, 40448, 81152),
)
_H200_MIG = _profiles(
    ("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
    (16384, 33280, 33280, 66560, 66560, 143360),
)

MODELS: dict[str, GpuModel] = {
    "H200": GpuModel("NVIDIA H200", 143771, 75.0, 700.0, 31.0, 71.0, _H200_MIG, True, 345, 1980, 3201),
    "H100": GpuModel(
        "NVIDIA H100 80GB HBM3", 81559, 70.0, 700.0, 30.0, 72.0, _H100_MIG, True, 345, 1980, 2619
    ),
    "A100": GpuModel(
        "NVIDIA A100-SXM4-80GB", 81920, 55.0, 400.0, 29.0, 68.0, _A100_MIG, False, 210, 1410, 1593
    ),
    "V100": GpuModel(
        "Tesla V100-SXM2-32GB", 32768, 40.0, 300.0, 33.0, 74.0, None, False, 135, 1530, 877, True, "retire"
    ),
    "RTX4090": GpuModel(
        "NVIDIA GeForce RTX 4090", 24564, 20.0, 450.0, 36.0, 76.0, None, False, 210, 2520, 10501, False, None
    ),
}

# Valid MIG layouts (Σ compute ≤ 7, Σ memory ≤ 8, placeable): full ones and partially filled ones.
MIG_FULL: tuple[tuple[str, ...], ...] = (
    ("7g",),
    ("4g", "3g"),
    ("3g", "3g"),
    ("4g", "2g", "1g"),
    ("3g", "2g", "1g", "1g"),
    ("2g", "2g", "2g", "1g"),
    ("1g",) * 7,
    ("1g2m",) * 4,
    ("3g", "1g2m", "1g2m"),
)
MIG_PARTIAL: tuple[tuple[str, ...], ...] = (
    ("3g",),
    ("2g", "1g"),
    ("1g", "1g", "1g"),
    ("4g",),
    ("3g", "2g"),
    (),
)
# GPU-instance ids nvidia-smi typically hands out per size; the first free one is taken.
GI_IDS = {
    "7g": (0,),
    "4g": (1,),
    "3g": (1, 2),
    "2g": (3, 4, 5),
    "1g2m": (3, 4, 5, 6),
    "1g": (7, 8, 9, 10, 11, 12, 13),
}
