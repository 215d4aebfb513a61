"""HAMi's durable allocation record: the pod annotation `hami.io/vgpu-devices-allocated`
(`UUID,NVIDIA,memMiB,cores:` per device, `;` per container), parsed into grants (DESIGN §7)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("gpuledger.collector.attribution")


VGPU_ALLOCATED_ANNOTATION = "hami.io/vgpu-devices-allocated"


@dataclass(frozen=True)
class VgpuGrant:
    gpu_uuid: str
    vendor: str
    mem_mib: int
    cores: int  # percent of the GPU's SMs; 0 means no core reservation


def parse_vgpu_allocation(annotation: str) -> list[list[VgpuGrant]]:
    """HAMi's `hami.io/vgpu-devices-allocated`: `UUID,NVIDIA,memMiB,cores:` per device, `;` per container.

    One list per container, in pod-spec order: containers without a GPU keep their (empty) place so
    indexes line up with spec.containers; only the terminating `;` is dropped, as HAMi's decoder does.
    """
    text = annotation.strip()
    if not text:
        return []
    containers = text.split(";")
    if containers[-1].strip() == "":
        containers.pop()
    out: list[list[VgpuGrant]] = []
    for ci, ctext in enumerate(containers):
        grants = []
        for piece in ctext.split(":"):
            if not piece.strip():
                continue
            fields = [f.strip() for f in piece.split(",")]
            if len(fields) != 4:
                raise ValueError(
                    f"{VGPU_ALLOCATED_ANNOTATION}: container {ci} device {piece!r}: "
                    f"expected UUID,vendor,memMiB,cores, got {len(fields)} fields"
                )
            uuid, vendor, mem, cores = fields
            if not uuid or not vendor:
                raise ValueError(
                    f"{VGPU_ALLOCATED_ANNOTATION}: container {ci} device {piece!r}: empty UUID or vendor"
                )
            try:
                mem_mib, core_pct = int(mem), int(cores)
            except ValueError as e:
                raise ValueError(
                    f"{VGPU_ALLOCATED_ANNOTATION}: container {ci} device {piece!r}: "
                    "memMiB and cores must be integers"
                ) from e
            if mem_mib < 0 or not 0 <= core_pct <= 100:
                raise ValueError(
                    f"{VGPU_ALLOCATED_ANNOTATION}: container {ci} device {piece!r}: "
                    f"memMiB must be >= 0 and cores 0-100"
                )
            grants.append(VgpuGrant(uuid, vendor, mem_mib, core_pct))
        out.append(grants)
    return out
