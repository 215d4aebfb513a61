"""A deterministic simulated heterogeneous GPU fleet that emits ``gpuledger.sample/v1`` ticks.

Why it exists: the demo, the pipeline and the warehouse need a realistic multi-tenant fleet to
run on a machine without GPUs, and tests need one whose output is reproducible byte for byte.
The fleet mixes what real platform teams run (DESIGN §1): several clusters; H200, H100, A100,
V100 and RTX 4090 GPUs; MIG with real profiles, HAMi vGPU (over- and under-committed, core 0),
time-slicing, whole GPUs and unallocated GPUs; tenants told apart by namespace, pod label,
Slurm account and unix user, plus workloads that match no rule.

Busy % and memory of many slices replay the real GenTD26 trace (``collector.traces``), each
slice following one trace pod at its own time offset; the others follow synthetic patterns that
a chargeback system must handle: allocations idle for hours while holding memory, bursting above
the reserved share, diurnal services, training with checkpoint dips, Slurm batch jobs.

Determinism: everything derives from ``seed`` through private ``random.Random`` instances
(string seeds, which Python hashes with SHA-512, not with the per-process ``hash()``); there is
no wall clock and no global random state. Two fleets with the same seed, start, interval and
scale emit identical messages.

Lifecycle events, so the pipeline sees what production brings:

- churn: Slurm jobs, notebook pods, workstation sessions and ETL pods end and are replaced; a
  new lifetime always gets a new ``slice_id`` (new pod UID or job id), never a reused one;
- reboots: each node reboots rarely (first one at least 12 h after start, then about every two
  weeks). While it is down (2-15 min) it emits nothing, so ``sample()`` returns one tick
  per node that is up; it comes back with a new ``boot_id``, ``seq`` 0, new PIDs and new pods.

The parts: GPU models and MIG profiles in `collector.catalog`, the activity patterns in
`collector.activity`, the typed tick in `collector.tick`; this module is the fleet (layout,
tenants, identities, lifetimes, reboots, caps).

Units and semantics follow DESIGN §4/§6 and the JSON Schema: slice ``util_pct`` is % of the whole
GPU for whole/vgpu/timeslice slices and the instance's own activity for MIG slices (``null`` on
A100, which has no GPM); MIG GPUs report GPU ``util_pct`` and per-process ``sm_util_pct`` as
``null``. Per-process memory and SM util add up exactly to the slice's values; GPU util is the sum
of its slices' util (time-shared GPUs cannot exceed 100 %, so demand above that is scaled down);
GPU memory is the sum of its slices' memory; ``energy_j`` = ``power_w`` × ``interval_s``.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from msgspec.structs import replace

from collector.activity import (
    DAY,
    HOUR,
    BatchPattern,
    BurstPattern,
    DiurnalPattern,
    IdlePattern,
    NotebookPattern,
    TracePattern,
    TrainingPattern,
)
from collector.catalog import GI_IDS, MIG_FULL, MIG_PARTIAL, MODELS, GpuModel, MigProfile
from collector.tick import Gpu, Process, Slice, TickSource, Workload, build_tick, check_interval, format_ts
from collector.traces import load_gentd26
from gpuledger.shares import share

DEFAULT_START = datetime(2026, 11, 1, tzinfo=UTC)

# Memory health of the simulated GPUs, all healthy, by (ECC on, memory repair scheme): what NVML
# reports where it can (collector.readings.Health); the other scheme's fields are absent (null).
_NO_RETIRED = {"retired_pages_sbe": 0, "retired_pages_dbe": 0, "retired_pages_pending": False}
_NO_REMAPPED = {
    "remapped_rows_correctable": 0,
    "remapped_rows_uncorrectable": 0,
    "row_remap_pending": False,
    "row_remap_failed": False,
}
_ECC_CLEAN = {"ecc_corrected": 0, "ecc_uncorrected": 0}
_HEALTH: dict[tuple[bool, str | None], dict[str, Any]] = {
    (True, "remap"): {**_ECC_CLEAN, **_NO_REMAPPED},
    (True, "retire"): {**_ECC_CLEAN, **_NO_RETIRED},
    (False, None): {},
}


@dataclass(frozen=True)
class GpuSpec:
    """Static identity of one simulated GPU (what NVML would report at agent start)."""

    uuid: str
    index: int
    model: str
    mem_total_mib: int
    mig_mode: bool
    node: str
    cluster: str


# Kubernetes workload groups: namespace, extra labels, app names, pattern mix, churn.
# Tenant resolution (tenant_rules) maps some of them; data-eng, sandbox and default match no
# rule and show up as "unassigned" at query time.
_K8S_GROUPS: dict[str, dict[str, Any]] = {
    "vision": {
        "ns": "ml-vision",
        "labels": {"team": "vision"},
        "apps": ("resnet-train", "detector-serve", "seg-finetune", "clip-embed"),
        "patterns": ("training", "training", "trace", "diurnal"),
        "life": None,
    },
    "genai": {
        "ns": "genai-serving",
        "labels": {},
        "apps": ("sdxl-serve", "flux-serve", "sd3-serve", "llm-gateway"),
        "patterns": ("trace",),
        "life": None,
    },
    "nlp": {
        "ns": "ml-shared",
        "labels": {"team": "nlp"},
        "apps": ("bert-finetune", "llama-serve", "mt-train"),
        "patterns": ("trace", "diurnal", "training", "burst"),
        "life": None,
    },
    "recsys": {
        "ns": "ml-shared",
        "labels": {"team": "recsys"},
        "apps": ("dlrm-train", "ranker-serve"),
        "patterns": ("diurnal", "training", "trace"),
        "life": None,
    },
    "data-eng": {
        "ns": "ml-shared",
        "labels": {"team": "data-eng"},
        "apps": ("feature-etl", "embed-backfill"),
        "patterns": ("burst", "idle", "diurnal"),
        "life": ((1.0, 6.0), (0.0, 1.0)),
    },
    "sandbox": {
        "ns": "sandbox",
        "labels": {},
        "apps": ("jupyter-ivan", "jupyter-judy", "jupyter-ken", "jupyter-lena", "jupyter-omar"),
        "patterns": ("notebook", "notebook", "idle"),
        "life": ((2.0, 12.0), (0.0, 2.0)),
    },
    "lab": {
        "ns": "lab-research",
        "labels": {"team": "lab"},
        "apps": ("protein-fold", "rl-sweep", "diffusion-ablation"),
        "patterns": ("training", "trace", "notebook", "idle", "diurnal"),
        "life": None,
    },
    "default": {
        "ns": "default",
        "labels": {},
        "apps": ("cuda-smoke-test",),
        "patterns": ("idle",),
        "life": None,
    },
}
_SLURM_ACCOUNTS = (
    ("physics", ("bob", "alice", "erin")),
    ("physics", ("bob", "erin")),
    ("chemistry", ("frank", "grace")),
    ("guest", ("trudy", "victor")),
)
_HOST_USERS = ("alice", "alice", "carol", "carol", "dave", "mallory")
_K8S_ALNUM = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet Kubernetes uses for name suffixes

_TENANT_RULES: tuple[dict[str, str], ...] = (
    {"tenant": "vision", "namespace": "ml-vision"},
    {"tenant": "genai", "namespace": "genai-serving"},
    {"tenant": "nlp", "label": "team=nlp"},
    {"tenant": "recsys", "label": "team=recsys"},
    {"tenant": "research", "namespace": "lab-research"},
    {"tenant": "hpc-physics", "account": "physics"},
    {"tenant": "hpc-chem", "account": "chemistry"},
    {"tenant": "research", "user": "alice"},
    {"tenant": "research", "user": "carol"},
)


def match_tenant(rules: list[dict[str, str]], workload: dict[str, Any] | None) -> str | None:
    """First rule that matches ``workload`` wins (DESIGN §5); None means unassigned."""
    if not workload:
        return None
    labels = workload.get("labels") or {}
    for rule in rules:
        if "namespace" in rule:
            ok = workload.get("namespace") == rule["namespace"]
        elif "label" in rule:
            key, _, value = rule["label"].partition("=")
            ok = labels.get(key) == value
        elif "account" in rule:
            ok = workload.get("account") == rule["account"]
        else:
            ok = workload.get("user") == rule["user"]
        if ok:
            return rule["tenant"]
    return None


# ---------------------------------------------------------------------------------------------
# Fleet structure.


class _Slot:
    """One place a slice can live (a whole GPU, a MIG instance, a HAMi/time-slice share).

    Its static shape (kind, caps, MIG instance) is fixed; its identity (pod/job, processes,
    slice_id) and pattern are regenerated at each new lifetime ("generation").
    """

    __slots__ = (
        "active",
        "app",
        "base_core",
        "compute_frac",
        "container",
        "core_cap",
        "end_t",
        "family",
        "gen",
        "gpu",
        "group",
        "key",
        "kind",
        "labels",
        "last_kernel_t",
        "last_mm",
        "life",
        "mem_cap",
        "mem_limit",
        "mig",
        "nominal_mem",
        "nominal_util",
        "null_util",
        "oom_down",
        "oom_n",
        "pattern",
        "patterns",
        "pids",
        "proc_head",
        "proc_last",
        "proc_null",
        "replicas",
        "restart_t",
        "slice_tpl",
        "slice_typed",
        "start_t",
        "wl_tpl",
    )

    def __init__(self) -> None:
        self.active = False
        self.gen = 0
        self.pids: list[int] = []
        self.labels: dict[str, str] | None = None
        self.life: tuple[tuple[float, float], tuple[float, float]] | None = None
        self.mig: tuple[MigProfile, int, int, str] | None = None
        self.core_cap: int | None = None
        self.replicas: int | None = None
        self.compute_frac = 1.0
        self.null_util = False
        self.proc_null = False
        self.end_t = math.inf
        self.restart_t = math.inf
        self.start_t = 0.0
        self.last_kernel_t = 0.0
        self.base_core: int | None = None
        self.last_mm = 0  # use reported at the last tick (what a node agent would read at apply time)
        self.oom_down = 0  # ticks left with the container down after an out-of-memory
        self.oom_n = 0  # restarts after an out-of-memory in this lifetime


class _Gpu:
    __slots__ = ("has_churn", "mig", "model", "prof_mix", "slots", "spec", "temp")

    def __init__(self, spec: GpuSpec, model: GpuModel) -> None:
        self.spec = spec
        self.model = model
        self.mig = spec.mig_mode
        self.slots: list[_Slot] = []
        self.has_churn = False
        self.temp = model.temp_idle_c
        self.prof_mix = ProfMix.of(spec.uuid) if model.gpm else None


@dataclass(frozen=True)
class ProfMix:
    """How a GPU's kernel-busy time turns into GPM profiling activity, fixed per GPU.

    Why fixed and hashed from the UUID rather than drawn: the fleet's random streams decide every
    billed number, and profiling must not shift them. As on real hardware, SMs are active for
    only part of the time a kernel runs (small grids, launch gaps, memory stalls), occupancy is a
    fraction of that, the tensor pipes a fraction of SM activity, DRAM traffic its own share.
    """

    sm: float  # SM active / kernel busy
    occupancy: float  # occupancy / SM active
    tensor: float  # tensor active / SM active
    dram: float  # DRAM active / kernel busy

    @classmethod
    def of(cls, key: str) -> ProfMix:
        h = uuid.uuid5(uuid.NAMESPACE_OID, "gpuledger-prof:" + key).int
        u = [((h >> (32 * i)) & 0xFFFFFFFF) / 2**32 for i in range(4)]
        return cls(0.45 + 0.4 * u[0], 0.35 + 0.3 * u[1], 0.25 + 0.5 * u[2], 0.2 + 0.45 * u[3])

    def fields(self, busy_pct: float) -> dict[str, float]:
        """The schema's four profiling fields for a kernel-busy % (GPU or MIG instance)."""
        sm = busy_pct * self.sm
        return {
            "sm_active_pct": round(sm, 2),
            "sm_occupancy_pct": round(sm * self.occupancy, 2),
            "tensor_active_pct": round(sm * self.tensor, 2),
            "dram_active_pct": round(busy_pct * self.dram, 2),
        }


_NO_PROF: dict[str, float] = {}
_CLOCK_IDLE = 0x1  # nvmlClocksEventReasonGpuIdle
_CLOCK_POWER_CAP = 0x4  # nvmlClocksEventReasonSwPowerCap


class _Node:
    __slots__ = (
        "boot_id",
        "boots",
        "cluster",
        "down_until",
        "downtime",
        "gpus",
        "name",
        "pids",
        "reboot_at",
        "reboot_rng",
        "role",
        "seq",
    )

    def __init__(self, name: str, cluster: str, role: str) -> None:
        self.name, self.cluster, self.role = name, cluster, role
        self.gpus: list[_Gpu] = []
        self.pids: set[int] = set()
        self.boots = 0
        self.seq = 0
        self.boot_id = ""
        self.down_until: float | None = None
        self.reboot_at = math.inf
        self.downtime = 0.0
        self.reboot_rng: random.Random | None = None


# (cluster, node name prefix, model, GPUs per node, nodes at scale 1, role)
_LAYOUT: tuple[tuple[str, str, str, int, int, str], ...] = (
    ("prod-east", "pe-h200-mig", "H200", 8, 1, "k8s-mig"),
    ("prod-east", "pe-h200", "H200", 8, 1, "k8s-whole"),
    ("prod-east", "pe-h200-hami", "H200", 8, 1, "k8s-hami"),
    ("prod-east", "pe-h100-mig", "H100", 8, 1, "k8s-mig"),
    ("prod-east", "pe-h100", "H100", 8, 2, "k8s-whole"),
    ("prod-east", "pe-h100-hami", "H100", 8, 1, "k8s-hami"),
    ("prod-east", "pe-a100-mig", "A100", 8, 1, "k8s-mig"),
    ("prod-east", "pe-a100-hami", "A100", 8, 1, "k8s-hami"),
    ("prod-east", "pe-a100", "A100", 8, 1, "k8s-whole"),
    ("prod-east", "pe-4090", "RTX4090", 4, 3, "k8s-share"),
    ("lab-west", "lw-v100", "V100", 4, 4, "slurm"),
    ("lab-west", "lw-a100", "A100", 8, 1, "slurm"),
    ("lab-west", "lw-a100-mig", "A100", 8, 1, "slurm-mig"),
    ("lab-west", "lw-h100", "H100", 8, 2, "k8s-lab"),
    ("lab-west", "lw-ws", "RTX4090", 2, 4, "baremetal"),
)


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _k8s_suffix(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_K8S_ALNUM) for _ in range(n))


_OOM_DOWN_TICKS = 1  # ticks a container stays down after an out-of-memory before it restarts


@dataclass(frozen=True)
class CapResult:
    """What a simulated slice did with a cap (SimulatedFleet.apply_cap); the fields of an ack."""

    status: str  # applied | applies-at-restart | refused
    reason: str | None = None
    used_mib: int | None = None
    cap_before: int | None = None
    cap_after: int | None = None


class SimulatedFleet(TickSource):
    """Deterministic simulated heterogeneous GPU fleet (see module docstring for what it holds).

    ``sample()`` (``next_tick()`` as dicts) advances the clock by ``interval_s`` and returns one v1
    tick per node
    that is up; the k-th call (k from 1) has ``ts = start + k * interval_s``.
    """

    def __init__(
        self, seed: int = 7, start: datetime | None = None, interval_s: float = 10.0, scale: int = 1
    ) -> None:
        if start is None:
            start = DEFAULT_START
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError(f"start={start!r}: expected a timezone-aware datetime (UTC)")
        check_interval(interval_s)
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale={scale!r}: expected an integer >= 1")
        self.seed = seed
        self.start = start.astimezone(UTC)
        self.interval_s = float(interval_s)
        self.scale = scale
        self._interval_us = round(self.interval_s * 1_000_000)
        self._k = 0
        self._tod0 = (
            self.start - self.start.replace(hour=0, minute=0, second=0, microsecond=0)
        ).total_seconds()
        self._trace = load_gentd26()
        self._trace_pods = self._trace.full_pods()
        self._noise = random.Random(f"gpuledger-fleet:{seed}:noise")
        self._rng = random.Random(f"gpuledger-fleet:{seed}:structure")
        self._job_ids: dict[str, int] = {}
        self._nodes: list[_Node] = []
        self._by_slice: dict[str, tuple[_Slot, _Node]] = {}
        self.oom_events: list[dict[str, Any]] = []  # out-of-memory failures, in order (apply_cap)
        self._build()
        self.nodes: list[str] = [n.name for n in self._nodes]
        self.clusters: list[str] = list(dict.fromkeys(n.cluster for n in self._nodes))
        self.gpus: list[GpuSpec] = [g.spec for n in self._nodes for g in n.gpus]

    # -- construction ------------------------------------------------------------------------

    def _build(self) -> None:
        rng = self._rng
        for cluster in dict.fromkeys(c for c, *_ in _LAYOUT):
            self._job_ids[cluster] = 4_800_000 + rng.randrange(100_000)
        for cluster, prefix, model_key, n_gpus, count, role in _LAYOUT:
            model = MODELS[model_key]
            total = count * self.scale
            width = max(2, len(str(total)))
            for ordinal in range(total):
                node = _Node(f"{prefix}-{ordinal + 1:0{width}d}", cluster, role)
                mig_mode = role in ("k8s-mig", "slurm-mig")
                for i in range(n_gpus):
                    spec = GpuSpec(
                        uuid="GPU-" + _uuid4(rng),
                        index=i,
                        model=model.name,
                        mem_total_mib=model.mem_total_mib,
                        mig_mode=mig_mode,
                        node=node.name,
                        cluster=cluster,
                    )
                    gpu = _Gpu(spec, model)
                    gpu.temp = model.temp_idle_c + rng.uniform(-1.5, 1.5)
                    node.gpus.append(gpu)
                getattr(self, "_role_" + role.replace("-", "_"))(node, ordinal)
                for gpu in node.gpus:
                    gpu.has_churn = any(s.life is not None for s in gpu.slots)
                self._nodes.append(node)
        for node in self._nodes:
            node.reboot_rng = random.Random(f"gpuledger-fleet:{self.seed}:{node.name}:reboot")
            node.boot_id = self._boot_id(node)
            node.reboot_at = 12 * HOUR + node.reboot_rng.expovariate(1.0 / (14 * DAY))
            for gpu in node.gpus:
                for slot in gpu.slots:
                    self._initial(slot, node)

    def _slot(
        self,
        node: _Node,
        gpu: _Gpu,
        kind: str,
        family: str,
        group: str | None = None,
        patterns: tuple[str, ...] | None = None,
        life: Any = "group",
    ) -> _Slot:
        """Create a slot with its static shape; identity comes later (_materialize)."""
        rng = self._rng
        s = _Slot()
        s.key = f"{node.name}/{gpu.spec.index}/{len(gpu.slots)}"
        s.gpu, s.kind, s.family, s.group = gpu, kind, family, group
        if family == "k8s":
            g = _K8S_GROUPS[group or "default"]
            s.app = rng.choice(g["apps"])
            s.container = (
                "server"
                if "serve" in s.app or "gateway" in s.app
                else "trainer"
                if "train" in s.app or "tune" in s.app
                else "notebook"
                if s.app.startswith("jupyter")
                else "main"
            )
            s.patterns = patterns or g["patterns"]
            s.life = g["life"] if life == "group" else life
        elif family == "slurm":
            s.app, s.container = "", ""
            s.patterns = patterns or ("batch", "batch", "batch", "batch", "idle")
            s.life = ((1.0, 10.0), (0.0, 0.75)) if life == "group" else life
        else:  # host
            s.app, s.container = "", ""
            s.patterns = patterns or ("diurnal", "notebook", "idle", "batch")
            s.life = ((1.0, 8.0), (0.0, 3.0)) if life == "group" else life
        total = gpu.model.mem_total_mib
        s.mem_cap, s.mem_limit, s.nominal_mem, s.nominal_util = total, total, float(total), 100.0
        gpu.slots.append(s)
        return s

    def _vgpu(
        self,
        node: _Node,
        gpu: _Gpu,
        group: str,
        mem_frac: float,
        core: int,
        patterns: tuple[str, ...] | None = None,
    ) -> _Slot:
        s = self._slot(node, gpu, "vgpu", "k8s", group, patterns)
        cap = int(gpu.model.mem_total_mib * mem_frac) // 256 * 256
        s.mem_cap = s.mem_limit = cap
        s.nominal_mem = float(cap)
        s.core_cap = s.base_core = core
        s.nominal_util = float(core) if core > 0 else 100.0
        return s

    def _timeslice(
        self, node: _Node, gpu: _Gpu, group: str, replicas: int, patterns: tuple[str, ...] | None = None
    ) -> _Slot:
        s = self._slot(node, gpu, "timeslice", "k8s", group, patterns)
        s.replicas = replicas
        s.mem_cap = None  # no memory isolation under time-slicing: unknown, not 0
        s.nominal_mem = gpu.model.mem_total_mib / replicas
        return s

    def _mig_layout(
        self,
        node: _Node,
        gpu: _Gpu,
        combo: tuple[str, ...],
        family: str,
        groups: tuple[str, ...] = (),
        forced: dict[int, tuple[str, tuple[str, ...]]] | None = None,
    ) -> None:
        """Create one slot per MIG instance of ``combo`` (a valid layout) on ``gpu``."""
        rng = self._rng
        profiles = gpu.model.mig
        assert profiles is not None
        used: set[int] = set()
        for j, key in enumerate(combo):
            prof = profiles[key]
            gi = next((g for g in GI_IDS[key] if g not in used), None)
            if gi is None:
                gi = next(g for g in range(1, 65) if g not in used)
            used.add(gi)
            mig_uuid = "MIG-" + _uuid4(rng)
            if forced and j in forced:
                group, pats = forced[j]
                s = self._slot(node, gpu, "mig", family, group, pats)
            elif family == "k8s":
                s = self._slot(node, gpu, "mig", family, rng.choice(groups))
            else:
                s = self._slot(node, gpu, "mig", family)
            s.mig = (prof, gi, 0, mig_uuid)
            s.mem_cap = s.mem_limit = prof.mem_mib
            s.nominal_mem = float(prof.mem_mib)
            s.compute_frac = prof.compute / 7.0
            s.null_util = not gpu.model.gpm
            s.proc_null = True

    # Roles: what each kind of node holds. The first GPUs of each role carry the features the
    # tests and the demo rely on (over-commit, core 0, bursts, idle, partial MIG, fewer time-slice
    # pods than replicas, unallocated GPUs); the rest vary with the seed.

    def _role_k8s_mig(self, node: _Node, ordinal: int) -> None:
        rng = self._rng
        groups = ("genai", "genai", "vision", "nlp", "recsys", "sandbox", "data-eng")
        fixed = {0: ("3g", "2g", "1g", "1g"), 1: ("4g", "3g"), 2: ("1g",) * 7, 3: ("3g",)}
        for gpu in node.gpus:
            i = gpu.spec.index
            combo = fixed.get(i) or rng.choice(MIG_FULL + MIG_PARTIAL)
            forced = {0: ("sandbox", ("idle",))} if i == 2 else None
            self._mig_layout(node, gpu, combo, "k8s", groups, forced)

    def _role_k8s_whole(self, node: _Node, ordinal: int) -> None:
        rng = self._rng
        groups = ("vision", "genai", "genai", "nlp", "recsys", "data-eng", "default")
        for gpu in node.gpus:
            i = gpu.spec.index
            if i == 0:
                self._slot(node, gpu, "whole", "k8s", "vision", ("training",))
            elif i == len(node.gpus) - 1:
                continue  # unallocated
            elif rng.random() < 0.82:
                self._slot(node, gpu, "whole", "k8s", rng.choice(groups))

    def _role_k8s_hami(self, node: _Node, ordinal: int) -> None:
        rng = self._rng
        g = node.gpus
        # 0: memory over-committed: Σ max(mem share, core share) = 0.45 + 0.40 + 0.35 = 1.2
        self._vgpu(node, g[0], "nlp", 0.45, 30)
        self._vgpu(node, g[0], "recsys", 0.40, 30)
        self._vgpu(node, g[0], "genai", 0.35, 0)
        # 1: under-committed (0.25 of the GPU)
        self._vgpu(node, g[1], "genai", 0.25, 20)
        # 2: no core reservation (core 0), one of them an idle allocation
        self._vgpu(node, g[2], "data-eng", 0.20, 0, ("idle",))
        self._vgpu(node, g[2], "nlp", 0.20, 0)
        # 3: bursting: core 20 % running at ~60 % part of the time
        self._vgpu(node, g[3], "nlp", 0.10, 20, ("burst",))
        self._vgpu(node, g[3], "recsys", 0.25, 25)
        # 4: core over-committed: 0.6 + 0.6
        self._vgpu(node, g[4], "vision", 0.20, 60)
        self._vgpu(node, g[4], "genai", 0.20, 60)
        groups = ("nlp", "recsys", "genai", "sandbox", "data-eng")
        for gpu in g[5:]:
            for _ in range(rng.choice((0, 1, 2, 2, 3, 4))):
                self._vgpu(
                    node,
                    gpu,
                    rng.choice(groups),
                    rng.choice((0.1, 0.125, 0.2, 0.25, 0.3, 0.5)),
                    rng.choice((0, 10, 20, 25, 30, 50)),
                )

    def _role_k8s_share(self, node: _Node, ordinal: int) -> None:
        rng = self._rng
        groups = ("sandbox", "nlp", "data-eng", "recsys", "sandbox")
        g = node.gpus
        if ordinal % 2 == 0:  # time-slicing node (device plugin replicas=4)
            for _ in range(4):
                self._timeslice(node, g[0], rng.choice(groups), 4)
            self._timeslice(node, g[1], "nlp", 4, ("burst",))
            self._timeslice(node, g[1], "sandbox", 4)
            for _ in range(rng.choice((1, 2, 3, 4))):
                self._timeslice(node, g[2], rng.choice(groups), 4)
            # g[3] stays unallocated
        else:  # HAMi node
            self._vgpu(node, g[0], "nlp", 0.5, 50)
            self._vgpu(node, g[0], "sandbox", 0.33, 0)
            self._vgpu(node, g[1], "data-eng", 0.25, 20, ("burst",))
            self._vgpu(node, g[2], "recsys", 0.75, 40)
            self._vgpu(node, g[2], "sandbox", 0.5, 30)  # memory over-committed 1.25
            if rng.random() < 0.5:
                self._slot(node, g[3], "whole", "k8s", "nlp")

    def _role_slurm(self, node: _Node, ordinal: int) -> None:
        for gpu in node.gpus:
            self._slot(node, gpu, "whole", "slurm")

    def _role_slurm_mig(self, node: _Node, ordinal: int) -> None:
        rng = self._rng
        for gpu in node.gpus:
            combo = ("3g", "2g", "1g", "1g") if gpu.spec.index == 0 else rng.choice(MIG_FULL + MIG_PARTIAL)
            self._mig_layout(node, gpu, combo, "slurm")

    def _role_k8s_lab(self, node: _Node, ordinal: int) -> None:
        g = node.gpus
        for gpu in g[:4]:
            self._slot(node, gpu, "whole", "k8s", "lab")
        self._timeslice(node, g[4], "lab", 2)
        self._timeslice(node, g[4], "sandbox", 2)
        self._timeslice(node, g[5], "lab", 2)
        self._slot(node, g[6], "whole", "k8s", "sandbox")
        # g[7] unallocated

    def _role_baremetal(self, node: _Node, ordinal: int) -> None:
        rng = self._rng
        for gpu in node.gpus:
            if gpu.spec.index == 0 or rng.random() < 0.6:
                self._slot(node, gpu, "whole", "host")

    # -- identities and lifetimes ------------------------------------------------------------

    def _boot_id(self, node: _Node) -> str:
        return _uuid4(random.Random(f"gpuledger-fleet:{self.seed}:{node.name}:boot:{node.boots}"))

    def _initial(self, s: _Slot, node: _Node) -> None:
        """First lifetime: static workloads have run for a while; churning ones are mid-life."""
        rng = random.Random(f"gpuledger-fleet:{self.seed}:{s.key}:init")
        if s.life is None:
            self._materialize(s, node, -rng.uniform(1 * HOUR, 20 * DAY))
            return
        (lo, hi), _gap = s.life
        if rng.random() < 0.85:
            length = rng.uniform(lo, hi) * HOUR
            self._materialize(s, node, -rng.uniform(0.0, 0.8) * length, length)
        else:
            s.active = False
            s.restart_t = rng.uniform(0.0, 1.0) * HOUR

    def _new_pid(self, node: _Node, rng: random.Random) -> int:
        while True:
            pid = rng.randrange(2_000, 3_000_000)
            if pid not in node.pids:
                node.pids.add(pid)
                return pid

    def _release(self, s: _Slot, node: _Node) -> None:
        node.pids.difference_update(s.pids)
        s.pids = []
        s.active = False

    def _pattern(self, s: _Slot, rng: random.Random) -> Any:
        kind = rng.choice(s.patterns)
        if kind == "trace":
            return TracePattern(
                self._trace,
                rng.choice(self._trace_pods),
                rng.uniform(0.0, self._trace.period_s),
                rng.uniform(0.55, 0.95),
            )
        if kind == "idle":
            return IdlePattern(rng.uniform(0.3, 0.9))
        if kind == "notebook":
            return NotebookPattern(
                rng.uniform(2.0, 5.0) * HOUR,
                rng.uniform(10, 45) * 60.0,
                rng.uniform(0, 5 * HOUR),
                rng.uniform(0.2, 0.8),
                rng.uniform(0.2, 0.5),
                rng.uniform(0.5, 0.9),
            )
        if kind == "training":
            return TrainingPattern(
                rng.uniform(0.75, 0.97),
                rng.uniform(0.7, 0.95),
                rng.uniform(30, 90) * 60.0,
                rng.uniform(60, 240),
                rng.uniform(0, HOUR),
            )
        if kind == "diurnal":
            return DiurnalPattern(
                rng.uniform(0.02, 0.1),
                rng.uniform(0.3, 0.7),
                rng.uniform(10, 17),
                rng.uniform(0.3, 0.5),
                rng.uniform(0.1, 0.3),
                self._tod0,
            )
        if kind == "burst":
            # above the share: a HAMi slice with a core cap bursts to ~3x it; a slice whose nominal
            # is the whole GPU (core 0, time-slicing) bursts to 60-90 % of the GPU
            hi = min(3.0, 95.0 / s.nominal_util) if s.nominal_util < 100.0 else rng.uniform(0.6, 0.9)
            return BurstPattern(
                rng.uniform(20, 60) * 60.0,
                rng.uniform(0.3, 0.6),
                hi,
                rng.uniform(0.1, 0.3),
                rng.uniform(0, HOUR),
                rng.uniform(0.4, 0.8),
            )
        return BatchPattern(rng.uniform(0.7, 0.97), rng.uniform(0.5, 0.95), rng.uniform(3, 12) * 60.0)

    def _materialize(self, s: _Slot, node: _Node, t_start: float, length: float | None = None) -> None:
        """Start a new lifetime of ``s`` at ``t_start``: new pod/job, processes, slice_id, pattern."""
        if s.pids:
            self._release(s, node)
        s.gen += 1
        if s.kind == "vgpu":  # a new pod gets its allocation's caps again
            s.mem_cap, s.core_cap = s.mem_limit, s.base_core
        s.oom_down, s.oom_n, s.last_mm = 0, 0, 0
        prev = getattr(s, "slice_tpl", None)
        if prev is not None:
            self._by_slice.pop(prev["slice_id"], None)
        rng = random.Random(f"gpuledger-fleet:{self.seed}:{s.key}:{s.gen}")
        gpu = s.gpu
        gpu_uuid = gpu.spec.uuid
        s.pattern = self._pattern(s, rng)
        s.start_t = t_start
        s.last_kernel_t = t_start if s.pattern.name == "idle" else t_start - rng.uniform(0, 60)
        if s.life is not None:
            (lo, hi), _gap = s.life
            s.end_t = t_start + (length if length is not None else rng.uniform(lo, hi) * HOUR)
        else:
            s.end_t = math.inf
        n_procs = rng.choice((1, 1, 1, 2, 2, 3, 4))
        pids = [self._new_pid(node, rng) for _ in range(n_procs)]
        s.pids = pids
        container_id = pod_uid = job_id = user = None
        labels: dict[str, str] | None = None
        if s.family == "k8s":
            g = _K8S_GROUPS[s.group or "default"]
            pod_uid = _uuid4(rng)
            container_id = f"{rng.getrandbits(256):064x}"
            if s.app.startswith("jupyter"):
                labels = {"app": "jupyter", "owner": s.app.split("-", 1)[1]}
                pod = f"{s.app}-0"
            else:
                labels = {"app": s.app, **g["labels"]}
                pod = f"{s.app}-{_k8s_suffix(rng, 10)}-{_k8s_suffix(rng, 5)}"
            wl = {
                "namespace": g["ns"],
                "pod": pod,
                "container": s.container,
                "pod_uid": pod_uid,
                "labels": None,
                "job_id": None,
                "account": None,
                "user": None,
            }
            owner = f"{pod_uid}/{s.container}"
        elif s.family == "slurm":
            account, users = rng.choice(_SLURM_ACCOUNTS)
            user = rng.choice(users)
            cluster = node.cluster
            self._job_ids[cluster] += rng.randint(1, 40)
            job_id = str(self._job_ids[cluster])
            wl = {
                "namespace": None,
                "pod": None,
                "container": None,
                "pod_uid": None,
                "labels": None,
                "job_id": job_id,
                "account": account,
                "user": user,
            }
            owner = f"slurm:{job_id}"
        else:
            user = rng.choice(_HOST_USERS)
            wl = {
                "namespace": None,
                "pod": None,
                "container": None,
                "pod_uid": None,
                "labels": None,
                "job_id": None,
                "account": None,
                "user": user,
            }
            owner = f"host:{user}:{pids[0]}"
        s.labels = labels
        s.wl_tpl = wl
        if s.kind == "vgpu":
            slice_id = f"{gpu_uuid}:hami:{owner}"
        elif s.kind == "mig":
            assert s.mig is not None
            slice_id = f"{s.mig[3]}:{owner}"
        else:
            slice_id = f"{gpu_uuid}:{s.kind}:{owner}"
        tpl: dict[str, Any] = {
            "slice_id": slice_id,
            "gpu_uuid": gpu_uuid,
            "kind": s.kind,
            "mem_cap_mib": s.mem_cap,
        }
        if s.kind == "vgpu":
            tpl["core_cap_pct"] = s.core_cap
        tpl["mem_used_mib"] = 0
        tpl["util_pct"] = None
        if s.kind == "vgpu":
            tpl["last_kernel_age_s"] = 0.0
        if s.mig is not None:
            prof, gi, ci, mig_uuid = s.mig
            tpl.update(
                {
                    "mig_profile": prof.name,
                    "gi_id": gi,
                    "ci_id": ci,
                    "mig_uuid": mig_uuid,
                    "compute_slices": prof.compute,
                    "memory_slices": prof.memory,
                    "gpu_compute_slices": 7,
                    "gpu_memory_slices": 8,
                }
            )
        if s.replicas is not None:
            tpl["replicas"] = s.replicas
        tpl["workload"] = None
        s.slice_tpl = tpl
        s.slice_typed = None
        # Processes: the main one does the work; helpers (data loaders, servers' side cars) hold
        # a CUDA context and a little memory.
        mem_w = [rng.uniform(0.02, 0.08) for _ in range(n_procs - 1)]
        util_w = [rng.uniform(0.0, 0.05) for _ in range(n_procs - 1)]
        procs = []
        for j, pid in enumerate(pids):
            procs.append(
                (
                    Process(
                        pid=pid,
                        gpu_uuid=gpu_uuid,
                        slice_id=slice_id,
                        mem_used_mib=0,
                        sm_util_pct=None,
                        container_id=container_id,
                        pod_uid=pod_uid,
                        job_id=job_id,
                        user=user,
                    ),
                    mem_w[j - 1] if j else 0.0,
                    util_w[j - 1] if j else 0.0,
                )
            )
        # main process last, so it takes the remainder and the sums stay exact
        s.proc_head = procs[1:]
        s.proc_last = procs[0][0]
        s.active = True
        self._by_slice[slice_id] = (s, node)

    def _boot(self, node: _Node, t1: float) -> None:
        """Node back from a reboot: new boot_id, seq 0, every workload restarted."""
        node.boots += 1
        node.boot_id = self._boot_id(node)
        node.seq = 0
        node.down_until = None
        assert node.reboot_rng is not None
        node.reboot_at = t1 + 12 * HOUR + node.reboot_rng.expovariate(1.0 / (14 * DAY))
        for gpu in node.gpus:
            gpu.temp = gpu.model.temp_idle_c
            for s in gpu.slots:
                self._materialize(s, node, t1 - 30.0)

    # -- ticks -------------------------------------------------------------------------------

    def sample(self) -> list[Any]:
        """Advance one interval; return one typed v1 tick per node that is up."""
        self._k += 1
        k = self._k
        t1 = k * self._interval_us / 1_000_000
        t0 = t1 - self.interval_s
        ts = format_ts(self.start + timedelta(microseconds=k * self._interval_us))
        out = []
        for node in self._nodes:
            if node.down_until is not None:
                if t1 < node.down_until:
                    continue
                self._boot(node, t1)
            elif t1 >= node.reboot_at:
                assert node.reboot_rng is not None
                node.down_until = node.reboot_at + node.reboot_rng.uniform(120.0, 900.0)
                for gpu in node.gpus:
                    for s in gpu.slots:
                        self._release(s, node)
                continue
            out.append(self._message(node, ts, t0, t1))
            node.seq += 1
        return out

    def _message(self, node: _Node, ts: str, t0: float, t1: float) -> Any:
        dt = self.interval_s
        rnd = self._noise.random
        alpha = 1.0 - math.exp(-dt / 180.0)
        gpus_out: list[Any] = []
        slices_out: list[Any] = []
        procs_out: list[Any] = []
        for gpu in node.gpus:
            if gpu.has_churn:
                for s in gpu.slots:
                    if s.life is None:
                        continue
                    if s.active:
                        if t1 >= s.end_t:
                            self._release(s, node)
                            lo, hi = s.life[1]
                            s.restart_t = (
                                t1
                                + random.Random(f"gpuledger-fleet:{self.seed}:{s.key}:{s.gen}:gap").uniform(
                                    lo, hi
                                )
                                * HOUR
                            )
                    elif t1 >= s.restart_t:
                        self._materialize(s, node, t1 - rnd() * min(dt, 60.0))
            model = gpu.model
            total = model.mem_total_mib
            rows = []
            sum_u = 0.0
            sum_m = 0
            busy_mig = 0.0
            for s in gpu.slots:
                if not s.active:
                    continue
                a, m = s.pattern.sample(t0, t1, t1 - s.start_t, rnd)
                u = a * s.nominal_util
                if u > 100.0:
                    u = 100.0
                mm = int(m * s.nominal_mem)
                if mm > s.mem_limit:
                    mm = s.mem_limit
                elif mm < 0:
                    mm = 0
                down = False
                if s.oom_down:  # restarting after an out-of-memory: no process, nothing held
                    s.oom_down -= 1
                    down, u, mm = True, 0.0, 0
                    if not s.oom_down:
                        self._restart_procs(s, node)
                elif s.kind == "vgpu" and mm > s.mem_cap:
                    # HAMi-core refuses the allocation past limit[]: the process holds the cap, fails,
                    # and its container is down at the next tick (then restarts with new processes)
                    self.oom_events.append(
                        {"t": t1, "slice_id": s.slice_tpl["slice_id"], "cap_mib": s.mem_cap, "demand_mib": mm}
                    )
                    mm = s.mem_cap
                    s.oom_down = _OOM_DOWN_TICKS
                rows.append([s, u, mm, down])
                sum_u += u
                sum_m += mm
                if gpu.mig:
                    busy_mig += (a if a < 1.0 else 1.0) * s.compute_frac
            if sum_m > total:  # HAMi memory over-commit: the device itself cannot hold more
                f = total / sum_m
                sum_m = 0
                for r in rows:
                    r[2] = int(r[2] * f)
                    sum_m += r[2]
            if gpu.mig:
                busy = busy_mig
                gpu_util = None
                for r in rows:
                    r[1] = int(r[1] * 100.0 + 0.5)
            else:
                if sum_u > 100.0:  # time-shared: busy time cannot add up past 100 %
                    f = 100.0 / sum_u
                    for r in rows:
                        r[1] = int(r[1] * f * 100.0)
                else:
                    for r in rows:
                        r[1] = int(r[1] * 100.0 + 0.5)
                total_c = 0
                for r in rows:
                    total_c += r[1]
                if total_c > 10000:
                    total_c = 10000
                gpu_util = total_c / 100
                busy = total_c / 10000.0
            for s, uc, mm, down in rows:
                s.last_mm = mm
                base = s.slice_typed
                if base is None:  # new lifetime or a new cap: the typed template is built again
                    base = s.slice_typed = self._slice_struct(s)
                util = None if s.null_util else uc / 100
                if gpu.prof_mix is not None and (gpu.mig or (s.kind == "whole" and not s.null_util)):
                    # a MIG instance's own GPM profiling; a whole-GPU slice's is its GPU's
                    base = replace(base, **gpu.prof_mix.fields(uc / 100))
                if s.core_cap is not None:
                    if uc > 0:
                        s.last_kernel_t = t1 - rnd() * (dt if dt < 2.0 else 2.0)
                    age = t1 - s.last_kernel_t
                    age = round(age, 1) if age > 0.0 else 0.0
                    slices_out.append(replace(base, mem_used_mib=mm, util_pct=util, last_kernel_age_s=age))
                else:
                    slices_out.append(replace(base, mem_used_mib=mm, util_pct=util))
                if down:
                    continue
                rem_m = mm
                rem_u = uc
                if s.proc_null:
                    for tpl, mw, _uw in s.proc_head:
                        pm = int(mm * mw)
                        rem_m -= pm
                        procs_out.append(replace(tpl, mem_used_mib=pm))
                    procs_out.append(replace(s.proc_last, mem_used_mib=rem_m))
                    continue
                for tpl, mw, uw in s.proc_head:
                    pm = int(mm * mw)
                    pu = int(uc * uw)
                    rem_m -= pm
                    rem_u -= pu
                    procs_out.append(replace(tpl, mem_used_mib=pm, sm_util_pct=pu / 100))
                procs_out.append(replace(s.proc_last, mem_used_mib=rem_m, sm_util_pct=rem_u / 100))
            # power: idle floor plus a concave function of busy time, a little for memory traffic
            span = model.tdp_w - model.idle_w
            power = model.idle_w + span * (busy**0.8 if busy > 0.0 else 0.0) * (0.97 + 0.06 * rnd())
            power += span * 0.03 * (sum_m / total)
            if power > model.tdp_w:
                power = model.tdp_w
            power_w = round(power, 2)
            heat = (power - model.idle_w) / span
            target = model.temp_idle_c + (model.temp_max_c - model.temp_idle_c) * heat
            gpu.temp += (target - gpu.temp) * alpha
            prof = gpu.prof_mix.fields(busy * 100.0) if gpu.prof_mix is not None else _NO_PROF
            # SM clock: idle floor, boosting with load, held back at the power cap (DCGM's SM_CLOCK)
            top = model.sm_clock_max_mhz
            sm_clock = model.sm_clock_idle_mhz + (top - model.sm_clock_idle_mhz) * min(1.0, busy * 4.0)
            reasons = 0 if busy > 0.0 else _CLOCK_IDLE
            if power >= model.tdp_w * 0.98:
                reasons |= _CLOCK_POWER_CAP
                sm_clock *= 0.93
            gpus_out.append(
                Gpu(
                    uuid=gpu.spec.uuid,
                    index=gpu.spec.index,
                    model=model.name,
                    mem_total_mib=total,
                    mem_used_mib=sum_m,
                    util_pct=gpu_util,
                    power_w=power_w,
                    energy_j=round(power_w * dt, 2),
                    temp_c=int(gpu.temp + 0.5),
                    mig_mode=gpu.mig,
                    state="ok",
                    sm_clock_mhz=int(sm_clock),
                    mem_clock_mhz=model.mem_clock_mhz,
                    clocks_event_reasons=reasons,
                    xid_count=0,  # Xid events are read; the simulated hardware raises none
                    **prof,
                    **_HEALTH[model.ecc, model.memory_repair],
                )
            )
        return build_tick(
            node.cluster, node.name, node.boot_id, node.seq, ts, dt, gpus_out, slices_out, procs_out
        )

    @staticmethod
    def _slice_struct(s: _Slot) -> Any:
        """The slot's slice as a typed template: its lifetime's identity and caps, no readings yet."""
        wl = s.wl_tpl.copy()
        if s.labels is not None:
            wl["labels"] = s.labels.copy()
        return Slice(**dict(s.slice_tpl, workload=Workload(**wl)))

    def _restart_procs(self, s: _Slot, node: _Node) -> None:
        """The container restarted after an out-of-memory: same pod and slice, new process ids."""
        s.oom_n += 1
        rng = random.Random(f"gpuledger-fleet:{self.seed}:{s.key}:{s.gen}:oom:{s.oom_n}")
        node.pids.difference_update(s.pids)
        new = {old: self._new_pid(node, rng) for old in s.pids}
        s.pids = list(new.values())
        s.proc_head = [(replace(tpl, pid=new[tpl.pid]), mw, uw) for tpl, mw, uw in s.proc_head]
        s.proc_last = replace(s.proc_last, pid=new[s.proc_last.pid])

    # -- caps (the enforcer's actuator, simulated) --------------------------------------------

    @property
    def now(self) -> datetime:
        """The fleet's clock: the timestamp of the last tick (``start`` before the first)."""
        return self.start + timedelta(microseconds=self._k * self._interval_us)

    def apply_cap(
        self,
        slice_id: str,
        *,
        mem_cap_mib: int | None = None,
        core_cap_pct: int | None = None,
        old_cap: int | None = None,
        floor_mib: int = 512,
        floor_frac: float = 0.10,
    ) -> CapResult:
        """Set one cap of a live HAMi vGPU slice, as the node agent writes a region
        (collector/caps.py apply_cap): refused, with nothing changed, for a slice that is not a live
        vGPU slice, a cap that is not ``old_cap`` (when given), a memory cap below the use of the last
        tick + max(floor_mib, floor_frac x use) or above the slice's allocation, a core cap outside
        1-100. A memory cap holds from the next tick: a process whose demand passes it fails as
        HAMi-core fails it (the tick shows use at the cap, the next one the container down, then a
        restart; ``oom_events``). A core cap is reported from the next tick and answered
        ``applies-at-restart``: the simulated processes keep the share they started with.
        """
        if (mem_cap_mib is None) == (core_cap_pct is None):
            raise ValueError("apply_cap: give exactly one of mem_cap_mib, core_cap_pct")
        found = self._by_slice.get(slice_id)
        s = found[0] if found else None
        if s is None or not s.active or s.kind != "vgpu" or s.slice_tpl["slice_id"] != slice_id:
            return CapResult("refused", f"unknown slice {slice_id}: not a live HAMi slice of the fleet")
        used = s.last_mm
        if mem_cap_mib is not None:
            cur = s.mem_cap
            if old_cap is not None and cur != old_cap:
                return CapResult(
                    "refused",
                    f"cap changed under the agent: limit is {cur} MiB, decision expected {old_cap}",
                    used,
                    cur,
                    cur,
                )
            need = used + max(floor_mib, floor_frac * used)
            if mem_cap_mib < need:
                return CapResult(
                    "refused",
                    f"new cap {mem_cap_mib} MiB below use {used} MiB + floor ({need:.0f} MiB)",
                    used,
                    cur,
                    cur,
                )
            if mem_cap_mib > s.mem_limit:
                return CapResult(
                    "refused",
                    f"new cap {mem_cap_mib} MiB above the allocation ({s.mem_limit} MiB)",
                    used,
                    cur,
                    cur,
                )
            s.mem_cap = int(mem_cap_mib)
            s.slice_tpl["mem_cap_mib"] = s.mem_cap
            s.slice_typed = None
            return CapResult("applied", None, used, cur, s.mem_cap)
        cur = s.core_cap
        if old_cap is not None and cur != old_cap:
            return CapResult(
                "refused",
                f"cap changed under the agent: sm_limit is {cur} %, decision expected {old_cap}",
                used,
                cur,
                cur,
            )
        assert core_cap_pct is not None
        if not 0 < core_cap_pct <= 100:
            return CapResult("refused", f"core cap {core_cap_pct} outside 1-100", used, cur, cur)
        s.core_cap = int(core_cap_pct)
        s.slice_tpl["core_cap_pct"] = s.core_cap
        s.slice_typed = None
        return CapResult(
            "applies-at-restart", "HAMi-core reads sm_limit when a process starts", used, cur, s.core_cap
        )

    # -- introspection -----------------------------------------------------------------------

    def tenant_rules(self) -> list[dict[str, str]]:
        """Ordered tenant rules (first match wins) that tell this fleet's tenants apart.

        Shaped as the config's ``tenants.rules`` holds them: ``tenant`` plus exactly one matcher
        among namespace | label ("key=value") | account | user. The order matters: a Slurm job of
        user alice under account physics is hpc-physics, her workstation is research.
        """
        return [dict(r) for r in _TENANT_RULES]

    def describe(self) -> dict[str, Any]:
        """Counts of what the fleet holds right now (slices churn, so they change over time)."""
        rules = self.tenant_rules()
        models: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        patterns: Counter[str] = Counter()
        tenants: Counter[str] = Counter()
        by_cluster: dict[str, dict[str, int]] = {}
        unallocated = overcommitted = mig_gpus = n_slices = n_procs = 0
        for node in self._nodes:
            c = by_cluster.setdefault(node.cluster, {"nodes": 0, "gpus": 0, "slices": 0})
            c["nodes"] += 1
            for gpu in node.gpus:
                c["gpus"] += 1
                models[gpu.model.name] += 1
                mig_gpus += gpu.mig
                active = [s for s in gpu.slots if s.active]
                if not active:
                    unallocated += 1
                share = 0.0
                for s in active:
                    kinds[s.kind] += 1
                    patterns[s.pattern.name] += 1
                    n_procs += len(s.pids)
                    wl = dict(s.wl_tpl, labels=s.labels)
                    tenants[match_tenant(rules, wl) or "unassigned"] += 1
                    share += _share(s)
                c["slices"] += len(active)
                n_slices += len(active)
                if share > 1.0 + 1e-9 and not gpu.mig:  # MIG's max(c/7, m/8) may sum past 1 by design
                    overcommitted += 1
        return {
            "seed": self.seed,
            "start": format_ts(self.start),
            "interval_s": self.interval_s,
            "scale": self.scale,
            "ticks": self._k,
            "clusters": len(by_cluster),
            "by_cluster": by_cluster,
            "nodes": len(self._nodes),
            "nodes_up": sum(1 for n in self._nodes if n.down_until is None),
            "gpus": sum(models.values()),
            "gpus_by_model": dict(sorted(models.items())),
            "mig_gpus": mig_gpus,
            "unallocated_gpus": unallocated,
            "overcommitted_gpus": overcommitted,
            "slices": n_slices,
            "slices_by_kind": dict(sorted(kinds.items())),
            "slices_by_pattern": dict(sorted(patterns.items())),
            "trace_slices": patterns.get("trace", 0),
            "processes": n_procs,
            "slices_by_tenant": dict(sorted(tenants.items())),
            "tenants_expected": sorted(t for t in tenants if t != "unassigned"),
            "trace_pods_available": len(self._trace_pods),
        }


def _share(s: _Slot) -> float:
    """DESIGN §6 share of one slot (for describe()), by the one definition (gpuledger.shares)."""
    sl: dict[str, Any] = {"kind": s.kind, "mem_cap_mib": s.mem_cap, "core_cap_pct": s.core_cap}
    if s.kind == "mig":
        assert s.mig is not None
        sl.update(compute_slices=s.mig[0].compute, gpu_compute_slices=7)
        sl.update(memory_slices=s.mig[0].memory, gpu_memory_slices=8)
    elif s.kind == "timeslice":
        sl["replicas"] = s.replicas or 1
    return float(share(sl, s.gpu.model.mem_total_mib) or 0)
