"""Who owns a GPU process: host PID -> container, pod UID, Slurm job and unix user, from /proc.

NVML reports host PIDs. The cgroup path of a process already names its container (containerd,
CRI-O, Docker; cgroup v1 and v2; systemd and cgroupfs drivers), its pod and its Slurm job, so one
read of `<proc_root>/<pid>/cgroup` attributes it without asking a container runtime. The path is
searched, never anchored: kind clusters, nested runtimes and distro slices put prefixes in front.

PIDs are reused. Every identity is cached on (pid, start time), the start time being field 22 of
`<proc_root>/<pid>/stat`, so a steady process costs one small read per lookup and a reused PID is
read afresh. A process can exit between any two reads: that is a normal event and yields None.
The pod UID -> workload step is collector/pod_resolvers.py.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Collection
from dataclasses import dataclass

log = logging.getLogger("gpuledger.collector.attribution")

# `pod<uid>`: dashes with the cgroupfs driver, underscores with the systemd one (kubepods-...-pod<uid>.slice).
_POD_RE = re.compile(r"pod([0-9a-f_-]{32,36})")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# One path token that is a container: `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`,
# `libpod-<id>.scope` (systemd driver), a bare `<id>` (cgroupfs: /kubepods/.../pod<uid>/<id>, /docker/<id>),
# `crio-<id>` (CRI-O with cgroupfs) or the `...slice:cri-containerd:<id>` form (tokens split on ':').
# `crio-conmon-<id>.scope` (CRI-O's monitor process, never a GPU user) does not match.
_CONTAINER_TOKEN_RE = re.compile(r"(?:(?:cri-containerd|crio|docker|libpod)-)?([0-9a-f]{64})(?:\.scope)?")
_TOKEN_SPLIT_RE = re.compile(r"[/:]")
# Slurm: /system.slice/slurmstepd.scope/job_123/step_0/... (v2), /slurm/uid_1000/job_123/step_batch/... (v1).
_JOB_RE = re.compile(r"(?:^|/)job_(\d+)(?=/|$)")

_STAT_START_TIME_INDEX = 19  # field 22 counted from field 3, the first one after "(comm)"
_IDENTIFY_ATTEMPTS = 3  # a PID reused while we read it is read again, this many times at most
_READ_CHUNK = 65536
_MAX_READ_CHUNKS = 64  # 4 MiB: more than any stat/status/cgroup file; environ beyond it is cut


class _Gone(Exception):
    """The process exited (or its PID was never there) while we were reading it."""


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start_time: int  # field 22 of <proc_root>/<pid>/stat (clock ticks since boot): the PID-reuse guard
    container_id: str | None  # 64-hex container id from the cgroup path
    pod_uid: str | None  # canonical dashed lowercase UUID
    job_id: str | None  # Slurm job id (job_<id> in the cgroup path)
    account: str | None  # SLURM_JOB_ACCOUNT from the process environment, when readable
    user: str | None  # unix user of the real uid, else "uid:<n>"; None when status was unreadable


@dataclass(frozen=True)
class CgroupIdentity:
    container_id: str | None
    pod_uid: str | None
    job_id: str | None


def canonical_pod_uid(text: str) -> str | None:
    """A pod UID as the API server spells it (dashed lowercase), or None when `text` is not one."""
    uid = text.strip().lower().replace("_", "-")
    if len(uid) == 32 and "-" not in uid:
        uid = f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:]}"
    return uid if _UUID_RE.fullmatch(uid) else None


def parse_cgroup(text: str) -> CgroupIdentity:
    """Container id, pod UID and Slurm job from the text of a /proc/<pid>/cgroup file.

    Every line (`hierarchy:controllers:path`, v2 is `0::path`) is searched; hybrid hosts often have
    `0::/` next to v1 lines that carry the information, so the first line that names a thing wins.
    Within a path the innermost (last) match wins, which is the process's own container when
    runtimes nest. Lines that are not cgroup lines are ignored, so garbage yields all None.
    """
    container_id = pod_uid = job_id = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2]
        if container_id is None:
            for token in reversed(_TOKEN_SPLIT_RE.split(path)):
                m = _CONTAINER_TOKEN_RE.fullmatch(token)
                if m:
                    container_id = m.group(1)
                    break
        if pod_uid is None:
            for m in reversed(list(_POD_RE.finditer(path))):
                pod_uid = canonical_pod_uid(m.group(1))
                if pod_uid:
                    break
        if job_id is None:
            jobs = _JOB_RE.findall(path)
            if jobs:
                job_id = jobs[-1]
    return CgroupIdentity(container_id, pod_uid, job_id)


def parse_start_time(stat: bytes) -> int:
    """Field 22 of a /proc/<pid>/stat line; comm is cut at the LAST ')' as it may hold ' ' and ')'."""
    rparen = stat.rfind(b")")
    if rparen < 0:
        raise ValueError("no ')' closing the command name")
    fields = stat[rparen + 1 :].split()
    if len(fields) <= _STAT_START_TIME_INDEX:
        raise ValueError(f"{len(fields) + 2} fields, expected at least 22")
    return int(fields[_STAT_START_TIME_INDEX])


def _real_uid(status: bytes) -> int | None:
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            parts = line.split()
            return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return None


def _environ_value(environ: bytes, name: bytes) -> str | None:
    prefix = name + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            value = entry[len(prefix) :].decode("utf-8", "replace")
            return value or None
    return None


class _PasswdFile:
    """uid -> name from a passwd file, re-read when its mtime changes (users come and go on a node).

    Only the file is consulted (not NSS): in a pod the host's file is mounted (e.g. /host/etc/passwd)
    and the container's own NSS would answer for the wrong machine. Unknown uids become "uid:<n>".
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._names: dict[int, str] = {}

    def _refresh(self) -> None:
        try:
            st = os.stat(self._path)
        except OSError:
            self._stamp, self._names = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        names: dict[int, str] = {}
        try:
            with open(self._path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.split(":")
                    if len(parts) >= 3 and parts[2].isdigit() and not parts[0].startswith("#"):
                        names.setdefault(int(parts[2]), parts[0])  # first entry wins, as getpwuid
        except OSError as e:
            log.warning("cannot read passwd file %s: %s; users are shown as uid:<n>", self._path, e)
        self._stamp, self._names = stamp, names

    def name(self, uid: int) -> str:
        self._refresh()
        return self._names.get(uid) or f"uid:{uid}"


class ProcAttributor:
    """Host PID -> ProcessIdentity from a proc tree, cached on (pid, start time).

    The cache holds at most `max_entries` PIDs: on overflow, PIDs whose proc directory is gone are
    dropped first, then the oldest entries. `prune(live_pids)` drops everything else after a tick.
    """

    def __init__(
        self, proc_root: str = "/proc", passwd_file: str = "/etc/passwd", *, max_entries: int = 8192
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.proc_root = proc_root
        self._passwd = _PasswdFile(passwd_file)
        self._max_entries = max_entries
        self._cache: dict[int, ProcessIdentity] = {}
        self._warned_unreadable = False

    def __len__(self) -> int:
        return len(self._cache)

    def _read(self, path: str) -> bytes:
        """One whole proc file; the single place files are read (tests count calls here).

        Raw os.read instead of open(): the cached path is one stat read per PID per tick, and a
        buffered file object costs more than the read itself. Opened without following a final
        link and without blocking, and read only when fstat says it is a regular file: proc_root
        may be a bind mount or a copy (tests, /host/proc) where a FIFO in place of `cgroup`
        would otherwise hang the agent's tick.
        """
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"{path}: not a regular file")
            chunks = []
            for _ in range(_MAX_READ_CHUNKS):
                chunk = os.read(fd, _READ_CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _read_proc(self, pid: int, name: str) -> bytes:
        try:
            return self._read(f"{self.proc_root}/{pid}/{name}")
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError) as e:
            raise _Gone from e

    def _start_time(self, pid: int) -> int:
        try:
            return parse_start_time(self._read_proc(pid, "stat"))
        except ValueError as e:
            log.debug("unreadable %s/%d/stat: %s", self.proc_root, pid, e)
            raise _Gone from e

    def identify(self, pid: int) -> ProcessIdentity | None:
        """The identity of a running PID, or None when it is gone (including exiting mid-read)."""
        try:
            for _ in range(_IDENTIFY_ATTEMPTS):
                start = self._start_time(pid)
                cached = self._cache.get(pid)
                if cached is not None and cached.start_time == start:
                    return cached
                ident = self._read_identity(pid, start)
                if self._start_time(pid) == start:  # same process from first read to last
                    self._store(ident)
                    return ident
        except _Gone:
            pass
        except OSError as e:  # EACCES on stat (hidepid, no CAP_SYS_PTRACE): misconfigured, say so once
            if not self._warned_unreadable:
                self._warned_unreadable = True
                log.warning(
                    "cannot read %s/%d/stat: %s; such processes stay unattributed", self.proc_root, pid, e
                )
        self._cache.pop(pid, None)
        return None

    def _read_identity(self, pid: int, start: int) -> ProcessIdentity:
        try:
            cg = parse_cgroup(self._read_proc(pid, "cgroup").decode("utf-8", "replace"))
        except OSError as e:  # e.g. EACCES under a restrictive hidepid setup: identify what we can
            log.debug("unreadable %s/%d/cgroup: %s", self.proc_root, pid, e)
            cg = CgroupIdentity(None, None, None)
        user = None
        try:
            uid = _real_uid(self._read_proc(pid, "status"))
            user = None if uid is None else self._passwd.name(uid)
        except OSError as e:
            log.debug("unreadable %s/%d/status: %s", self.proc_root, pid, e)
        account = None
        if cg.job_id is not None:  # environ is only readable by root or the owner: read it only for jobs
            try:
                account = _environ_value(self._read_proc(pid, "environ"), b"SLURM_JOB_ACCOUNT")
            except OSError as e:
                log.debug("unreadable %s/%d/environ: %s", self.proc_root, pid, e)
        return ProcessIdentity(pid, start, cg.container_id, cg.pod_uid, cg.job_id, account, user)

    def _store(self, ident: ProcessIdentity) -> None:
        self._cache.pop(ident.pid, None)
        if len(self._cache) >= self._max_entries:
            for pid in [p for p in self._cache if not os.path.exists(f"{self.proc_root}/{p}")]:
                del self._cache[pid]
            while len(self._cache) >= self._max_entries:
                del self._cache[next(iter(self._cache))]  # oldest first (dicts keep insertion order)
        self._cache[ident.pid] = ident

    def prune(self, live_pids: Collection[int]) -> int:
        """Forget every cached PID not in `live_pids` (the PIDs NVML reported this tick); returns how many."""
        gone = [pid for pid in self._cache if pid not in live_pids]
        for pid in gone:
            del self._cache[pid]
        return len(gone)
