"""HAMi vGPU shared regions: what each container was granted and what its processes use right now.

HAMi-core (the CUDA hook injected into every vGPU container) keeps one mmapped file per container,
`<hook>/containers/<podUID>_<container>/<name>.cache`, holding `shared_region_t`. This module reads
ABI 1.2 of that struct (HAMi-core's MAJOR_VERSION 1, MINOR_VERSION 2) at fixed little-endian offsets
(DESIGN §7) with pread: only the header, the live process slots and the tail are copied, never
the whole 2 MB. Anything else (wrong size, magic or version) is refused, because guessing a layout would
bill memory that was never used.

Semantics taken from HAMi-core:
- Live process slots are `procs[0:proc_num]`. A process that exits sets its slot's pid to 0 and
  the slot is compacted away later by the next process that joins, so slots with pid 0 are
  skipped. A slot whose hostpid is still 0 (HAMi-core has not yet matched the container PID to a
  host PID through NVML) is kept: its memory is real, it just cannot be joined to an NVML PID.
- Each slot has a seqlock (odd while a writer is mid-update); a slot is re-read a few times until
  the count is even and unchanged around the read, then the last read is used.
- HAMi-core sizes the file by writing one NUL byte at offset sizeof(shared_region_t), so real files
  are 2,008,953 bytes; the struct itself (and what write_shared_region writes) is 2,008,952.
- `limit[]` is re-read by HAMi-core on every allocation; `sm_limit[]` only when a process starts.
  Changing limits must happen in place (update_limits): HAMi-core keeps the file mapped, so a
  replaced file (rename) would never be seen by running processes.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger("gpuledger.collector.hami")

MAGIC = 19920718
MAJOR_VERSION = 1
MINOR_VERSION = 2
REGION_SIZE = 2_008_952  # sizeof(shared_region_t), ABI 1.2
ACCEPTED_FILE_SIZES = (REGION_SIZE, REGION_SIZE + 1)  # + HAMi-core's sizing byte
MAX_DEVICES = 16
MAX_PROCS = 1024
UUID_LEN = 96

# shared_region_t
OFF_INITIALIZED_FLAG = 0  # i32
OFF_MAJOR = 4  # u32
OFF_MINOR = 8  # u32
OFF_DEVICE_NUM = 56  # u64
OFF_UUIDS = 64  # char[16][96]
OFF_LIMIT = 1600  # u64[16], bytes
OFF_SM_LIMIT = 1728  # u64[16], percent
OFF_PROCS = 1856  # shrreg_proc_slot_t[1024]
OFF_PROC_NUM = 2_008_896  # i32
OFF_UTILIZATION_SWITCH = 2_008_900  # i32
OFF_RECENT_KERNEL = 2_008_904  # i32
OFF_PRIORITY = 2_008_908  # i32
OFF_LAST_KERNEL_TIME = 2_008_912  # u64, unix seconds
# shrreg_proc_slot_t
PROC_SIZE = 1960
P_PID = 0  # i32
P_HOSTPID = 4  # i32
P_USED = 8  # device_memory_t[16]: context, module, data, offset, total (u64), unused[3]
USED_SIZE = 64
USED_TOTAL = 32
P_MONITORUSED = 1032  # u64[16]
P_DEVICE_UTIL = 1160  # device_util_t[16]: dec, enc, sm (u64), unused[3]
UTIL_SIZE = 48
UTIL_SM = 16
P_STATUS = 1928  # i32: 1 running, 2 suspended (HAMi's SIGUSR2 swap), 0 exited
P_SEQLOCK = 1936  # u64

assert OFF_PROCS + MAX_PROCS * PROC_SIZE == OFF_PROC_NUM
assert OFF_LAST_KERNEL_TIME + 8 + 32 == REGION_SIZE  # then sem_t sem_postinit (32 bytes)
assert P_USED + MAX_DEVICES * USED_SIZE == P_MONITORUSED
assert P_DEVICE_UTIL + MAX_DEVICES * UTIL_SIZE == P_STATUS

# What HAMi-core puts in the fields this reader does not expose when it creates a region.
_INIT_UTILIZATION_SWITCH = 1
_INIT_RECENT_KERNEL = 2
_INIT_PRIORITY = 1
_SEQLOCK_READS = 4

_HEADER = struct.Struct("<iII")
_U64 = struct.Struct("<Q")
_I32 = struct.Struct("<i")
_PID_PAIR = struct.Struct("<ii")


@lru_cache(maxsize=MAX_DEVICES + 1)
def _used_totals(n: int) -> struct.Struct:
    return struct.Struct("<" + "32xQ24x" * n)  # used[i].total of n device_memory_t


@lru_cache(maxsize=MAX_DEVICES + 1)
def _sm_utils(n: int) -> struct.Struct:
    return struct.Struct("<" + "16xQ24x" * n)  # device_util[i].sm of n device_util_t


@dataclass
class HamiProcess:
    pid: int  # PID inside the container
    hostpid: int  # host PID (what NVML reports); 0 until HAMi-core has matched it
    used_bytes: list[int]  # per device index: used[i].total
    sm_util: list[int]  # per device index: device_util[i].sm
    status: int


@dataclass
class SharedRegion:
    path: str
    pod_uid: str  # from the directory name <podUID>_<container>; "" when the name has no "_"
    container: str
    major: int
    minor: int
    uuids: list[str]  # device_num entries
    mem_limit_bytes: list[int]  # limit[i]
    sm_limit_pct: list[int]  # sm_limit[i]
    procs: list[HamiProcess]  # live slots of procs[0:proc_num]
    last_kernel_time: int  # unix seconds (0 = never)


class HamiRegionError(ValueError):
    """A file that is not a readable ABI 1.2 shared region; the message names the file and what is wrong."""


def _owner_from_dir(path: Path) -> tuple[str, str]:
    pod_uid, sep, container = path.parent.name.partition("_")
    return (pod_uid, container) if sep else ("", "")


def _check_header(path: Path, head: bytes, size: int) -> tuple[int, int]:
    if size == 0:
        raise HamiRegionError(f"{path}: empty file (0 bytes), expected {REGION_SIZE} (HAMi ABI 1.2)")
    if size not in ACCEPTED_FILE_SIZES:
        raise HamiRegionError(f"{path}: size {size} bytes, expected {REGION_SIZE} (HAMi ABI 1.2)")
    flag, major, minor = _HEADER.unpack_from(head, OFF_INITIALIZED_FLAG)
    if flag != MAGIC:
        raise HamiRegionError(
            f"{path}: initialized_flag {flag}, expected {MAGIC} (not an initialized region)"
        )
    if (major, minor) != (MAJOR_VERSION, MINOR_VERSION):
        raise HamiRegionError(
            f"{path}: ABI version {major}.{minor}, this reader supports {MAJOR_VERSION}.{MINOR_VERSION}"
        )
    return major, minor


def _pread_exact(path: Path, fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise HamiRegionError(f"{path}: truncated while reading ({len(data)} of {length} bytes at {offset})")
    return data


def _slot(raw: bytes, at: int, n: int) -> HamiProcess:
    pid, hostpid = _PID_PAIR.unpack_from(raw, at + P_PID)
    used = list(_used_totals(n).unpack_from(raw, at + P_USED))
    sm = list(_sm_utils(n).unpack_from(raw, at + P_DEVICE_UTIL))
    (status,) = _I32.unpack_from(raw, at + P_STATUS)
    return HamiProcess(pid, hostpid, used, sm, status)


def _read_slots(path: Path, fd: int, proc_num: int, n: int) -> list[HamiProcess]:
    """The live slots of procs[0:proc_num], each a consistent seqlock snapshot where one can be had.

    One pread copies all live slots; a slot whose seqlock was odd (writer inside) or has moved since
    is read again on its own, a bounded number of times, and the last read is used.
    """
    block = _pread_exact(path, fd, proc_num * PROC_SIZE, OFF_PROCS)
    procs = []
    for i in range(proc_num):
        raw, at = block, i * PROC_SIZE
        if _I32.unpack_from(raw, at + P_PID)[0] == 0:
            continue  # exited; awaiting HAMi-core's lazy compaction
        for _ in range(_SEQLOCK_READS):
            (seq,) = _U64.unpack_from(raw, at + P_SEQLOCK)
            now = _pread_exact(path, fd, 8, OFF_PROCS + i * PROC_SIZE + P_SEQLOCK)
            if not seq & 1 and _U64.unpack(now)[0] == seq:
                break
            raw, at = _pread_exact(path, fd, PROC_SIZE, OFF_PROCS + i * PROC_SIZE), 0
        proc = _slot(raw, at, n)
        if proc.pid != 0:
            procs.append(proc)
    return procs


def _open_region(path: Path, flags: int) -> int:
    """An fd on `path` that is certainly a regular file of an accepted size, else HamiRegionError.

    The directory is writable by the tenant's container, so the name may be anything: a FIFO
    (a plain open() blocks the agent forever and the whole node goes dark), a device, a socket,
    or a symbolic link to a host file. O_NOFOLLOW refuses links, O_NONBLOCK keeps a FIFO or
    device from blocking the open, and fstat on the opened fd (not the name, which can be
    swapped between a check and the open) decides what it is.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise HamiRegionError(f"{path}: is a symbolic link; not followed") from e
        if e.errno == errno.ENXIO:  # a FIFO with no writer refuses O_WRONLY/O_RDWR opens so
            raise HamiRegionError(f"{path}: not a regular file (FIFO)") from e
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HamiRegionError(f"{path}: not a regular file ({_file_kind(st.st_mode)})")
        if st.st_size not in ACCEPTED_FILE_SIZES:
            _check_header(path, b"", st.st_size)  # raises, naming the size
    except BaseException:
        os.close(fd)
        raise
    return fd


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return f"mode {oct(stat.S_IFMT(mode))}"


def read_shared_region(path: str | Path) -> SharedRegion:
    """Read one region file; raises HamiRegionError for a file that is not ABI 1.2, OSError if unreadable.

    Reads with pread, not mmap: the file lives in a directory the tenant's container can write, and
    a file truncated under a mapping would kill the agent with SIGBUS. Only the header, the live
    slots and the tail are copied. It is opened through `_open_region`, so a FIFO, device, socket
    or symbolic link planted under a `.cache` name is refused instead of hanging or redirecting
    the agent.
    """
    path = Path(path)
    fd = _open_region(path, os.O_RDONLY)
    with os.fdopen(fd, "rb", buffering=0):
        size = os.fstat(fd).st_size
        if size not in ACCEPTED_FILE_SIZES:
            _check_header(path, b"", size)  # raises, naming the size
        head = _pread_exact(path, fd, OFF_PROCS, 0)
        major, minor = _check_header(path, head, size)
        (device_num,) = _U64.unpack_from(head, OFF_DEVICE_NUM)
        if device_num > MAX_DEVICES:
            raise HamiRegionError(f"{path}: device_num {device_num}, at most {MAX_DEVICES}")
        tail = _pread_exact(path, fd, OFF_LAST_KERNEL_TIME + 8 - OFF_PROC_NUM, OFF_PROC_NUM)
        (proc_num,) = _I32.unpack_from(tail, 0)
        if not 0 <= proc_num <= MAX_PROCS:
            raise HamiRegionError(f"{path}: proc_num {proc_num}, expected 0 to {MAX_PROCS}")
        (last_kernel,) = _U64.unpack_from(tail, OFF_LAST_KERNEL_TIME - OFF_PROC_NUM)
        n = int(device_num)
        uuids = []
        for i in range(n):
            raw = head[OFF_UUIDS + i * UUID_LEN : OFF_UUIDS + (i + 1) * UUID_LEN]
            try:
                uuids.append(raw.split(b"\0", 1)[0].decode("ascii"))
            except UnicodeDecodeError as e:
                raise HamiRegionError(f"{path}: uuids[{i}] is not ASCII text") from e
        limits = list(struct.unpack_from(f"<{n}Q", head, OFF_LIMIT))
        sm_limits = list(struct.unpack_from(f"<{n}Q", head, OFF_SM_LIMIT))
        procs = _read_slots(path, fd, proc_num, n)
    pod_uid, container = _owner_from_dir(path)
    return SharedRegion(
        str(path), pod_uid, container, major, minor, uuids, limits, sm_limits, procs, last_kernel
    )


# Per hook dir: path -> (mtime_ns, size) of files already reported as skipped, so each bad file
# state costs one log line, not one per tick. Rebuilt on every scan, so it only holds current files.
_skipped: dict[str, dict[str, tuple[int, int, int]]] = {}
_skipped_lock = threading.Lock()


# Every skip of a bad file state since the agent started (the exporter's counter): a tenant
# planting FIFOs or links shows up here even though the log says it once.
_skip_events = 0


def skipped_files_total() -> int:
    """How many (file, state) pairs were skipped since start: one per log line, never per tick."""
    return _skip_events


def _file_state(path: Path) -> tuple[int, int, int]:
    try:
        st = path.lstat()  # never follow: a link is judged as the link
    except OSError:
        return (0, 0, -1)
    return (st.st_mode, st.st_mtime_ns, st.st_size)


def scan_hook_dir(hook_dir: str | Path) -> list[SharedRegion]:
    """Every readable region under `<hook_dir>/containers/*/*.cache`, in path order.

    A bad file (wrong layout, or not a regular file at all: FIFO, link, device, directory) is
    skipped with one warning and one count per (path, type, mtime, size) state; a file that
    disappears between listing and reading (container gone) is skipped silently.
    """
    global _skip_events
    key = str(hook_dir)
    base = Path(hook_dir) / "containers"
    with _skipped_lock:
        before = _skipped.get(key, {})
    after: dict[str, tuple[int, int, int]] = {}
    new_skips = 0
    regions = []
    for path in sorted(base.glob("*/*.cache")):
        try:
            regions.append(read_shared_region(path))
            continue
        except FileNotFoundError:
            continue
        except (HamiRegionError, OSError) as e:
            reason = str(e) if isinstance(e, HamiRegionError) else f"{path}: cannot read: {e.strerror or e}"
        state = _file_state(path)
        after[str(path)] = state
        if before.get(str(path)) != state:
            new_skips += 1
            log.warning("skipping HAMi shared region: %s", reason)
    with _skipped_lock:
        _skipped[key] = after
        _skip_events += new_skips
    return regions


def _pack(region: SharedRegion) -> bytearray:
    n = len(region.uuids)
    if n > MAX_DEVICES:
        raise ValueError(f"{n} devices, at most {MAX_DEVICES}")
    if len(region.mem_limit_bytes) != n or len(region.sm_limit_pct) != n:
        raise ValueError(
            f"{n} uuids but {len(region.mem_limit_bytes)} mem_limit_bytes "
            f"and {len(region.sm_limit_pct)} sm_limit_pct"
        )
    if len(region.procs) > MAX_PROCS:
        raise ValueError(f"{len(region.procs)} processes, at most {MAX_PROCS}")
    buf = bytearray(REGION_SIZE)
    _HEADER.pack_into(buf, OFF_INITIALIZED_FLAG, MAGIC, region.major, region.minor)
    _U64.pack_into(buf, OFF_DEVICE_NUM, n)
    for i, uuid in enumerate(region.uuids):
        raw = uuid.encode("ascii")
        if len(raw) >= UUID_LEN:
            raise ValueError(f"uuids[{i}] is {len(raw)} bytes, at most {UUID_LEN - 1}")
        buf[OFF_UUIDS + i * UUID_LEN : OFF_UUIDS + i * UUID_LEN + len(raw)] = raw
    struct.pack_into(f"<{n}Q", buf, OFF_LIMIT, *region.mem_limit_bytes)
    struct.pack_into(f"<{n}Q", buf, OFF_SM_LIMIT, *region.sm_limit_pct)
    for i, p in enumerate(region.procs):
        if len(p.used_bytes) > MAX_DEVICES or len(p.sm_util) > MAX_DEVICES:
            raise ValueError(f"procs[{i}] has values for more than {MAX_DEVICES} devices")
        base = OFF_PROCS + i * PROC_SIZE
        _PID_PAIR.pack_into(buf, base + P_PID, p.pid, p.hostpid)
        for d, used in enumerate(p.used_bytes):
            _U64.pack_into(buf, base + P_USED + d * USED_SIZE + USED_TOTAL, used)
        for d, sm in enumerate(p.sm_util):
            _U64.pack_into(buf, base + P_DEVICE_UTIL + d * UTIL_SIZE + UTIL_SM, sm)
        _I32.pack_into(buf, base + P_STATUS, p.status)
    struct.pack_into(
        "<iiii",
        buf,
        OFF_PROC_NUM,
        len(region.procs),
        _INIT_UTILIZATION_SWITCH,
        _INIT_RECENT_KERNEL,
        _INIT_PRIORITY,
    )
    _U64.pack_into(buf, OFF_LAST_KERNEL_TIME, region.last_kernel_time)
    return buf


def write_shared_region(path: str | Path, region: SharedRegion) -> None:
    """Write `region` as a new ABI 1.2 file, byte for byte (temp file + fsync + rename).

    For fixtures and simulations only: a file HAMi-core already has mapped must be changed in place
    with update_limits. major/minor are written as given (tests build wrong-version files with it);
    the fields SharedRegion does not carry get HAMi-core's initial values.
    """
    path = Path(path)
    buf = _pack(region)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(buf)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def update_limits(
    path: str | Path,
    device_index: int,
    *,
    mem_limit_bytes: int | None = None,
    sm_limit_pct: int | None = None,
) -> None:
    """Change one device's limits inside a live region file, in place, where HAMi-core sees them.

    A memory limit takes effect at the container's next allocation; an SM limit only for processes
    started after the change (HAMi-core reads sm_limit[] once per process).
    """
    path = Path(path)
    fd = _open_region(path, os.O_RDWR)  # the tenant can plant a FIFO or link here too
    with os.fdopen(fd, "r+b", buffering=0):
        size = os.fstat(fd).st_size
        head = _pread_exact(path, fd, OFF_DEVICE_NUM + 8, 0)
        _check_header(path, head, size)
        (device_num,) = _U64.unpack_from(head, OFF_DEVICE_NUM)
        if not 0 <= device_index < min(device_num, MAX_DEVICES):
            raise HamiRegionError(f"{path}: device index {device_index} outside 0..{device_num - 1}")
        if mem_limit_bytes is not None:
            os.pwrite(fd, _U64.pack(mem_limit_bytes), OFF_LIMIT + 8 * device_index)
        if sm_limit_pct is not None:
            if not 0 <= sm_limit_pct <= 100:
                raise ValueError(f"sm_limit_pct {sm_limit_pct}: expected 0-100")
            os.pwrite(fd, _U64.pack(sm_limit_pct), OFF_SM_LIMIT + 8 * device_index)
        os.fsync(fd)
