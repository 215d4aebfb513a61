"""Real-GPU check of the NVML backend: two torch processes, the collector for 30 s, exact expectations.

Run it through scripts/gpu-check.sh on a GPU machine (torch, nvidia-ml-py, no network, no
install: the repo is put on PYTHONPATH). What it does:

1. a probe process (torch, CUDA context, the same warm-up as the workers, no big tensor) is
   started and stopped to measure the CUDA context overhead C (see `context_overhead`);
2. worker A: 2 GiB tensor, light load (a short burst of matmuls, then sleep);
   worker B: 6 GiB tensor, heavy load (matmuls back to back);
3. `collector.nvml.NvmlBackend` (the real backend, real pynvml, real /proc attribution) runs for
   `--seconds` at `--interval`, through the agent loop;
4. `evaluate` checks every tick against the schema, that both PIDs appear with memory within
   5 % of torch.cuda.memory_reserved() + C, that SM util is ordered as the load (B > A), and
   prints the per-tick cost. Exit status 1 on any failure.

`evaluate` takes plain tick dicts, so tests drive it with ticks from the fake NVML.

`gpu_check.py truth` (issue 17: what the GPU really did) runs one worker at a time, a small-kernel
load (one tiny elementwise kernel after another: "some kernel ran" nearly all the time while
almost every SM sits empty) and then a large-kernel one (fp16 matmuls back to back), with the
collector beside each, and prints kernel-busy (NVML utilization) beside the GPM profiling fields
and the GPU's health fields as a table for bench/RESULTS.md. It fails if a load did not run, or if,
where the GPU reports SM activity, the small kernels do not show SM activity well below their
kernel-busy or the large kernels do not show more SM activity than the small ones.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

MIB = 1 << 20
TOLERANCE = 0.05


@dataclass
class Expect:
    """What one worker process should look like in the collector's ticks."""

    name: str
    pid: int
    expected_mib: float  # torch.cuda.memory_reserved() + the CUDA context overhead
    reserved_mib: float  # what torch's caching allocator holds


@dataclass
class Verdict:
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def evaluate(
    ticks: list[dict[str, Any]],
    gpu_uuid: str,
    light: Expect,
    heavy: Expect,
    tick_cpu_ms: list[float],
    tolerance: float = TOLERANCE,
) -> Verdict:
    """Check the collector's ticks against what the two workers are known to do."""
    from gpuledger.decode import decode_batch
    from gpuledger.schema import reference_errors

    v = Verdict()
    if len(ticks) < 3:
        v.failures.append(f"only {len(ticks)} ticks collected, expected at least 3")
        return v
    for t in ticks:
        errs = reference_errors(t)
        if errs:
            v.failures.append(f"tick seq {t.get('seq')} fails the schema: {errs[:3]}")
    import orjson

    d = decode_batch([orjson.dumps(t) for t in ticks], batch=1, max_message_bytes=1 << 20)
    if d.rejects:
        v.failures.append(f"ingest decoder rejects {len(d.rejects)} ticks: {d.rejects[0].reason}")
    body = ticks[1:]  # the first tick's process util covers the start-up of the collector only
    util: dict[str, list[float]] = {}
    for w in (light, heavy):
        mems, sms, missing = [], [], 0
        for t in body:
            mine = [p for p in t["processes"] if p["pid"] == w.pid and p["gpu_uuid"] == gpu_uuid]
            if not mine:
                missing += 1
                continue
            p = mine[0]
            if p["mem_used_mib"] is not None:
                mems.append(p["mem_used_mib"])
            if p["sm_util_pct"] is not None:
                sms.append(p["sm_util_pct"])
        if missing:
            v.failures.append(f"{w.name} (pid {w.pid}) missing from {missing} of {len(body)} ticks")
        if not mems:
            v.failures.append(f"{w.name} (pid {w.pid}): no memory reported")
            continue
        got = statistics.median(mems)
        err = abs(got - w.expected_mib) / w.expected_mib
        v.lines.append(
            f"{w.name}: pid {w.pid} collector {got:.0f} MiB, torch reserved {w.reserved_mib:.0f} MiB "
            f"+ context = {w.expected_mib:.0f} MiB expected ({err * 100:.1f} % off); "
            f"SM util per tick {[round(x, 1) for x in sms]}"
        )
        if err > tolerance:
            v.failures.append(
                f"{w.name} (pid {w.pid}): collector says {got:.0f} MiB, expected {w.expected_mib:.0f} MiB "
                f"(torch reserved {w.reserved_mib:.0f} + context), "
                f"{err * 100:.1f} % off > {tolerance * 100:.0f} %"
            )
        util[w.name] = sms
    if light.name in util and heavy.name in util:
        if not util[light.name] or not util[heavy.name]:
            v.failures.append("per-process SM util is null: NVML gave no process utilization")
        else:
            lo, hi = statistics.mean(util[light.name]), statistics.mean(util[heavy.name])
            v.lines.append(f"mean SM util: {light.name} {lo:.1f} %, {heavy.name} {hi:.1f} %")
            if not hi > lo:
                v.failures.append(
                    f"SM util not ordered as the load: {heavy.name} {hi:.1f} % <= {light.name} {lo:.1f} %"
                )
    gpus = [g for t in body for g in t["gpus"] if g["uuid"] == gpu_uuid]
    states = {g["state"] for g in gpus}
    if states != {"ok"}:
        v.failures.append(f"GPU {gpu_uuid} states {sorted(states)}, expected ok")
    gutil = [g["util_pct"] for g in gpus if g["util_pct"] is not None]
    energy = [g["energy_j"] for g in gpus if g["energy_j"] is not None]
    v.lines.append(
        f"GPU util per tick {[round(x, 1) for x in gutil]}; energy J per tick {[round(x) for x in energy]}"
    )
    if not gutil:
        v.failures.append("GPU util_pct null in every tick")
    if tick_cpu_ms:
        v.lines.append(
            f"collector cost per tick: median {statistics.median(tick_cpu_ms):.2f} ms CPU, "
            f"max {max(tick_cpu_ms):.2f} ms over {len(tick_cpu_ms)} ticks"
        )
    return v


# -- the workers (run as `gpu_check.py worker ...`) ---------------------------------------------------


def worker(mem_gib: float, load: str, ready: str, stop: str, deadline_s: float) -> int:
    import torch

    torch.cuda.init()
    dev = torch.device("cuda:0")
    a = torch.randn(8192, 8192, device=dev, dtype=torch.float16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.float16)
    for _ in range(5):  # warm-up: cuBLAS handle, workspace and kernels are loaded before "ready"
        (a @ b).sum()
    big = torch.ones(int(mem_gib * (1 << 30)), dtype=torch.uint8, device=dev) if mem_gib > 0 else None
    tiny = torch.ones(256, device=dev)
    torch.cuda.synchronize()
    info = {
        "pid": os.getpid(),
        "reserved": torch.cuda.memory_reserved(),
        "allocated": torch.cuda.memory_allocated(),
    }
    Path(ready + ".tmp").write_text(json.dumps(info))
    os.replace(ready + ".tmp", ready)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and not os.path.exists(stop):
        if load in ("heavy", "large"):
            for _ in range(20):
                a @ b
            torch.cuda.synchronize()
        elif load == "small":  # one block's worth of work per kernel, kernels back to back
            for _ in range(2000):
                tiny.add_(1.0)
            torch.cuda.synchronize()
        elif load == "light":
            for _ in range(2):
                a @ b
            torch.cuda.synchronize()
            time.sleep(0.2)
        else:  # probe: hold the context, do nothing
            time.sleep(0.1)
    del big
    return 0


def _start(
    name: str, mem_gib: float, load: str, tmp: Path, deadline_s: float
) -> tuple[subprocess.Popen, dict]:
    ready = tmp / f"{name}.ready"
    stop = tmp / f"{name}.stop"
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "worker",
            "--mem-gib",
            str(mem_gib),
            "--load",
            load,
            "--ready",
            str(ready),
            "--stop",
            str(stop),
            "--deadline",
            str(deadline_s),
        ]
    )
    end = time.monotonic() + 150
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited with {proc.returncode} before it was ready")
        if time.monotonic() > end:
            proc.kill()
            raise RuntimeError(f"worker {name} not ready within 150 s")
        time.sleep(0.2)
    return proc, json.loads(ready.read_text())


def _stop(name: str, proc: subprocess.Popen, tmp: Path) -> None:
    (tmp / f"{name}.stop").write_text("")
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def _device_used_mib(pynvml: Any, h: Any) -> float:
    return pynvml.nvmlDeviceGetMemoryInfo(h).used / MIB


def context_overhead(used_before_mib: float, used_with_probe_mib: float, probe_reserved_mib: float) -> float:
    """CUDA context + cuBLAS + loaded kernels of one torch process: what the probe added on the device
    (NVML's device-level used memory, not the per-process figure under test) minus what torch's
    caching allocator holds. The same torch, CUDA and GPU give every worker the same overhead, so
    a worker is expected to use memory_reserved() + this."""
    return used_with_probe_mib - used_before_mib - probe_reserved_mib


def _open_gpu0(pynvml: Any) -> tuple[Any, str]:
    """NVML started, GPU 0's handle and UUID, and a line saying which GPU and driver."""
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    gpu_uuid = pynvml.nvmlDeviceGetUUID(h)
    print(f"GPU 0: {pynvml.nvmlDeviceGetName(h)} {gpu_uuid}, driver {pynvml.nvmlSystemGetDriverVersion()}")
    return h, gpu_uuid


def _collect(
    pynvml: Any, node: str, args: argparse.Namespace, clock: Any, before_close: Any = None
) -> tuple[list[dict[str, Any]], list[float]]:
    """The real backend through the agent loop for `args.seconds` at `args.interval`: its ticks as
    dicts and the CPU ms of each sample; `before_close` runs while NVML is still open."""
    from collector.agent import run_collector
    from collector.nvml import NvmlBackend
    from collector.proc_identity import ProcAttributor
    from collector.tick import as_dicts
    from collector.transport import MemoryTransport
    from gpuledger.bus import MemoryBus

    backend = NvmlBackend(
        "gpu-check", node, args.interval, nvml=pynvml, attributor=ProcAttributor("/proc"), clock=clock
    )
    cpu_ms: list[float] = []
    ticks: list[dict[str, Any]] = []
    inner = backend.sample

    def timed() -> list[Any]:
        c0 = time.process_time()
        out = inner()
        cpu_ms.append((time.process_time() - c0) * 1000)
        ticks.extend(as_dicts(out))
        return out

    backend.sample = timed  # type: ignore[method-assign]
    n = max(3, round(args.seconds / args.interval))
    run_collector(backend, MemoryTransport(MemoryBus(), "t"), args.interval, ticks=n)
    if before_close is not None:
        before_close()
    backend.close()
    return ticks, cpu_ms


def main_check(
    args: argparse.Namespace,
    *,
    nvml: Any = None,
    clock: Any = time.time,
    start: Any = None,
    stop: Any = None,
    settle_s: float = 1.0,
) -> int:
    """The check; ``nvml``, ``clock``, ``start``/``stop`` (the workers) and ``settle_s`` let tests run
    it against the fake NVML without a GPU or torch."""
    if nvml is None:
        import pynvml
    else:
        pynvml = nvml
    start = start or _start
    stop = stop or _stop
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    h, gpu_uuid = _open_gpu0(pynvml)
    deadline = args.seconds + 200.0
    u0 = _device_used_mib(pynvml, h)
    probe, pinfo = start("probe", 0, "probe", tmp, deadline)
    time.sleep(settle_s)
    u1 = _device_used_mib(pynvml, h)
    stop("probe", probe, tmp)
    ctx = context_overhead(u0, u1, pinfo["reserved"] / MIB)
    print(
        f"device used {u0:.0f} MiB before, {u1:.0f} with the probe; "
        f"probe reserved {pinfo['reserved'] / MIB:.0f} MiB -> CUDA context overhead {ctx:.0f} MiB"
    )
    time.sleep(settle_s)
    procs = []
    try:
        pa, ia = start("light", args.light_gib, "light", tmp, deadline)
        procs.append(("light", pa))
        pb, ib = start("heavy", args.heavy_gib, "heavy", tmp, deadline)
        procs.append(("heavy", pb))
        light = Expect("light", ia["pid"], ia["reserved"] / MIB + ctx, ia["reserved"] / MIB)
        heavy = Expect("heavy", ib["pid"], ib["reserved"] / MIB + ctx, ib["reserved"] / MIB)
        time.sleep(2 * settle_s)
        node = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname()) or "gpu-check"
        ticks, cpu_ms = _collect(pynvml, node, args, clock, lambda: _diagnose(pynvml, h, light, heavy))
    finally:
        for name, p in procs:
            stop(name, p, tmp)
    remap_host_pids(ticks, gpu_uuid, light, heavy)
    v = evaluate(ticks, gpu_uuid, light, heavy, cpu_ms)
    for line in v.lines:
        print(line)
    for f in v.failures:
        print(f"FAIL: {f}")
    print("gpu-check: PASS" if v.ok else f"gpu-check: FAIL ({len(v.failures)} failures)")
    return 0 if v.ok else 1


def remap_host_pids(ticks: list[dict[str, Any]], gpu_uuid: str, light: Expect, heavy: Expect) -> bool:
    """In a container without the host's PID namespace NVML reports host PIDs the workers cannot
    know; then, and only when exactly two processes are on the GPU, they are told apart by memory
    (the heavy worker holds more). Attribution cannot be checked there; memory and load still can."""
    mem: dict[int, list[int]] = {}
    for t in ticks:
        for p in t["processes"]:
            if p["gpu_uuid"] == gpu_uuid and p["mem_used_mib"] is not None:
                mem.setdefault(p["pid"], []).append(p["mem_used_mib"])
    if light.pid in mem or heavy.pid in mem or len(mem) != 2:
        return False
    small, big = sorted(mem, key=lambda pid: statistics.median(mem[pid]))
    print(
        f"NOTE: NVML PIDs {sorted(mem)} are not the workers' {light.pid}, {heavy.pid}: this machine is in a "
        f"PID namespace other than the host's; matched by memory: light = {small}, heavy = {big}"
    )
    light.pid, heavy.pid = small, big
    return True


def _diagnose(pynvml: Any, h: Any, light: Expect, heavy: Expect) -> None:
    """What the driver's process sample buffer looks like (how the per-process estimate is made)."""
    since = int((time.time() - 5.0) * 1e6)
    try:
        samples = pynvml.nvmlDeviceGetProcessUtilization(h, since)
    except pynvml.NVMLError as exc:
        print(f"process samples in the last 5 s: {exc}")
        return
    for w in (light, heavy):
        ts = sorted(s.timeStamp for s in samples if s.pid == w.pid)
        gaps = [b - a for a, b in pairwise(ts)]
        sms = [s.smUtil for s in samples if s.pid == w.pid]
        print(f"{w.name}: {len(ts)} process samples in the last 5 s, gaps µs {gaps[:8]}, smUtil {sms[:8]}")
    try:
        _, gs = pynvml.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, since)
        gts = [s.timeStamp for s in gs]
        print(f"GPU samples in the last 5 s: {len(gs)}, gaps µs {[b - a for a, b in pairwise(gts)][:8]}")
    except pynvml.NVMLError as exc:
        print(f"GPU samples: {exc}")


# -- kernel-busy against SM activity (`gpu_check.py truth`) ----------------------------------------

TRUTH_FIELDS = ("util_pct", "sm_active_pct", "sm_occupancy_pct", "tensor_active_pct", "dram_active_pct")
HEALTH_SHOWN = ("ecc_uncorrected", "remapped_rows_uncorrectable", "row_remap_pending", "xid_count")
TRUTH_GAP_PCT = 20.0  # small kernels: SM activity at least this many points below kernel-busy
TRUTH_BUSY_PCT = 50.0  # a load that ran keeps kernel-busy above this


def truth_row(ticks: list[dict[str, Any]], gpu_uuid: str) -> dict[str, Any]:
    """Medians over the ticks of one GPU's kernel-busy and profiling fields (None: never reported),
    clocks, and its health fields at the last tick."""
    gpus = [g for t in ticks for g in t["gpus"] if g["uuid"] == gpu_uuid]
    row: dict[str, Any] = {}
    for f in (*TRUTH_FIELDS, "sm_clock_mhz"):
        vals = [g[f] for g in gpus if g.get(f) is not None]
        row[f] = statistics.median(vals) if vals else None
    row["health"] = {f: gpus[-1].get(f) for f in HEALTH_SHOWN} if gpus else {}
    return row


def truth_verdict(rows: dict[str, dict[str, Any]]) -> Verdict:
    """The table, and what must hold of it (docstring of this module)."""
    v = Verdict()

    def cell(x: Any) -> str:
        return "null" if x is None else f"{x:.1f}"

    v.lines.append(
        "| workload | kernel-busy % | SM active % | SM occupancy % | tensor active % | DRAM active % "
        "| SM MHz |"
    )
    v.lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        cells = " | ".join(cell(r[f]) for f in (*TRUTH_FIELDS, "sm_clock_mhz"))
        v.lines.append(f"| {name} kernels | {cells} |")
    for name, r in rows.items():
        v.lines.append(f"{name}: health at the last tick {r['health']}")
        if r["util_pct"] is None or r["util_pct"] < TRUTH_BUSY_PCT:
            v.failures.append(f"{name} kernels: kernel-busy {cell(r['util_pct'])} %, the load did not run")
    small, large = rows.get("small"), rows.get("large")
    if small and large and small["sm_active_pct"] is not None and large["sm_active_pct"] is not None:
        if small["util_pct"] is not None and small["sm_active_pct"] > small["util_pct"] - TRUTH_GAP_PCT:
            v.failures.append(
                f"small kernels: SM active {cell(small['sm_active_pct'])} % is not "
                f"{TRUTH_GAP_PCT:.0f} points below kernel-busy {cell(small['util_pct'])} %"
            )
        if large["sm_active_pct"] <= small["sm_active_pct"]:
            v.failures.append(
                f"SM active not ordered as the kernels: large {cell(large['sm_active_pct'])} % "
                f"<= small {cell(small['sm_active_pct'])} %"
            )
    else:
        v.lines.append("SM activity not reported (no GPM on this GPU): kernel-busy only")
    return v


def main_truth(
    args: argparse.Namespace,
    *,
    nvml: Any = None,
    clock: Any = time.time,
    start: Any = None,
    stop: Any = None,
    settle_s: float = 1.0,
) -> int:
    """Small kernels, then large ones, one worker at a time, the collector beside each; ``nvml``,
    ``clock``, ``start``/``stop`` and ``settle_s`` let tests run it on the fake NVML."""
    if nvml is None:
        import pynvml
    else:
        pynvml = nvml
    start, stop = start or _start, stop or _stop
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    _, gpu_uuid = _open_gpu0(pynvml)
    rows: dict[str, dict[str, Any]] = {}
    for load in ("small", "large"):
        proc, _ = start(load, 0.5, load, tmp, args.seconds + 200.0)
        try:
            time.sleep(settle_s)
            ticks, _ = _collect(pynvml, "gpu-truth", args, clock)
        finally:
            stop(load, proc, tmp)
        rows[load] = truth_row(ticks[1:], gpu_uuid)  # the first tick holds the start of the load
    v = truth_verdict(rows)
    for line in v.lines:
        print(line)
    for f in v.failures:
        print(f"FAIL: {f}")
    print("gpu-check truth: PASS" if v.ok else f"gpu-check truth: FAIL ({len(v.failures)} failures)")
    return 0 if v.ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--mem-gib", type=float, required=True)
    w.add_argument("--load", choices=("heavy", "light", "probe", "small", "large"), required=True)
    w.add_argument("--ready", required=True)
    w.add_argument("--stop", required=True)
    w.add_argument("--deadline", type=float, default=240.0)
    tr = sub.add_parser("truth", help="kernel-busy against SM activity, small then large kernels")
    tr.add_argument("--seconds", type=float, default=20.0)
    tr.add_argument("--interval", type=float, default=2.0)
    tr.add_argument("--tmp", default=f"/tmp/gpuledger-gpu-truth-{os.getpid()}")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--light-gib", type=float, default=2.0)
    ap.add_argument("--heavy-gib", type=float, default=6.0)
    ap.add_argument("--tmp", default=f"/tmp/gpuledger-gpu-check-{os.getpid()}")
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        return worker(args.mem_gib, args.load, args.ready, args.stop, args.deadline)
    if args.cmd == "truth":
        return main_truth(args)
    return main_check(args)


if __name__ == "__main__":
    sys.exit(main())
