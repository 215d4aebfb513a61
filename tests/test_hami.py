"""HAMi shared regions (ABI 1.2) written byte for byte from the DESIGN §7 layout and read back.

`raw_region` below packs a file with struct at the literal DESIGN offsets, independently of
collector.hami's constants, so a wrong offset in either the reader or write_shared_region fails
here instead of agreeing with itself.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
from pathlib import Path

import pytest

from collector.hami import (
    REGION_SIZE,
    HamiProcess,
    HamiRegionError,
    SharedRegion,
    read_shared_region,
    scan_hook_dir,
    update_limits,
    write_shared_region,
)

GPU0 = "GPU-4b8e2f61-0c7d-3a95-b1e4-6f2d9c8a7b30"
GPU1 = "GPU-9a0b1c2d-3e4f-5a6b-7c8d-9e0f1a2b3c4d"
POD = "7c1e4a52-9d3b-4f0e-8a61-2b5f9c7d3e10"
MIB = 1024 * 1024
LOGGER = "gpuledger.collector.hami"


def raw_region(
    *,
    flag: int = 19920718,
    major: int = 1,
    minor: int = 2,
    uuids: list[str],
    limits: list[int],
    sm_limits: list[int],
    procs: list[dict],
    proc_num: int | None = None,
    last_kernel_time: int = 0,
    seqlocks: dict[int, int] | None = None,
) -> bytearray:
    """shared_region_t ABI 1.2 from DESIGN §7, numbers written out."""
    b = bytearray(2_008_952)
    struct.pack_into("<i", b, 0, flag)
    struct.pack_into("<I", b, 4, major)
    struct.pack_into("<I", b, 8, minor)
    struct.pack_into("<Q", b, 56, len(uuids))
    for i, u in enumerate(uuids):
        b[64 + 96 * i : 64 + 96 * i + len(u)] = u.encode()
    for i, v in enumerate(limits):
        struct.pack_into("<Q", b, 1600 + 8 * i, v)
    for i, v in enumerate(sm_limits):
        struct.pack_into("<Q", b, 1728 + 8 * i, v)
    for k, p in enumerate(procs):
        base = 1856 + 1960 * k
        struct.pack_into("<i", b, base + 0, p["pid"])
        struct.pack_into("<i", b, base + 4, p["hostpid"])
        for d, used in enumerate(p["used"]):
            struct.pack_into("<Q", b, base + 8 + 64 * d + 32, used)  # used[d].total
        for d, sm in enumerate(p["sm"]):
            struct.pack_into("<Q", b, base + 1160 + 48 * d + 16, sm)  # device_util[d].sm
        struct.pack_into("<i", b, base + 1928, p["status"])
        struct.pack_into("<Q", b, base + 1936, (seqlocks or {}).get(k, 0))
    struct.pack_into("<i", b, 2_008_896, len(procs) if proc_num is None else proc_num)
    struct.pack_into("<i", b, 2_008_900, 1)  # utilization_switch as HAMi-core initializes it
    struct.pack_into("<i", b, 2_008_904, 2)  # recent_kernel
    struct.pack_into("<i", b, 2_008_908, 1)  # priority
    struct.pack_into("<Q", b, 2_008_912, last_kernel_time)
    return b


TWO_GPU = {
    "uuids": [GPU0, GPU1],
    "limits": [20480 * MIB, 10240 * MIB],
    "sm_limits": [30, 100],
    "procs": [
        {"pid": 41, "hostpid": 120041, "used": [9000 * MIB, 0], "sm": [12, 0], "status": 1},
        {"pid": 0, "hostpid": 0, "used": [777, 777], "sm": [5, 5], "status": 0},  # exited, not compacted
        {"pid": 57, "hostpid": 0, "used": [512 * MIB, 2048 * MIB], "sm": [0, 40], "status": 2},
    ],
    "last_kernel_time": 1_795_767_243,
}


def expected_two_gpu(path: Path) -> SharedRegion:
    return SharedRegion(
        path=str(path),
        pod_uid=POD,
        container="main",
        major=1,
        minor=2,
        uuids=[GPU0, GPU1],
        mem_limit_bytes=[20480 * MIB, 10240 * MIB],
        sm_limit_pct=[30, 100],
        procs=[
            HamiProcess(41, 120041, [9000 * MIB, 0], [12, 0], 1),
            HamiProcess(57, 0, [512 * MIB, 2048 * MIB], [0, 40], 2),
        ],
        last_kernel_time=1_795_767_243,
    )


def container_dir(hook: Path, pod: str = POD, container: str = "main") -> Path:
    d = hook / "containers" / f"{pod}_{container}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_region_size_matches_design():
    assert REGION_SIZE == 2_008_952


def test_raw_file_reads_back_exactly(tmp_path):
    path = container_dir(tmp_path) / f"{GPU0}.cache"
    path.write_bytes(raw_region(**TWO_GPU))
    assert read_shared_region(path) == expected_two_gpu(path)


def test_hami_core_sized_file_with_trailing_byte_is_read(tmp_path):
    # HAMi-core sizes a new file by writing one NUL at offset sizeof(shared_region_t).
    path = container_dir(tmp_path) / "a.cache"
    path.write_bytes(bytes(raw_region(**TWO_GPU)) + b"\0")
    assert os.path.getsize(path) == 2_008_953
    assert read_shared_region(path) == expected_two_gpu(path)


def test_writer_is_byte_identical_to_the_layout(tmp_path):
    path = container_dir(tmp_path) / "w.cache"
    write_shared_region(path, expected_two_gpu(path))
    # The writer compacts nothing: the exited slot is not in SharedRegion, so compare with a raw
    # region that has only the live slots.
    live = dict(TWO_GPU, procs=[TWO_GPU["procs"][0], TWO_GPU["procs"][2]])
    assert path.read_bytes() == bytes(raw_region(**live))
    assert read_shared_region(path) == expected_two_gpu(path)
    assert [p.name for p in path.parent.iterdir()] == ["w.cache"]  # no temp file left behind


def test_sixteen_devices_and_many_processes_round_trip(tmp_path):
    uuids = [f"GPU-{i:08x}-0000-4000-8000-{i:012x}" for i in range(16)]
    procs = [
        HamiProcess(
            i + 1, 100_000 + i, [(i * 16 + d) * MIB for d in range(16)], [(i + d) % 101 for d in range(16)], 1
        )
        for i in range(1024)
    ]
    region = SharedRegion(
        "",
        POD,
        "main",
        1,
        2,
        uuids,
        [(d + 1) * 1024 * MIB for d in range(16)],
        [d * 5 for d in range(16)],
        procs,
        7,
    )
    path = container_dir(tmp_path) / "big.cache"
    write_shared_region(path, region)
    got = read_shared_region(path)
    region.path = str(path)
    assert got == region


def test_seqlock_held_by_a_writer_still_returns(tmp_path):
    # A slot whose seqlock stays odd (writer died mid-update) is re-read a bounded number of times.
    path = container_dir(tmp_path) / "s.cache"
    path.write_bytes(raw_region(**TWO_GPU, seqlocks={0: 7}))
    assert read_shared_region(path).procs[0] == HamiProcess(41, 120041, [9000 * MIB, 0], [12, 0], 1)


def test_directory_name_without_container_part(tmp_path):
    d = tmp_path / "plain"
    d.mkdir()
    path = d / "x.cache"
    path.write_bytes(raw_region(**TWO_GPU))
    got = read_shared_region(path)
    assert (got.pod_uid, got.container) == ("", "")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b, None),
        (lambda b: b[:-1000], "size 2007952 bytes, expected 2008952 (HAMi ABI 1.2)"),
        (lambda b: b"", "empty file (0 bytes), expected 2008952"),
        (lambda b: b + b"\0\0", "size 2008954 bytes"),
        (lambda b: struct.pack("<i", 1234) + b[4:], "initialized_flag 1234, expected 19920718"),
        (lambda b: b[:4] + struct.pack("<II", 1, 1) + b[12:], "ABI version 1.1, this reader supports 1.2"),
        (lambda b: b[:4] + struct.pack("<II", 2, 2) + b[12:], "ABI version 2.2"),
        (lambda b: b[:56] + struct.pack("<Q", 17) + b[64:], "device_num 17, at most 16"),
        (
            lambda b: b[:2_008_896] + struct.pack("<i", 1025) + b[2_008_900:],
            "proc_num 1025, expected 0 to 1024",
        ),
        (lambda b: b[:2_008_896] + struct.pack("<i", -1) + b[2_008_900:], "proc_num -1"),
        (lambda b: b[:64] + b"\xff\xfe" + b[66:], "uuids[0] is not ASCII text"),
    ],
    ids=[
        "good",
        "truncated",
        "empty",
        "too-long",
        "magic",
        "v1.1",
        "v2.2",
        "devices",
        "procs",
        "negative",
        "uuid",
    ],
)
def test_bad_files_raise_naming_file_and_problem(tmp_path, mutate, message):
    path = container_dir(tmp_path) / "bad.cache"
    path.write_bytes(mutate(bytes(raw_region(**TWO_GPU))))
    if message is None:
        assert read_shared_region(path) == expected_two_gpu(path)
        return
    with pytest.raises(HamiRegionError) as e:
        read_shared_region(path)
    assert str(e.value).startswith(f"{path}: ")
    assert message in str(e.value)


def test_scan_skips_bad_files_with_one_log_line_each(tmp_path, caplog):
    hook = tmp_path / "vgpu"
    good = bytes(raw_region(**TWO_GPU))
    one = container_dir(hook, POD, "main") / f"{GPU0}.cache"
    one.write_bytes(good)
    other_pod = "0f5b2a7e-3c1d-4b8e-9a6f-2d4c8e1b7a90"
    two = container_dir(hook, other_pod, "server") / f"{GPU1}.cache"
    two.write_bytes(good)
    bad_dir = container_dir(hook, "5a105e8b-9d40-4e13-92c6-b3a8e1c4f7d2", "eval")
    bad = {
        "magic.cache": struct.pack("<i", 42) + good[4:],
        "version.cache": good[:4] + struct.pack("<II", 1, 3) + good[12:],
        "truncated.cache": good[:1_000_000],
        "empty.cache": b"",
    }
    for name, data in bad.items():
        (bad_dir / name).write_bytes(data)
    (bad_dir / "notes.txt").write_text("not a region")
    (hook / "containers" / "stray.cache").write_bytes(b"x")  # not in a container directory

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        regions = scan_hook_dir(hook)
    assert [(r.pod_uid, r.container, r.path) for r in regions] == [
        (other_pod, "server", str(two)),
        (POD, "main", str(one)),
    ]
    lines = sorted(rec.getMessage() for rec in caplog.records if rec.name == LOGGER)
    skip = f"skipping HAMi shared region: {bad_dir}"
    assert lines == [
        f"{skip}/empty.cache: empty file (0 bytes), expected 2008952 (HAMi ABI 1.2)",
        f"{skip}/magic.cache: initialized_flag 42, expected 19920718 (not an initialized region)",
        f"{skip}/truncated.cache: size 1000000 bytes, expected 2008952 (HAMi ABI 1.2)",
        f"{skip}/version.cache: ABI version 1.3, this reader supports 1.2",
    ]

    # Every later tick: same files, same states, no new lines.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            assert len(scan_hook_dir(hook)) == 2
    assert caplog.records == []

    # A bad file that changes is reported again (once); one that is repaired is read.
    (bad_dir / "magic.cache").write_bytes(struct.pack("<i", 43) + good[4:])
    st = (bad_dir / "magic.cache").stat()
    os.utime(bad_dir / "magic.cache", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    (bad_dir / "empty.cache").write_bytes(good)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        regions = scan_hook_dir(hook)
        scan_hook_dir(hook)
    assert len(regions) == 3
    assert [rec.getMessage() for rec in caplog.records] == [
        f"skipping HAMi shared region: {bad_dir / 'magic.cache'}: initialized_flag 43, expected 19920718 "
        "(not an initialized region)"
    ]

    # A file that breaks again after having been good is reported again.
    caplog.clear()
    (bad_dir / "empty.cache").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert len(scan_hook_dir(hook)) == 2
    assert len(caplog.records) == 1 and "empty.cache: empty file" in caplog.records[0].getMessage()


def test_scan_missing_hook_dir(tmp_path):
    assert scan_hook_dir(tmp_path / "absent") == []


def test_update_limits_in_place_is_seen_through_a_live_mapping(tmp_path):
    path = container_dir(tmp_path) / "live.cache"
    path.write_bytes(raw_region(**TWO_GPU))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as live:
        update_limits(path, 1, mem_limit_bytes=6144 * MIB, sm_limit_pct=50)
        # What a running HAMi-core process (which keeps the file mapped) sees:
        assert struct.unpack_from("<Q", live, 1600 + 8)[0] == 6144 * MIB
        assert struct.unpack_from("<Q", live, 1728 + 8)[0] == 50
        assert struct.unpack_from("<Q", live, 1600)[0] == 20480 * MIB
    got = read_shared_region(path)
    assert (got.mem_limit_bytes, got.sm_limit_pct) == ([20480 * MIB, 6144 * MIB], [30, 50])
    with pytest.raises(HamiRegionError, match=r"device index 2 outside 0\.\.1"):
        update_limits(path, 2, mem_limit_bytes=1)
    with pytest.raises(ValueError, match="sm_limit_pct 101"):
        update_limits(path, 0, sm_limit_pct=101)
    path.write_bytes(b"")
    with pytest.raises(HamiRegionError, match="empty file"):
        update_limits(path, 0, mem_limit_bytes=1)


def test_writer_rejects_impossible_regions(tmp_path):
    path = tmp_path / "x.cache"
    base = expected_two_gpu(path)
    with pytest.raises(ValueError, match="2 uuids but 1 mem_limit_bytes"):
        write_shared_region(path, SharedRegion(**{**base.__dict__, "mem_limit_bytes": [1]}))
    with pytest.raises(ValueError, match="17 devices, at most 16"):
        write_shared_region(path, SharedRegion(**{**base.__dict__, "uuids": ["GPU-x"] * 17}))
    with pytest.raises(ValueError, match="uuids\\[0\\] is 96 bytes"):
        write_shared_region(path, SharedRegion(**{**base.__dict__, "uuids": ["G" * 96, GPU1]}))
    assert not path.exists()


def _scan_bounded(hook: Path, timeout_s: float = 10.0) -> list[SharedRegion]:
    """scan_hook_dir in a daemon thread: a hang fails the test instead of hanging the run."""
    out: list[list[SharedRegion]] = []
    t = threading.Thread(target=lambda: out.append(scan_hook_dir(hook)), daemon=True)
    t.start()
    t.join(timeout_s)
    assert not t.is_alive(), f"scan_hook_dir({hook}) still blocked after {timeout_s} s"
    return out[0]


def test_tenant_planted_fifo_link_and_directory_are_skipped_without_blocking(tmp_path, caplog):
    """A tenant writes its own container directory: nothing it puts there may hang or redirect us."""
    from collector import hami

    hook = tmp_path / "vgpu"
    good = bytes(raw_region(**TWO_GPU))
    ok = container_dir(hook, POD, "main") / f"{GPU0}.cache"
    ok.write_bytes(good)
    evil = container_dir(hook, "5a105e8b-9d40-4e13-92c6-b3a8e1c4f7d2", "evil")
    os.mkfifo(evil / "fifo.cache")  # open(O_RDONLY) of a FIFO with no writer blocks forever
    host_file = tmp_path / "host-secret"
    host_file.write_bytes(good)  # a valid region outside the hook dir: a link must not reach it
    (evil / "link.cache").symlink_to(host_file)
    (evil / "dir.cache").mkdir()
    (evil / "dangling.cache").symlink_to(tmp_path / "nowhere")
    before = hami.skipped_files_total()

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        regions = _scan_bounded(hook)
    assert [r.path for r in regions] == [str(ok)]
    lines = sorted(rec.getMessage() for rec in caplog.records if rec.name == LOGGER)
    skip = f"skipping HAMi shared region: {evil}"
    assert lines == [
        f"{skip}/dangling.cache: is a symbolic link; not followed",
        f"{skip}/dir.cache: not a regular file (directory)",
        f"{skip}/fifo.cache: not a regular file (FIFO)",
        f"{skip}/link.cache: is a symbolic link; not followed",
    ]
    assert hami.skipped_files_total() - before == 4

    # Later ticks: the same files in the same states cost no log line and no count.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            assert len(_scan_bounded(hook)) == 1
    assert caplog.records == []
    assert hami.skipped_files_total() - before == 4


def test_update_limits_refuses_fifo_and_link(tmp_path):
    """The enforcer writes caps in the tenant's directory: a FIFO or link there must not hang it."""
    d = container_dir(tmp_path)
    os.mkfifo(d / "fifo.cache")
    target = tmp_path / "host-file"
    target.write_bytes(raw_region(**TWO_GPU))
    (d / "link.cache").symlink_to(target)
    errors: list[BaseException] = []

    def attempt(name: str) -> None:
        try:
            update_limits(d / name, 0, mem_limit_bytes=1)
        except BaseException as e:
            errors.append(e)

    for name in ("fifo.cache", "link.cache"):
        t = threading.Thread(target=attempt, args=(name,), daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), f"update_limits on {name} blocked"
    assert [type(e) for e in errors] == [HamiRegionError, HamiRegionError]
    assert "FIFO" in str(errors[0]) and "symbolic link" in str(errors[1])
    assert target.read_bytes() == bytes(raw_region(**TWO_GPU))  # the link's target is untouched
