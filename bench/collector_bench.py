"""Collector cost per tick on a simulated 8-GPU node, beside a plain collector and nvitop, same run.

    python bench/collector_bench.py [--ticks 60] [--workdir /tmp/gpuledger-collector-bench]
                                    [--nvitop-python /tmp/nvitop-venv/bin/python]

The node (through tests/fake_nvml.py, the fake NVML at pynvml's function boundary): 8 H100s,
56 slices, 400 processes: GPUs 0-1 in MIG mode with 7 × 1g.10gb instances (GPM activity),
GPUs 2-4 shared by HAMi (7 vGPU regions each, real ABI 1.2 region files), GPUs 5-7
time-sliced by 7 pods each. Every process has a /proc fixture entry (stat, cgroup of a
containerd/systemd pod, status, environ) under the work dir, and every pod an entry in a
static resolver file. Each tick the fake driver has produced 10 s of samples (GPU
utilization every 1/6 s, per-process utilization every 1 s for busy processes).

Collectors, each in its own process (so each peak RSS is its own), timed over next_tick() +
JSON encoding, after one warm-up tick:
  1. gpuledger: collector.nvml.NvmlBackend with ProcAttributor, StaticFileResolver, HAMi.
  2. plain: the same message built the obvious way: one NVML call per value per tick, one
     process-utilization call per process, per-instance MIG process calls, every PID
     attributed from /proc afresh, nothing cached.
  3. nvitop (if a Python with nvitop is given): Device.all() + per-device metrics +
     GpuProcess.take_snapshots per tick with pynvml's functions patched to the same fake.
     nvitop does no attribution, HAMi or MIG slicing, and reads host info of the PIDs
     through psutil from the real /proc (where the fake PIDs do not exist).
Prints a table; record it in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

START = 1_800_000_000.0
N_GPUS, PER_GPU = 8, 7
USERS = ("alice", "bob", "carol", "dave", "erin")


# -- the node ---------------------------------------------------------------------------------------


def node_spec(seed: int = 7) -> dict[str, Any]:
    """Deterministic: 56 slices over 8 GPUs, 400 processes (8 slices of 8, 48 of 7)."""
    rnd = random.Random(seed)
    gpus = [
        {"uuid": f"GPU-{uuid.UUID(int=rnd.getrandbits(128), version=4)}", "index": i} for i in range(N_GPUS)
    ]
    slices = []
    pid = 20_000
    for k in range(N_GPUS * PER_GPU):
        gi, j = divmod(k, PER_GPU)
        kind = "mig" if gi < 2 else "vgpu" if gi < 5 else "timeslice"
        procs = []
        for p in range(8 if k < 8 else 7):
            pid += rnd.randint(1, 40)
            procs.append(
                {
                    "pid": pid,
                    "mem_mib": rnd.randint(256, 1024) if p else rnd.randint(1024, 4096),
                    "sm": (rnd.choice((0, 0, 1, 2)) if p else rnd.choice((0, 3, 6, 9, 12))),
                    "uid": 1000 + rnd.randrange(len(USERS)),
                }
            )
        slices.append(
            {
                "gpu": gi,
                "j": j,
                "kind": kind,
                "pod_uid": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
                "cid": f"{rnd.getrandbits(256):064x}",
                "pod": f"app-{k:02d}-{rnd.getrandbits(20):05x}",
                "ns": rnd.choice(("ml-vision", "genai-serving", "ml-shared", "sandbox")),
                "activity": rnd.choice((0.0, 12.5, 25.0, 50.0, 87.5)),
                "procs": procs,
            }
        )
    return {"gpus": gpus, "slices": slices}


def write_fixtures(spec: dict[str, Any], workdir: Path) -> None:
    """The /proc tree, the passwd file, the pods file and the HAMi region files."""
    from fake_nvml import write_proc_entry

    from collector.hami import HamiProcess, SharedRegion, write_shared_region

    proc = workdir / "proc"
    proc.mkdir(parents=True, exist_ok=True)
    (workdir / "passwd").write_text(
        "".join(f"{u}:x:{1000 + i}:{1000 + i}::/home/{u}:/bin/bash\n" for i, u in enumerate(USERS))
    )
    pods = {}
    for s in spec["slices"]:
        pod_path = s["pod_uid"].replace("-", "_")
        cgroup = (
            "0::/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{pod_path}.slice/cri-containerd-{s['cid']}.scope\n"
        )
        for p in s["procs"]:
            write_proc_entry(str(proc), p["pid"], start=p["pid"] * 3, cgroup=cgroup, uid=p["uid"])
        pods[s["pod_uid"]] = {
            "namespace": s["ns"],
            "pod": s["pod"],
            "labels": {"app": s["pod"].rsplit("-", 1)[0], "team": s["ns"].split("-")[-1]},
            "containers": {s["cid"]: "main"},
        }
        if s["kind"] == "vgpu":
            d = workdir / "vgpu" / "containers" / f"{s['pod_uid']}_main"
            d.mkdir(parents=True, exist_ok=True)
            region = SharedRegion(
                "",
                s["pod_uid"],
                "main",
                1,
                2,
                [spec["gpus"][s["gpu"]]["uuid"]],
                [10 << 30],
                [15],
                [
                    HamiProcess(i + 1, p["pid"], [p["mem_mib"] << 20], [p["sm"]], 1)
                    for i, p in enumerate(s["procs"])
                ],
                int(START),
            )
            write_shared_region(d / f"{spec['gpus'][s['gpu']]['uuid']}.cache", region)
    (workdir / "pods.json").write_text(json.dumps(pods))


def build_fake(spec: dict[str, Any]) -> Any:
    from fake_nvml import FakeGpu, FakeMig, FakeNvml, FakeProcess

    gpus = []
    for g in spec["gpus"]:
        mine = [s for s in spec["slices"] if s["gpu"] == g["index"]]
        mig = mine[0]["kind"] == "mig"
        migs = (
            [
                FakeMig(
                    f"MIG-{s['pod_uid']}",
                    7 + s["j"],
                    0,
                    "1g.10gb",
                    1,
                    9984,
                    sum(p["mem_mib"] for p in s["procs"]),
                    s["activity"],
                )
                for s in mine
            ]
            if mig
            else []
        )
        fg = FakeGpu(
            g["index"],
            g["uuid"],
            mig_mode=mig,
            migs=migs,
            power_mw=300_000,
            temp_c=55,
            mem_used_mib=sum(p["mem_mib"] for s in mine for p in s["procs"]),
            util_pct=min(100, sum(p["sm"] for s in mine for p in s["procs"])),
        )
        for s in mine:
            for p in s["procs"]:
                gi = 7 + s["j"] if mig else 0xFFFFFFFF
                fg.procs.append(
                    FakeProcess(p["pid"], p["mem_mib"] << 20, p["sm"], gi=gi, ci=0 if mig else gi)
                )
        gpus.append(fg)
    return FakeNvml(gpus, start_s=START)


# -- the plain collector ------------------------------------------------------------------------------


class PlainCollector:
    """The baseline: one NVML call per value per tick, nothing batched or cached (bar the counters
    a delta needs). The same message as the real backend, built the way one would write it first."""

    def __init__(self, nvml: Any, workdir: Path, clock: Any) -> None:
        from collector.pod_resolvers import StaticFileResolver

        self.lib, self.workdir, self.clock = nvml, workdir, clock
        self.resolver = StaticFileResolver(str(workdir / "pods.json"))
        self.energy: dict[str, int] = {}
        self.gpm: dict[str, Any] = {}
        self.seq = 0
        self.boot_id = str(uuid.uuid4())
        nvml.nvmlInit()

    def _get(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self.lib.NVMLError_NotSupported:
            return None

    def _identify(self, pid: int) -> Any:
        from collector.proc_identity import ProcAttributor

        return ProcAttributor(str(self.workdir / "proc"), str(self.workdir / "passwd")).identify(pid)

    def _workload(self, ident: Any, container: str | None = None) -> dict[str, Any] | None:
        if ident is None:
            return None
        w = self.resolver.resolve(ident.pod_uid, ident.container_id) if ident.pod_uid else None
        return {
            "namespace": w.namespace if w else None,
            "pod": w.pod if w else None,
            "container": container or (w.container if w else None),
            "pod_uid": ident.pod_uid,
            "labels": dict(w.labels) if w and w.labels else None,
            "job_id": ident.job_id,
            "account": ident.account,
            "user": ident.user,
        }

    def _proc(self, uuid_: str, p: Any, sid: str | None, sm: float | None, ident: Any) -> dict[str, Any]:
        return {
            "pid": p.pid,
            "gpu_uuid": uuid_,
            "slice_id": sid,
            "mem_used_mib": p.usedGpuMemory >> 20,
            "sm_util_pct": sm,
            "container_id": ident.container_id if ident else None,
            "pod_uid": ident.pod_uid if ident else None,
            "job_id": ident.job_id if ident else None,
            "user": ident.user if ident else None,
        }

    def next_tick(self) -> list[dict[str, Any]]:
        from collector.hami import scan_hook_dir

        lib, now = self.lib, self.clock()
        now_us = int(now * 1e6)
        regions = scan_hook_dir(self.workdir / "vgpu")
        gpus, slices, processes = [], [], []
        for i in range(lib.nvmlDeviceGetCount()):
            h = lib.nvmlDeviceGetHandleByIndex(i)
            u = lib.nvmlDeviceGetUUID(h)
            total = lib.nvmlDeviceGetMemoryInfo(h).total >> 20
            used = lib.nvmlDeviceGetMemoryInfo(h).used >> 20
            mig = lib.nvmlDeviceGetMigMode(h)[0] == 1
            rates = self._get(lib.nvmlDeviceGetUtilizationRates, h)
            energy = lib.nvmlDeviceGetTotalEnergyConsumption(h)
            prev = self.energy.get(u)
            self.energy[u] = energy
            gpus.append(
                {
                    "uuid": u,
                    "index": i,
                    "model": lib.nvmlDeviceGetName(h),
                    "mem_total_mib": total,
                    "mem_used_mib": used,
                    "util_pct": float(rates.gpu) if rates else None,
                    "power_w": lib.nvmlDeviceGetPowerUsage(h) / 1000,
                    "energy_j": (energy - prev) / 1000 if prev is not None and energy >= prev else None,
                    "temp_c": lib.nvmlDeviceGetTemperature(h, lib.NVML_TEMPERATURE_GPU),
                    "mig_mode": mig,
                    "state": "ok",
                }
            )
            if mig:
                for j in range(lib.nvmlDeviceGetMaxMigDeviceCount(h)):
                    try:
                        mh = lib.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                    except lib.NVMLError_NotFound:
                        continue
                    mu = lib.nvmlDeviceGetUUID(mh)
                    gi = lib.nvmlDeviceGetGpuInstanceId(mh)
                    ci = lib.nvmlDeviceGetComputeInstanceId(mh)
                    profile = lib.nvmlDeviceGetName(mh).rsplit(" ", 1)[-1]
                    attrs = lib.nvmlDeviceGetAttributes(mh)
                    mem = lib.nvmlDeviceGetMemoryInfo(mh)
                    procs = lib.nvmlDeviceGetComputeRunningProcesses(mh)
                    sample = lib.nvmlGpmSampleAlloc()
                    lib.nvmlGpmMigSampleGet(h, gi, sample)
                    act = None
                    if mu in self.gpm:
                        req = lib.c_nvmlGpmMetricsGet_t()
                        req.version, req.numMetrics = lib.NVML_GPM_METRICS_GET_VERSION, 1
                        req.sample1, req.sample2 = self.gpm[mu], sample
                        req.metrics[0].metricId = lib.NVML_GPM_METRIC_GRAPHICS_UTIL
                        act = lib.nvmlGpmMetricsGet(req).metrics[0].value
                        lib.nvmlGpmSampleFree(self.gpm[mu])
                    self.gpm[mu] = sample
                    if not procs:
                        continue
                    idents = {p.pid: self._identify(p.pid) for p in procs}
                    first = idents[min(idents)]
                    sid = f"{mu}:{first.pod_uid if first else 'unknown'}"
                    slices.append(
                        {
                            "slice_id": sid,
                            "gpu_uuid": u,
                            "kind": "mig",
                            "mem_cap_mib": mem.total >> 20,
                            "mem_used_mib": mem.used >> 20,
                            "util_pct": act,
                            "mig_profile": profile,
                            "gi_id": gi,
                            "ci_id": ci,
                            "mig_uuid": mu,
                            "compute_slices": attrs.gpuInstanceSliceCount,
                            "memory_slices": max(1, round((mem.total >> 20) * 8 / total)),
                            "gpu_compute_slices": 7,
                            "gpu_memory_slices": 8,
                            "workload": self._workload(first),
                        }
                    )
                    processes.extend(self._proc(u, p, sid, None, idents[p.pid]) for p in procs)
                continue
            procs = lib.nvmlDeviceGetComputeRunningProcesses(h)
            sms = {}
            for p in procs:  # one utilization call per process, its latest sample
                try:
                    samples = lib.nvmlDeviceGetProcessUtilization(h, now_us - 10_000_000)
                except lib.NVMLError_NotFound:
                    samples = []
                mine = [s for s in samples if s.pid == p.pid]
                sms[p.pid] = float(max(mine, key=lambda s: s.timeStamp).smUtil) if mine else 0.0
            idents = {p.pid: self._identify(p.pid) for p in procs}
            mine_regions = [(r, r.uuids.index(u)) for r in regions if u in r.uuids]
            if mine_regions:
                for r, d in mine_regions:
                    sid = f"{u}:hami:{r.pod_uid}/{r.container}"
                    hostpids = {hp.hostpid for hp in r.procs}
                    members = [p for p in procs if p.pid in hostpids]
                    ident = idents.get(members[0].pid) if members else None
                    slices.append(
                        {
                            "slice_id": sid,
                            "gpu_uuid": u,
                            "kind": "vgpu",
                            "mem_cap_mib": r.mem_limit_bytes[d] >> 20,
                            "core_cap_pct": float(r.sm_limit_pct[d]),
                            "mem_used_mib": sum(hp.used_bytes[d] for hp in r.procs) >> 20,
                            "util_pct": float(sum(hp.sm_util[d] for hp in r.procs)),
                            "last_kernel_age_s": max(0.0, now - r.last_kernel_time),
                            "workload": self._workload(ident, r.container),
                        }
                    )
                    processes.extend(self._proc(u, p, sid, sms[p.pid], idents[p.pid]) for p in members)
                continue
            groups: dict[str, list[Any]] = {}
            for p in procs:
                ident = idents[p.pid]
                groups.setdefault(ident.pod_uid if ident else "unknown", []).append(p)
            for owner, members in groups.items():
                sid = f"{u}:{owner}"
                shared = len(groups) > 1
                sl = {
                    "slice_id": sid,
                    "gpu_uuid": u,
                    "kind": "timeslice" if shared else "whole",
                    "mem_cap_mib": None if shared else total,
                    "mem_used_mib": sum(p.usedGpuMemory for p in members) >> 20,
                    "util_pct": min(100.0, sum(sms[p.pid] for p in members)),
                }
                if shared:
                    sl["replicas"] = len(groups)
                sl["workload"] = self._workload(idents[members[0].pid])
                slices.append(sl)
                processes.extend(self._proc(u, p, sid, sms[p.pid], idents[p.pid]) for p in members)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + "Z"
        msg = {
            "schema": "gpuledger.sample/v1",
            "cluster": "bench",
            "node": "node-1",
            "boot_id": self.boot_id,
            "seq": self.seq,
            "ts": ts,
            "interval_s": 10.0,
            "gpus": gpus,
            "slices": slices,
            "processes": processes,
        }
        self.seq += 1
        return [msg]


# -- one collector in this process --------------------------------------------------------------------


def run_one(name: str, workdir: Path, ticks: int) -> dict[str, Any]:
    spec = node_spec()
    fake = build_fake(spec)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if name == "nvitop":
        tick_fn, counts = _nvitop(fake)
    else:
        import orjson

        if name == "gpuledger":
            from collector.nvml import NvmlBackend
            from collector.pod_resolvers import StaticFileResolver
            from collector.proc_identity import ProcAttributor

            backend: Any = NvmlBackend(
                "bench",
                "node-1",
                10.0,
                nvml=fake,
                clock=fake.clock,
                attributor=ProcAttributor(str(workdir / "proc"), str(workdir / "passwd")),
                resolver=StaticFileResolver(str(workdir / "pods.json")),
                hami_hook_dir=str(workdir / "vgpu"),
            )
        else:
            backend = PlainCollector(fake, workdir, fake.clock)

        def tick_fn() -> Any:
            if name == "gpuledger":  # the agent's path: typed ticks, encoded with msgspec
                from collector.tick import encode

                return [encode(t) for t in backend.sample()]
            return [orjson.dumps(m) for m in backend.next_tick()]

        counts = None
    wall, cpu, calls = [], [], []
    sample_msg = None
    for k in range(ticks + 1):
        fake.advance(10.0)
        c0 = sum(fake.calls.values())
        w0, p0 = time.perf_counter(), time.process_time()
        out = tick_fn()
        w1, p1 = time.perf_counter(), time.process_time()
        if k == 0:
            sample_msg = out
            first_ms = (w1 - w0) * 1000
            continue  # warm-up: first attribution of every PID, first MIG/GPM samples
        wall.append((w1 - w0) * 1000)
        cpu.append((p1 - p0) * 1000)
        calls.append(sum(fake.calls.values()) - c0)
    result: dict[str, Any] = {
        "name": name,
        "ticks": ticks,
        "first_ms": first_ms,
        "median_ms": statistics.median(wall),
        "p95_ms": statistics.quantiles(wall, n=20)[18],
        "cpu_ms": statistics.median(cpu),
        "nvml_calls": statistics.median(calls),
        "rss_before_mb": rss0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if name != "nvitop" and sample_msg:
        import orjson

        from gpuledger.schema import reference_errors

        msg = orjson.loads(sample_msg[0])
        errors = reference_errors(msg)
        result.update(slices=len(msg["slices"]), processes=len(msg["processes"]), schema_errors=errors[:3])
    elif counts is not None:
        result.update(processes=counts())
    return result


def _nvitop(fake: Any) -> tuple[Any, Any]:
    """nvitop reading the same fake: pynvml's functions are patched before nvitop copies them."""
    import pynvml

    def plain(fn: Any) -> Any:  # nvitop copies only plain functions out of pynvml
        def call(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return call

    for name in dir(type(fake)):
        if name.startswith("nvml"):
            setattr(pynvml, name, plain(getattr(fake, name)))
    pynvml.nvmlInitWithFlags = plain(lambda flags: fake.nvmlInit())
    for suffix in ("", "_v2", "_v3"):
        setattr(pynvml, f"nvmlDeviceGetGraphicsRunningProcesses{suffix}", plain(lambda h: []))
    # No ctypes symbol lookup: nvitop then calls pynvml's (here: the fake's) functions as they are
    # instead of re-implementing the process and memory queries over the driver's symbols.
    pynvml._nvmlGetFunctionPointer = None
    import logging

    logging.getLogger("nvitop").setLevel(logging.CRITICAL)
    from nvitop import Device, GpuProcess

    def not_in_fake(symbol: str) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    pynvml._nvmlGetFunctionPointer = not_in_fake  # what the fake lacks is a function the driver lacks

    devices = Device.all()
    last = {"n": 0}

    def tick() -> Any:
        n = 0
        for d in devices:
            d.memory_used(), d.gpu_utilization(), d.power_usage(), d.temperature()
            targets = d.mig_devices() if d.is_mig_mode_enabled() else [d]
            for t in targets:
                procs = t.processes()
                snaps = GpuProcess.take_snapshots(procs.values(), failsafe=True)
                n += len(snaps)
        last["n"] = n
        return n

    return tick, lambda: last["n"]


# -- the table ----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=60)
    ap.add_argument("--workdir", default="/tmp/gpuledger-collector-bench")
    ap.add_argument("--nvitop-python", default="/tmp/nvitop-venv/bin/python")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = Path(args.workdir)
    if args.one:
        print(json.dumps(run_one(args.one, workdir, args.ticks)))
        return 0
    write_fixtures(node_spec(), workdir)
    runs = [(sys.executable, "gpuledger"), (sys.executable, "plain")]
    if os.path.exists(args.nvitop_python):
        runs.append((args.nvitop_python, "nvitop"))
    else:
        print(f"nvitop: {args.nvitop_python} not found; skipped", file=sys.stderr)
    results = []
    for python, name in runs:
        out = subprocess.run(
            [python, __file__, "--one", name, "--ticks", str(args.ticks), "--workdir", str(workdir)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"\n8 GPUs (2 MIG × 7, 3 HAMi × 7, 3 time-sliced × 7) = 56 slices, 400 processes; "
        f"{args.ticks} ticks of 10 s after one warm-up tick\n"
    )
    print(
        "| collector | median ms/tick | p95 ms | CPU ms/tick | first tick ms | NVML calls/tick "
        "| slices | processes | peak RSS MB (before) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['name']} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} | {r['cpu_ms']:.2f} "
            f"| {r['first_ms']:.1f} "
            f"| {r['nvml_calls']:.0f} | {r.get('slices', '-')} | {r.get('processes', '-')} "
            f"| {r['peak_rss_mb']:.0f} ({r['rss_before_mb']:.0f}) |"
        )
    for r in results:
        if r.get("schema_errors"):
            print(f"{r['name']}: schema errors {r['schema_errors']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
