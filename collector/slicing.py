"""Slicing: one GPU's readings + process identities + HAMi regions -> its slices and processes.

A pure function of its inputs (no NVML, no files; workload and allocation lookups come in as
functions), shared by every backend that has per-process readings. The rules (DESIGN §4/§6):
each MIG instance in use is a ``mig`` slice; each HAMi shared region on the GPU is a ``vgpu``
slice; the remaining processes of a non-MIG GPU are grouped by workload (pod UID, else Slurm job,
else unix user): one workload -> ``whole``, several (or a GPU the time-slicing plugin advertises
as ``timeslice_replicas`` > 0) -> ``timeslice``. A process on a HAMi-shared GPU outside every
region, or on a MIG instance not (yet) in the layout, is listed with ``slice_id`` null: visible,
but billed to nobody's slice. Slice ids stay the same for as long as the same workload holds the
same place, so idle runs are not broken by a neighbour arriving:

- ``whole`` / ``timeslice``: ``<gpu-uuid>:<owner>``
- ``mig``: ``<mig-uuid>:<owner>``
- ``vgpu``: ``<gpu-uuid>:hami:<pod-uid>/<container>``

where owner is the pod UID, ``slurm:<job>``, ``user:<name>`` or ``unknown``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from collector.readings import GpuReading, ProcReading, pct
from collector.tick import LIMITS, Process, Slice, prof_fields

_MIB = 1 << 20
_NO_FIELDS: tuple[None, ...] = (None, None, None, None)


class Attribution(NamedTuple):
    """Who the processes of this tick are, and how to name their workloads."""

    idents: dict[int, Any]  # pid -> ProcessIdentity | None
    fields: dict[int, tuple[str | None, ...]]  # pid -> (container_id, pod_uid, job_id, user), schema-safe
    # (identity, container, pod_uid) -> typed Workload | None
    workload: Callable[..., Any]
    # (pod_uid, gpu_uuid) -> the pod's HAMi allocation on that GPU (mem_mib, cores) | None
    grant: Callable[[str, str], Any]


def owner(ident: Any) -> str:
    """The workload a process belongs to, as slice ids name it."""
    if ident is None:
        return "unknown"
    if ident.pod_uid:
        return ident.pod_uid
    if ident.job_id:
        return f"slurm:{ident.job_id}"
    if ident.user:
        return f"user:{ident.user}"
    return "unknown"


def slice_gpu(
    g: GpuReading,
    regions: Iterable[tuple[Any, int]],
    att: Attribution,
    now: float,
    timeslice_replicas: int,
) -> tuple[list[Any], list[Any]]:
    """The slices and processes of one readable GPU (``regions``: its HAMi regions, device index)."""
    slices: list[Any] = []
    processes: list[Any] = []
    if g.mig_mode:
        _mig_slices(g, att, slices, processes)
    else:
        _gpu_slices(g, list(regions), att, now, timeslice_replicas, slices, processes)
    return slices, processes


def _proc(g: GpuReading, p: ProcReading, slice_id: str | None, att: Attribution) -> Any:
    cid, pod, job, user = att.fields.get(p.pid, _NO_FIELDS)
    return Process(
        pid=p.pid,
        gpu_uuid=g.uuid,
        slice_id=slice_id,
        mem_used_mib=p.mem_mib,
        sm_util_pct=p.sm,
        container_id=cid,
        pod_uid=pod,
        job_id=job,
        user=user,
    )


def _first_ident(members: list[ProcReading], idents: dict[int, Any]) -> Any:
    return next((idents.get(p.pid) for p in members if idents.get(p.pid) is not None), None)


def _mig_slices(g: GpuReading, att: Attribution, slices: list[Any], processes: list[Any]) -> None:
    by_inst: dict[tuple[int, int], list[ProcReading]] = {}
    for p in g.processes:
        by_inst.setdefault((p.gi, p.ci), []).append(p)
    for m in g.migs:
        members = by_inst.pop((m.gi, m.ci), None)
        if not members:
            continue  # an instance nobody uses is capacity, not a slice
        members.sort(key=lambda p: p.pid)
        ident = _first_ident(members, att.idents)
        sid = f"{m.uuid}:{owner(ident)}"[: LIMITS.id_max]
        slices.append(
            Slice(
                slice_id=sid,
                gpu_uuid=g.uuid,
                kind="mig",
                mem_cap_mib=m.mem_total_mib,
                mem_used_mib=m.mem_used_mib,
                util_pct=m.util_pct,
                mig_profile=m.profile,
                gi_id=m.gi,
                ci_id=m.ci,
                mig_uuid=m.uuid,
                compute_slices=m.compute,
                memory_slices=m.memory,
                gpu_compute_slices=g.gpu_compute_slices,
                gpu_memory_slices=g.gpu_memory_slices,
                workload=att.workload(ident),
                **prof_fields(m.prof),
            )
        )
        for p in members:
            processes.append(_proc(g, p, sid, att))
    for rest in by_inst.values():  # on an instance not (yet) in the layout: shown, not billed
        for p in rest:
            processes.append(_proc(g, p, None, att))


def _gpu_slices(
    g: GpuReading,
    regions: list[tuple[Any, int]],
    att: Attribution,
    now: float,
    timeslice_replicas: int,
    slices: list[Any],
    processes: list[Any],
) -> None:
    procs = sorted(g.processes, key=lambda p: p.pid)
    if regions:
        rest = _vgpu_slices(g, procs, regions, att, now, slices, processes)
        for p in rest:  # outside every HAMi region on a HAMi-shared GPU: shown, not billed
            processes.append(_proc(g, p, None, att))
        return
    if not procs:
        return  # a GPU nobody uses has no slice
    groups: dict[str, list[ProcReading]] = {}
    for p in procs:
        groups.setdefault(owner(att.idents.get(p.pid)), []).append(p)
    n = len(groups)
    shared = n > 1 or timeslice_replicas > 0
    for own, members in groups.items():
        ident = _first_ident(members, att.idents)
        sid = f"{g.uuid}:{own}"[: LIMITS.id_max]
        mems = [p.mem_mib for p in members if p.mem_mib is not None]
        sms = [p.sm for p in members if p.sm is not None]
        slices.append(
            Slice(
                slice_id=sid,
                gpu_uuid=g.uuid,
                kind="timeslice" if shared else "whole",
                mem_cap_mib=None if shared else g.mem_total_mib,
                mem_used_mib=sum(mems) if mems else None,
                util_pct=(pct(sum(sms)) if sms else None) if shared else g.util_pct,
                replicas=(timeslice_replicas or n) if shared else None,
                workload=att.workload(ident),
                # a whole-GPU slice's SM activity is its GPU's; shares of a GPU cannot be told apart
                **({} if shared else prof_fields(g.prof)),
            )
        )
        for p in members:
            processes.append(_proc(g, p, sid, att))


def _vgpu_slices(
    g: GpuReading,
    procs: list[ProcReading],
    regs: list[tuple[Any, int]],
    att: Attribution,
    now: float,
    slices: list[Any],
    processes: list[Any],
) -> list[ProcReading]:
    """One vgpu slice per HAMi region on this GPU; returns the processes in none of them."""
    by_pid: dict[int, int] = {}
    by_pod: dict[str, list[int]] = {}
    for k, (region, _i) in enumerate(regs):
        for hp in region.procs:
            if hp.hostpid > 0:
                by_pid[hp.hostpid] = k
        by_pod.setdefault(region.pod_uid, []).append(k)
    members: list[list[ProcReading]] = [[] for _ in regs]
    rest: list[ProcReading] = []
    for p in procs:
        k = by_pid.get(p.pid)
        if k is None:
            ident = att.idents.get(p.pid)
            ks = by_pod.get(ident.pod_uid) if ident is not None and ident.pod_uid else None
            k = ks[0] if ks and len(ks) == 1 else None
        if k is None:
            rest.append(p)
        else:
            members[k].append(p)
    total = g.mem_total_mib
    for k, (region, i) in enumerate(regs):
        own = (
            f"{region.pod_uid}/{region.container}"
            if region.pod_uid
            else os.path.basename(os.path.dirname(region.path))
        )
        sid = f"{g.uuid}:hami:{own}"[: LIMITS.id_max]
        limit = region.mem_limit_bytes[i] if i < len(region.mem_limit_bytes) else 0
        cap = limit // _MIB if limit > 0 else total  # 0: HAMi enforces no memory limit
        # HAMi-core writes sm_limit 100 when the container asked for no core limit, so the
        # region cannot tell "no reservation" from "all cores": the allocation annotation can.
        core = region.sm_limit_pct[i] if i < len(region.sm_limit_pct) else 0
        core = 0 if core >= 100 else core
        grant = att.grant(region.pod_uid, g.uuid) if region.pod_uid else None
        if grant is not None:
            cap, core = grant.mem_mib or cap, grant.cores
        used = sum(hp.used_bytes[i] for hp in region.procs if i < len(hp.used_bytes)) // _MIB
        sm = sum(hp.sm_util[i] for hp in region.procs if i < len(hp.sm_util))
        mine = members[k]
        if not region.procs and mine:  # region not filled in yet: NVML's view of its processes
            used = sum(p.mem_mib or 0 for p in mine)
            sm = sum(p.sm or 0.0 for p in mine)
        lk = region.last_kernel_time
        age = min(LIMITS.age_max_s, max(0.0, round(now - lk, 1))) if lk > 0 else None
        ident = _first_ident(mine, att.idents)
        slices.append(
            Slice(
                slice_id=sid,
                gpu_uuid=g.uuid,
                kind="vgpu",
                mem_cap_mib=cap if cap is not None else 0,
                core_cap_pct=float(min(100, max(0, core))),
                mem_used_mib=used,
                util_pct=pct(float(sm)),
                last_kernel_age_s=age,
                workload=att.workload(ident, region.container, region.pod_uid),
            )
        )
        for p in mine:
            processes.append(_proc(g, p, sid, att))
    return rest
