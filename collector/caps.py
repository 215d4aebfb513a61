"""The node agent's side of the enforcer: apply cap decisions to HAMi shared regions, answer each with an ack.

Decisions arrive on `gpu.caps.v1` (key = node). Each is checked against its JSON Schema, its node,
its expiry and the applied-decision log (a decision id is applied at most once, across restarts),
then applied in place:
- memory: `limit[dev]` of the container's region (bytes); HAMi-core re-reads it at every
  allocation. Refused below what the slice uses right now + max(floor_mib, floor_frac x use).
- core: `sm_limit[dev]` (percent); HAMi-core reads it when a process starts, so the ack says
  `applies-at-restart`.
A region that is missing, of another ABI, whose device is not the decision's GPU, or whose cap is no
longer the decision's `old_cap` (changed under the agent) is refused with nothing written. Every
decision, applied or refused, is answered on `gpu.cap-acks.v1`; a message that is not a decision
goes to the DLQ with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from collector.hami import (
    _U64,
    MAX_DEVICES,
    OFF_DEVICE_NUM,
    OFF_LIMIT,
    OFF_PROC_NUM,
    OFF_PROCS,
    OFF_SM_LIMIT,
    OFF_UUIDS,
    UUID_LEN,
    HamiRegionError,
    _check_header,
    _open_region,
    _pread_exact,
    _read_slots,
)

MIB = 1024 * 1024
DECISION_SCHEMA_ID = "gpuledger.cap-decision/v1"
ACK_SCHEMA_ID = "gpuledger.cap-ack/v1"


def refused_ack(msg: dict[str, Any], node: str, now: datetime) -> dict[str, Any]:
    """The ack of a decision as it starts: refused, nothing changed (the cap stays the old one);
    the apply path fills in what it did."""
    return {
        "schema": ACK_SCHEMA_ID,
        "decision_id": msg["decision_id"],
        "cluster": msg["cluster"],
        "node": node,
        "slice_id": msg["slice_id"],
        "resource": msg["resource"],
        "status": "refused",
        "reason": None,
        "used_mib": None,
        "cap_before": msg["old_cap"],
        "cap_after": msg["old_cap"],
        "acked_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


def _load(name: str) -> dict[str, Any]:
    return json.loads(resources.files("gpuledger").joinpath(name).read_text("utf-8"))


DECISION_VALIDATOR = jsonschema.Draft202012Validator(_load("cap_decision.schema.json"))
ACK_VALIDATOR = jsonschema.Draft202012Validator(_load("cap_ack.schema.json"))


class Refused(Exception):
    """A decision the node will not apply; the message is the ack's reason."""


@dataclass
class ApplyResult:
    status: str  # applied | applies-at-restart
    used_mib: int
    cap_before: int
    cap_after: int


def region_path(hook_dir: str | Path, pod_uid: str, container: str, gpu_uuid: str) -> Path:
    """`<hook>/containers/<podUID>_<container>/`: the region whose uuids[] holds the GPU (its name
    is HAMi-core's choice, so every .cache file of the container is looked at)."""
    d = Path(hook_dir) / "containers" / f"{pod_uid}_{container}"
    if not any(d.glob("*.cache")):
        raise Refused(f"no HAMi shared region for {pod_uid}/{container} under {d}")
    return _find_uuid(d, gpu_uuid)


def _find_uuid(d: Path, gpu_uuid: str) -> Path:
    for p in sorted(d.glob("*.cache")):
        try:
            if gpu_uuid in _uuids_of(p):
                return p
        except (HamiRegionError, OSError):
            continue
    raise Refused(f"no HAMi shared region under {d} holds {gpu_uuid}")


def _uuids_of(path: Path) -> list[str]:
    fd = _open_region(path, os.O_RDONLY)
    with os.fdopen(fd, "rb", buffering=0):
        head = _pread_exact(path, fd, OFF_PROCS, 0)
        _check_header(path, head, os.fstat(fd).st_size)
        (n,) = _U64.unpack_from(head, OFF_DEVICE_NUM)
        return [
            head[OFF_UUIDS + i * UUID_LEN : OFF_UUIDS + (i + 1) * UUID_LEN]
            .split(b"\0", 1)[0]
            .decode("ascii", "replace")
            for i in range(min(n, MAX_DEVICES))
        ]


def apply_cap(
    path: str | Path,
    gpu_uuid: str,
    resource: str,
    old_cap: int,
    new_cap: int,
    *,
    floor_mib: int = 512,
    floor_frac: float = 0.10,
) -> ApplyResult:
    """Write one cap in place through one fd: header, device, current cap and use are read from the
    same open file that is written, so a region swapped between the check and the write is not hit.
    Raises Refused (nothing written) when any check fails."""
    path = Path(path)
    try:
        fd = _open_region(path, os.O_RDWR)
    except FileNotFoundError as e:
        raise Refused(f"{path}: region missing") from e
    except HamiRegionError as e:
        raise Refused(str(e)) from e
    with os.fdopen(fd, "r+b", buffering=0):
        try:
            size = os.fstat(fd).st_size
            head = _pread_exact(path, fd, OFF_PROCS, 0)
            _check_header(path, head, size)
            (n,) = _U64.unpack_from(head, OFF_DEVICE_NUM)
            if n > MAX_DEVICES:
                raise Refused(f"{path}: device_num {n}, at most {MAX_DEVICES}")
            uuids = [
                head[OFF_UUIDS + i * UUID_LEN : OFF_UUIDS + (i + 1) * UUID_LEN]
                .split(b"\0", 1)[0]
                .decode("ascii", "replace")
                for i in range(n)
            ]
            if gpu_uuid not in uuids:
                raise Refused(f"{path}: region does not hold {gpu_uuid}")
            dev = uuids.index(gpu_uuid)
            (proc_num,) = struct.unpack("<i", _pread_exact(path, fd, 4, OFF_PROC_NUM))
            if not 0 <= proc_num <= 1024:
                raise Refused(f"{path}: proc_num {proc_num}, expected 0 to 1024")
            used_b = sum(p.used_bytes[dev] for p in _read_slots(path, fd, proc_num, n))
        except HamiRegionError as e:
            raise Refused(str(e)) from e
        used_mib = -(-used_b // MIB)
        if resource == "memory":
            (cur,) = _U64.unpack_from(head, OFF_LIMIT + 8 * dev)
            if cur != old_cap * MIB:
                raise Refused(
                    f"cap changed under the agent: limit is {cur // MIB} MiB, decision expected {old_cap}"
                )
            need = used_mib + max(floor_mib, floor_frac * used_mib)
            if new_cap < need:
                raise Refused(f"new cap {new_cap} MiB below use {used_mib} MiB + floor ({need:.0f} MiB)")
            os.pwrite(fd, _U64.pack(new_cap * MIB), OFF_LIMIT + 8 * dev)
            os.fsync(fd)
            return ApplyResult("applied", used_mib, old_cap, new_cap)
        if resource == "core":
            (cur,) = _U64.unpack_from(head, OFF_SM_LIMIT + 8 * dev)
            if cur != old_cap:
                raise Refused(
                    f"cap changed under the agent: sm_limit is {cur} %, decision expected {old_cap}"
                )
            if not 0 < new_cap <= 100:
                raise Refused(f"core cap {new_cap} outside 1-100")
            os.pwrite(fd, _U64.pack(new_cap), OFF_SM_LIMIT + 8 * dev)
            os.fsync(fd)
            return ApplyResult("applies-at-restart", used_mib, old_cap, new_cap)
        raise Refused(f"resource {resource!r} cannot be applied on a node")


class AppliedLog:
    """Decisions this node has answered, fsync'd: each decision applied at most once across restarts.

    A line `id<TAB>ack JSON` is written after the decision is applied and before its ack is sent;
    a line `id<TAB>sent` once the broker has the ack. A decision redelivered after a crash between
    the two (applied, ack never sent) is answered again with the stored ack and never re-applied.
    Lines of a bare id (older logs) count as answered and sent.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ids: set[str] = set()
        self.unsent: dict[str, dict[str, Any]] = {}
        text = self.path.read_text() if self.path.exists() else ""
        if text and not text.endswith("\n"):
            self._write([""])  # end a line torn by a crash, so the next one starts clean
        for line in text.splitlines():
            did, _, rest = line.partition("\t")
            if not did:
                continue
            self.ids.add(did)
            if rest == "sent":
                self.unsent.pop(did, None)
            elif rest:
                # torn by a crash mid-write: the ack was never sent, nothing to repeat
                with contextlib.suppress(ValueError):
                    self.unsent[did] = json.loads(rest)

    def __contains__(self, decision_id: str) -> bool:
        return decision_id in self.ids

    def _write(self, lines: list[str]) -> None:
        with open(self.path, "a") as fh:
            fh.write("".join(x + "\n" for x in lines))
            fh.flush()
            os.fsync(fh.fileno())

    def add(self, decision_id: str, ack: dict[str, Any] | None = None) -> None:
        """Answered: with the ack still to send (re-sent on redelivery until `mark_sent`)."""
        self._write([decision_id + ("\t" + json.dumps(ack, sort_keys=True) if ack is not None else "")])
        self.ids.add(decision_id)
        if ack is not None:
            self.unsent[decision_id] = ack

    def mark_sent(self, decision_ids: list[str]) -> None:
        """The broker holds these acks: a later redelivery is answered with nothing."""
        ids = [d for d in decision_ids if d in self.unsent]
        if ids:
            self._write([d + "\tsent" for d in ids])
            for d in ids:
                self.unsent.pop(d, None)

    def pending_ack(self, decision_id: str) -> dict[str, Any] | None:
        return self.unsent.get(decision_id)


def _now() -> datetime:
    return datetime.now(UTC)


class CapAgent:
    """Handles the decision messages of one node: `handle(raw)` returns ("ack", ack) or ("dlq", reason),
    or None for a decision of another node (not ours to answer) or one already answered and sent
    (a redelivered one whose ack may not have been sent gets that ack again, nothing re-applied)."""

    def __init__(
        self,
        node: str,
        hook_dir: str | Path,
        applied_log: str | Path,
        *,
        floor_mib: int = 512,
        floor_frac: float = 0.10,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.node, self.hook_dir = node, Path(hook_dir)
        self.log = AppliedLog(applied_log)
        self.answered_here: set[str] = set()
        self.floor_mib, self.floor_frac, self.clock = floor_mib, floor_frac, clock

    def handle(self, raw: bytes) -> tuple[str, Any] | None:
        try:
            msg = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            return ("dlq", f"not valid JSON: {e}")
        errors = sorted(DECISION_VALIDATOR.iter_errors(msg), key=lambda e: list(e.path))
        if errors:
            e = errors[0]
            where = "/".join(str(p) for p in e.path) or "(root)"
            return ("dlq", f"{where}: {e.message}")
        if msg["node"] != self.node:
            return None
        did = msg["decision_id"]
        if did in self.log:
            # redelivered: applied already. Answered by this process: its ack is on its way (a send
            # that fails ends run_cap_agent, and a restart makes a new agent). Answered before a
            # restart with the ack never confirmed sent: that ack again.
            stored = None if did in self.answered_here else self.log.pending_ack(did)
            if stored is None:
                return None
            self.answered_here.add(did)
            return ("ack", stored)
        ack = self._apply(msg)
        self.log.add(did, ack)
        self.answered_here.add(did)
        return ("ack", ack)

    def _apply(self, msg: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        ack = refused_ack(msg, self.node, now)
        try:
            expires = datetime.fromisoformat(msg["expires_at"].replace("Z", "+00:00"))
            issued = datetime.fromisoformat(msg["issued_at"].replace("Z", "+00:00"))
            if now > expires:
                raise Refused(f"expired at {msg['expires_at']}")
            if issued > now.replace(microsecond=0) and (issued - now).total_seconds() > 300:
                raise Refused(f"issued in the future ({msg['issued_at']})")
            if msg["slice_kind"] != "vgpu" or not msg.get("pod_uid") or not msg.get("container"):
                raise Refused(f"unknown slice {msg['slice_id']}: not a HAMi slice of this node")
            try:
                path = region_path(self.hook_dir, msg["pod_uid"], msg["container"], msg["gpu_uuid"])
            except Refused as e:
                raise Refused(f"unknown slice {msg['slice_id']}: {e}") from e
            res = apply_cap(
                path,
                msg["gpu_uuid"],
                msg["resource"],
                msg["old_cap"],
                msg["new_cap"],
                floor_mib=self.floor_mib,
                floor_frac=self.floor_frac,
            )
        except Refused as e:
            ack["reason"] = str(e)
            return ack
        ack.update(status=res.status, used_mib=res.used_mib, cap_after=res.cap_after)
        if res.status == "applies-at-restart":
            ack["reason"] = "HAMi-core reads sm_limit when a process starts"
        return ack


def run_cap_agent(
    agent: CapAgent,
    bootstrap: str,
    caps_topic: str,
    acks_topic: str,
    dlq_topic: str,
    *,
    group_id: str | None = None,
    client_id: str = "gpuledger",
    stop: Any = None,
    max_polls: int | None = None,
    poll_ms: int = 500,
) -> int:
    """Consume `caps_topic` as this node's own group, answer each decision, commit after the acks
    are durably sent (a crash before that redelivers, and the applied log makes the retry a no-op
    that answers nothing twice). Returns the number of records handled."""
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(
        caps_topic,
        bootstrap_servers=bootstrap,
        group_id=group_id or f"gpuledger-caps-{agent.node}",
        client_id=f"{client_id}-caps",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=2_000,
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id=f"{client_id}-cap-acks", acks="all")
    handled = polls = 0
    acked: list[str] = []
    try:
        while (stop is None or not stop.is_set()) and (max_polls is None or polls < max_polls):
            polls += 1
            batch = consumer.poll(timeout_ms=poll_ms)
            if not batch:
                continue
            for records in batch.values():
                for rec in records:
                    handled += 1
                    if rec.key is not None and rec.key.decode("utf-8", "replace") != agent.node:
                        continue  # another node's decision: not ours to answer
                    out = agent.handle(rec.value)
                    if out is None:
                        continue
                    kind, body = out
                    key = agent.node.encode()
                    if kind == "ack":
                        producer.send(acks_topic, key=key, value=json.dumps(body, sort_keys=True).encode())
                        acked.append(body["decision_id"])
                    else:
                        reason = [("reason", body.encode())]
                        producer.send(dlq_topic, key=key, value=rec.value, headers=reason)
            producer.flush()
            agent.log.mark_sent(acked)
            acked.clear()
            consumer.commit()
    finally:
        consumer.close()
        producer.close()
    return handled


def cap_agent_wanted(cfg: Any) -> bool:
    """`gpuledger collect` runs the agent when some pool's enforcer mode is not off and a broker is
    configured (tenant modes can only be stricter than their pool's, so they never turn it on)."""
    modes = {cfg.enforcer.mode, *cfg.enforcer.pools.values()}
    return bool(cfg.kafka.bootstrap_servers) and modes != {"off"}


def start_cap_agent(cfg: Any, stop: Any, *, poll_ms: int = 500, retry_s: float = 5.0) -> Any:
    """The node's cap agent in a daemon thread until `stop` is set, or None when not wanted.

    The agent answers decisions for `collector.node`, on the regions under `collector.hami_hook_dir`,
    keeping its log of answered decisions in `collector.spool_dir` (caps-applied.log). A broker
    error restarts it after `retry_s` with a fresh agent read back from that log, so an ack whose
    send failed is sent again when the decision is redelivered.
    """
    import sys
    import threading

    if not cap_agent_wanted(cfg):
        return None

    def loop() -> None:
        while not stop.is_set():
            agent = CapAgent(
                cfg.collector.node,
                cfg.collector.hami_hook_dir,
                Path(cfg.collector.spool_dir) / "caps-applied.log",
                floor_mib=cfg.enforcer.floor_mib,
                floor_frac=cfg.enforcer.floor_frac,
            )
            try:
                run_cap_agent(
                    agent,
                    cfg.kafka.bootstrap_servers,
                    cfg.kafka.caps_topic,
                    cfg.kafka.cap_acks_topic,
                    cfg.kafka.caps_dlq_topic,
                    client_id=cfg.kafka.client_id,
                    stop=stop,
                    poll_ms=poll_ms,
                )
            except Exception as e:  # broker away, topic missing: keep the collector running
                print(f"collect: cap agent: {type(e).__name__}: {e}; again in {retry_s:g} s", file=sys.stderr)
                stop.wait(retry_s)

    t = threading.Thread(target=loop, name="gpuledger-cap-agent", daemon=True)
    t.start()
    return t


class SimulatedCapAgent:
    """The node agents of a simulated fleet in one (the demo's, collector/fleet.py): a decision
    message as it travels on `gpu.caps.v1` in, its ack out, through `SimulatedFleet.apply_cap`
    instead of a region file. The same checks as CapAgent before the fleet's own: the schema,
    expiry against the fleet's clock, each decision id answered at most once (None again)."""

    def __init__(self, fleet: Any, *, floor_mib: int = 512, floor_frac: float = 0.10) -> None:
        self.fleet, self.floor_mib, self.floor_frac = fleet, floor_mib, floor_frac
        self.answered: set[str] = set()

    def handle(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        errors = sorted(DECISION_VALIDATOR.iter_errors(msg), key=lambda e: list(e.path))
        if errors:
            raise ValueError(f"not a cap decision: {errors[0].message}")
        did = msg["decision_id"]
        if did in self.answered:
            return None
        self.answered.add(did)
        now = self.fleet.now
        ack = refused_ack(msg, msg["node"], now)
        expires = datetime.fromisoformat(msg["expires_at"].replace("Z", "+00:00"))
        if now > expires:
            ack["reason"] = f"expired at {msg['expires_at']}"
            return ack
        if msg["resource"] not in ("memory", "core"):
            ack["reason"] = f"resource {msg['resource']!r} cannot be applied on a node"
            return ack
        res = self.fleet.apply_cap(
            msg["slice_id"],
            old_cap=msg["old_cap"],
            floor_mib=self.floor_mib,
            floor_frac=self.floor_frac,
            **(
                {"mem_cap_mib": msg["new_cap"]}
                if msg["resource"] == "memory"
                else {"core_cap_pct": msg["new_cap"]}
            ),
        )
        ack.update(status=res.status, reason=res.reason, used_mib=res.used_mib)
        if res.cap_after is not None:
            ack["cap_after"] = res.cap_after
        return ack
