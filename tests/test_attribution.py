"""Host PID -> container / pod / Slurm job / user, and pod UID -> workload through the resolvers.

Proc trees are built in tmp_path with the exact shapes the kernel writes (stat, status, cgroup,
environ); cgroup texts cover every runtime x driver x cgroup-version combination the agent meets.
The Kubernetes resolver talks HTTP to a loopback server answering with a recorded-shape PodList.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import kubernetes
import pytest

from collector.hami_annotation import VgpuGrant, parse_vgpu_allocation
from collector.pod_resolvers import (
    KubernetesResolver,
    NullResolver,
    ResolverError,
    StaticFileResolver,
    Workload,
    make_resolver,
)
from collector.proc_identity import (
    ProcAttributor,
    ProcessIdentity,
    canonical_pod_uid,
    parse_cgroup,
    parse_start_time,
)

FIXTURES = Path(__file__).parent / "fixtures"


def cid(name: str) -> str:
    """A 64-hex container id, distinct per name (as the runtimes make them: sha256-sized)."""
    return hashlib.sha256(name.encode()).hexdigest()


POD = "0f5b2a7e-3c1d-4b8e-9a6f-2d4c8e1b7a90"
POD_ = POD.replace("-", "_")  # the systemd driver's spelling inside slice names

V1_CONTROLLERS = [
    "misc",
    "rdma",
    "pids",
    "hugetlb",
    "net_cls,net_prio",
    "cpu,cpuacct",
    "blkio",
    "memory",
    "devices",
    "freezer",
    "cpuset",
    "perf_event",
    "name=systemd",
]


def v1(path: str, *, hybrid: bool = False, systemd_path: str | None = None) -> str:
    """A cgroup v1 file: one hierarchy per controller line (several controllers share some), same path."""
    lines = []
    for i, ctrl in enumerate(V1_CONTROLLERS):
        p = systemd_path if (ctrl == "name=systemd" and systemd_path) else path
        lines.append(f"{len(V1_CONTROLLERS) - i}:{ctrl}:{p}")
    if hybrid:
        lines.append("0::/")
    return "\n".join(lines) + "\n"


def v2(path: str) -> str:
    return f"0::{path}\n"


# (case id, cgroup text, container id, pod uid, slurm job)
CGROUP_CASES = [
    # containerd
    (
        "containerd-systemd-v2",
        v2(
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
            f"cri-containerd-{cid('ctrd-sd-v2')}.scope"
        ),
        cid("ctrd-sd-v2"),
        POD,
        None,
    ),
    (
        "containerd-cgroupfs-v2",
        v2(f"/kubepods/burstable/pod{POD}/{cid('ctrd-fs-v2')}"),
        cid("ctrd-fs-v2"),
        POD,
        None,
    ),
    (
        "containerd-systemd-v1",
        v1(
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/"
            f"cri-containerd-{cid('ctrd-sd-v1')}.scope",
            hybrid=True,
        ),
        cid("ctrd-sd-v1"),
        POD,
        None,
    ),
    (
        "containerd-systemd-v1-service-nesting",
        v1(
            f"/system.slice/containerd.service/kubepods-burstable-pod{POD_}.slice:cri-containerd:"
            f"{cid('ctrd-colon')}"
        ),
        cid("ctrd-colon"),
        POD,
        None,
    ),
    (
        "containerd-cgroupfs-v1",
        v1(f"/kubepods/besteffort/pod{POD}/{cid('ctrd-fs-v1')}"),
        cid("ctrd-fs-v1"),
        POD,
        None,
    ),
    (
        "containerd-kind-nested-v2",
        v2(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
            f"kubelet-kubepods-besteffort-pod{POD_}.slice/cri-containerd-{cid('kind')}.scope"
        ),
        cid("kind"),
        POD,
        None,
    ),
    # CRI-O
    (
        "crio-systemd-v2-guaranteed",
        v2(f"/kubepods.slice/kubepods-pod{POD_}.slice/crio-{cid('crio-sd-v2')}.scope"),
        cid("crio-sd-v2"),
        POD,
        None,
    ),
    (
        "crio-systemd-v1",
        v1(
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
            f"crio-{cid('crio-sd-v1')}.scope"
        ),
        cid("crio-sd-v1"),
        POD,
        None,
    ),
    (
        "crio-cgroupfs-v2",
        v2(f"/kubepods/burstable/pod{POD}/crio-{cid('crio-fs-v2')}"),
        cid("crio-fs-v2"),
        POD,
        None,
    ),
    (
        "crio-cgroupfs-v1",
        v1(f"/kubepods/pod{POD}/crio-{cid('crio-fs-v1')}"),
        cid("crio-fs-v1"),
        POD,
        None,
    ),
    (
        "crio-conmon-is-not-the-container",
        v2(f"/kubepods.slice/kubepods-pod{POD_}.slice/crio-conmon-{cid('conmon')}.scope"),
        None,
        POD,
        None,
    ),
    # Docker (standalone, and as a Kubernetes runtime through cri-dockerd)
    (
        "docker-systemd-v2",
        v2(f"/system.slice/docker-{cid('dock-sd-v2')}.scope"),
        cid("dock-sd-v2"),
        None,
        None,
    ),
    (
        "docker-systemd-v1",
        v1(f"/system.slice/docker-{cid('dock-sd-v1')}.scope"),
        cid("dock-sd-v1"),
        None,
        None,
    ),
    (
        "docker-cgroupfs-v2",
        v2(f"/docker/{cid('dock-fs-v2')}"),
        cid("dock-fs-v2"),
        None,
        None,
    ),
    (
        "docker-cgroupfs-v1",
        v1(f"/docker/{cid('dock-fs-v1')}"),
        cid("dock-fs-v1"),
        None,
        None,
    ),
    (
        "docker-in-docker-innermost-wins",
        v2(f"/docker/{cid('outer')}/docker/{cid('inner')}"),
        cid("inner"),
        None,
        None,
    ),
    (
        "docker-kubernetes-systemd-v1",
        v1(
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
            f"docker-{cid('dock-k8s')}.scope"
        ),
        cid("dock-k8s"),
        POD,
        None,
    ),
    (
        "docker-kubernetes-cgroupfs-v1",
        v1(f"/kubepods/burstable/pod{POD}/{cid('dock-k8s-fs')}"),
        cid("dock-k8s-fs"),
        POD,
        None,
    ),
    # Slurm
    ("slurm-v2", v2("/system.slice/slurmstepd.scope/job_123/step_0/user/task_0"), None, None, "123"),
    (
        "slurm-v1",
        v1("/slurm/uid_1000/job_4242/step_batch/task_0", systemd_path="/system.slice/slurmd.service"),
        None,
        None,
        "4242",
    ),
    ("slurm-v2-extern-step", v2("/system.slice/slurmstepd.scope/job_77/step_extern/user"), None, None, "77"),
    # Not a container
    ("host-v2", v2("/user.slice/user-1000.slice/session-3.scope"), None, None, None),
    ("host-v1", v1("/user.slice/user-1000.slice/session-3.scope", hybrid=True), None, None, None),
    ("root-cgroup-ns", v2("/"), None, None, None),
    ("garbage", "\x00\ufffd not a cgroup file\n:::\n12:\njob_12 pod1234\n", None, None, None),
]


@pytest.mark.parametrize(
    ("text", "container", "pod", "job"), [c[1:] for c in CGROUP_CASES], ids=[c[0] for c in CGROUP_CASES]
)
def test_parse_cgroup_every_runtime_and_driver(text, container, pod, job):
    got = parse_cgroup(text)
    assert (got.container_id, got.pod_uid, got.job_id) == (container, pod, job)


def test_canonical_pod_uid():
    assert canonical_pod_uid(POD_) == POD
    assert canonical_pod_uid(POD.upper()) == POD
    assert canonical_pod_uid(POD.replace("-", "")) == POD
    assert canonical_pod_uid("0f5b2a7e-3c1d-4b8e-9a6f") is None
    assert canonical_pod_uid("zz5b2a7e-3c1d-4b8e-9a6f-2d4c8e1b7a90") is None


# ---------------------------------------------------------------------------------------------------
# proc trees


def stat_line(pid: int, comm: str, start: int) -> bytes:
    # Fields 3.. of a real /proc/<pid>/stat; field 22 (starttime) is `start`.
    rest = (
        f"S 1 {pid} {pid} 0 -1 4194560 1234 0 0 0 150 30 0 0 20 0 12 0 {start} 8589934592 524288 "
        "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0"
    )
    return f"{pid} ({comm}) {rest}\n".encode()


def make_proc(
    root: Path,
    pid: int,
    *,
    cgroup: str | bytes = "0::/user.slice/user-1000.slice/session-3.scope\n",
    start: int = 4_000_000,
    comm: str = "python3",
    uid: int = 1000,
    environ: dict[str, str] | None = None,
) -> Path:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_bytes(stat_line(pid, comm, start))
    (d / "cgroup").write_bytes(cgroup if isinstance(cgroup, bytes) else cgroup.encode())
    (d / "status").write_text(
        f"Name:\t{comm[:15]}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\nNgid:\t0\nPid:\t{pid}\n"
        f"PPid:\t1\nTracerPid:\t0\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
        "FDSize:\t64\nGroups:\t\nVmPeak:\t  123456 kB\nThreads:\t12\n"
    )
    env = environ or {"PATH": "/usr/bin", "HOME": "/home/alice"}
    (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
    return d


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    p = tmp_path / "passwd"
    p.write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "# a comment line\n"
        "broken line without fields\n"
        "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
        "alice2:x:1000:1000:duplicate uid, first wins:/home/alice2:/bin/bash\n"
        "slurm:x:64030:64030::/var/lib/slurm:/usr/sbin/nologin\n"
    )
    return p


class CountingAttributor(ProcAttributor):
    """Counts file reads, the cost the (pid, start time) cache exists to avoid."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.reads: list[str] = []

    def _read(self, path: str) -> bytes:
        self.reads.append(path.rsplit("/", 1)[1])
        return super()._read(path)


def test_start_time_survives_comm_with_spaces_and_parens():
    line = stat_line(4242, "(sd-pam) x) y", 987654321)
    assert parse_start_time(line) == 987654321
    with pytest.raises(ValueError, match="no '\\)'"):
        parse_start_time(b"4242 python3 S 1")
    with pytest.raises(ValueError, match="fields"):
        parse_start_time(b"4242 (python3) S 1 2 3")


def test_identify_every_fixture_through_proc_tree(tmp_path, passwd):
    proc = tmp_path / "proc"
    for pid, (_, text, *_rest) in enumerate(CGROUP_CASES, start=100):
        make_proc(proc, pid, cgroup=text)
    att = ProcAttributor(str(proc), str(passwd))
    for pid, (name, _text, container, pod, job) in enumerate(CGROUP_CASES, start=100):
        ident = att.identify(pid)
        assert ident == ProcessIdentity(pid, 4_000_000, container, pod, job, None, "alice"), name


def test_garbage_bytes_in_cgroup_file(tmp_path, passwd):
    proc = tmp_path / "proc"
    make_proc(proc, 7, cgroup=b"\xff\xfe\x00\x01binary\nrubbish:\n")
    ident = ProcAttributor(str(proc), str(passwd)).identify(7)
    assert ident == ProcessIdentity(7, 4_000_000, None, None, None, None, "alice")


def test_slurm_account_from_environ_and_user(tmp_path, passwd):
    proc = tmp_path / "proc"
    make_proc(
        proc,
        31337,
        cgroup=v2("/system.slice/slurmstepd.scope/job_123/step_0/user/task_0"),
        uid=64030,
        environ={"SLURM_JOB_ID": "123", "SLURM_JOB_ACCOUNT": "physics", "SLURM_JOB_USER": "slurm"},
    )
    ident = ProcAttributor(str(proc), str(passwd)).identify(31337)
    assert ident == ProcessIdentity(31337, 4_000_000, None, None, "123", "physics", "slurm")


def test_environ_read_only_for_slurm_jobs(tmp_path, passwd):
    proc = tmp_path / "proc"
    make_proc(proc, 10, environ={"SLURM_JOB_ACCOUNT": "should-not-be-read"})
    att = CountingAttributor(str(proc), str(passwd))
    assert att.identify(10).account is None
    assert att.reads == ["stat", "cgroup", "status", "stat"]


def test_unreadable_environ_keeps_identity(tmp_path, passwd):
    class NoEnviron(ProcAttributor):
        def _read(self, path: str) -> bytes:
            if path.endswith("/environ"):
                raise PermissionError(13, "Permission denied", path)
            return super()._read(path)

    proc = tmp_path / "proc"
    make_proc(proc, 11, cgroup=v2("/slurm/uid_1000/job_9/step_0"), environ={"SLURM_JOB_ACCOUNT": "x"})
    assert NoEnviron(str(proc), str(passwd)).identify(11) == ProcessIdentity(
        11, 4_000_000, None, None, "9", None, "alice"
    )


def test_unreadable_stat_is_none_with_one_warning(tmp_path, passwd, caplog):
    class HiddenPids(ProcAttributor):
        def _read(self, path: str) -> bytes:
            raise PermissionError(13, "Permission denied", path)

    proc = tmp_path / "proc"
    make_proc(proc, 12)
    make_proc(proc, 13)
    att = HiddenPids(str(proc), str(passwd))
    with caplog.at_level(logging.WARNING, logger="gpuledger.collector.attribution"):
        assert att.identify(12) is None
        assert att.identify(13) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot read {proc}/12/stat: [Errno 13] Permission denied: '{proc}/12/stat'; "
        "such processes stay unattributed"
    ]


def test_user_mapping_unknown_uid_missing_file_and_reload(tmp_path, passwd):
    proc = tmp_path / "proc"
    make_proc(proc, 1, uid=0)
    make_proc(proc, 2, uid=4242)
    att = ProcAttributor(str(proc), str(passwd))
    assert att.identify(1).user == "root"
    assert att.identify(2).user == "uid:4242"
    # A user added to the passwd file is seen for identities read after the change.
    passwd.write_text(passwd.read_text() + "bob:x:4242:4242::/home/bob:/bin/bash\n")
    st = passwd.stat()
    os.utime(passwd, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    make_proc(proc, 3, uid=4242)
    assert att.identify(3).user == "bob"
    assert ProcAttributor(str(proc), str(tmp_path / "no-such-passwd")).identify(1).user == "uid:0"


def test_cached_on_pid_and_start_time(tmp_path, passwd):
    proc = tmp_path / "proc"
    make_proc(proc, 500, cgroup=v2(f"/kubepods/burstable/pod{POD}/{cid('first')}"), start=111)
    att = CountingAttributor(str(proc), str(passwd))
    first = att.identify(500)
    assert first.container_id == cid("first")
    assert att.reads == ["stat", "cgroup", "status", "stat"]
    att.reads.clear()
    for _ in range(5):
        assert att.identify(500) is first
    assert att.reads == ["stat"] * 5  # one small read per lookup while the process lives

    # The PID is reused by a new process (new start time, different container): read afresh.
    make_proc(proc, 500, cgroup=v2(f"/docker/{cid('second')}"), start=222, uid=0)
    att.reads.clear()
    second = att.identify(500)
    assert second == ProcessIdentity(500, 222, cid("second"), None, None, None, "root")
    assert att.reads == ["stat", "cgroup", "status", "stat"]


def test_pid_reused_while_being_read_is_read_again(tmp_path, passwd):
    proc = tmp_path / "proc"
    make_proc(proc, 600, cgroup=v2(f"/docker/{cid('dying')}"), start=1000)

    class ReuseMidRead(CountingAttributor):
        swapped = False

        def _read(self, path: str) -> bytes:
            data = super()._read(path)
            if path.endswith("/cgroup") and not self.swapped:
                self.swapped = True  # the old process exits, a new one gets the PID
                make_proc(proc, 600, cgroup=v2(f"/docker/{cid('newcomer')}"), start=2000)
            return data

    att = ReuseMidRead(str(proc), str(passwd))
    ident = att.identify(600)
    assert ident == ProcessIdentity(600, 2000, cid("newcomer"), None, None, None, "alice")
    assert att.reads == ["stat", "cgroup", "status", "stat", "stat", "cgroup", "status", "stat"]


def test_vanished_pid_and_vanishing_mid_read(tmp_path, passwd):
    proc = tmp_path / "proc"
    proc.mkdir()
    att = ProcAttributor(str(proc), str(passwd))
    assert att.identify(99999) is None

    d = make_proc(proc, 700)

    class VanishMidRead(ProcAttributor):
        def _read(self, path: str) -> bytes:
            if path.endswith("/cgroup"):
                shutil.rmtree(d)
            return super()._read(path)

    assert VanishMidRead(str(proc), str(passwd)).identify(700) is None

    # A cached PID that exits is dropped from the cache on its next lookup.
    make_proc(proc, 701)
    assert att.identify(701) is not None and len(att) == 1
    shutil.rmtree(proc / "701")
    assert att.identify(701) is None
    assert len(att) == 0


def test_cache_is_bounded_and_prunable(tmp_path, passwd):
    proc = tmp_path / "proc"
    for pid in range(1, 6):
        make_proc(proc, pid)
    att = ProcAttributor(str(proc), str(passwd), max_entries=3)
    for pid in (1, 2, 3):
        att.identify(pid)
    shutil.rmtree(proc / "1")  # exited: the first to go when the cache is full
    att.identify(4)
    assert sorted(att._cache) == [2, 3, 4]
    att.identify(5)  # nothing exited: the oldest entry goes
    assert sorted(att._cache) == [3, 4, 5]
    assert att.prune({4, 99}) == 2
    assert sorted(att._cache) == [4]


def test_real_proc_self(tmp_path):
    """This very process, through the real /proc: start time as the kernel reports it, our user."""
    att = ProcAttributor("/proc", "/etc/passwd")
    ident = att.identify(os.getpid())
    assert ident is not None
    with open(f"/proc/{os.getpid()}/stat", "rb") as f:
        assert ident.start_time == int(f.read().rsplit(b")", 1)[1].split()[19])
    try:
        expected_user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        expected_user = f"uid:{os.getuid()}"
    assert ident.user == expected_user


# ---------------------------------------------------------------------------------------------------
# resolvers


def write_static(path: Path, doc: object) -> None:
    path.write_text(json.dumps(doc))


STATIC = {
    POD: {
        "namespace": "ml-vision",
        "pod": "train-resnet-0",
        "labels": {"team": "vision"},
        "annotations": {"hami.io/vgpu-devices-allocated": "GPU-aaa,NVIDIA,20480,30:;"},
        "containers": {f"containerd://{cid('main')}": "main", cid("sidecar"): "log-shipper"},
    }
}


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_null_resolver():
    assert NullResolver().resolve(POD, cid("x")) is None


def test_static_file_resolver(tmp_path):
    path = tmp_path / "workloads.json"
    write_static(path, STATIC)
    r = StaticFileResolver(path)
    assert r.resolve(POD_, cid("main")) == Workload(
        "ml-vision",
        "train-resnet-0",
        "main",
        POD,
        {"team": "vision"},
        {"hami.io/vgpu-devices-allocated": "GPU-aaa,NVIDIA,20480,30:;"},
    )
    assert r.resolve(POD, f"containerd://{cid('sidecar')}").container == "log-shipper"
    assert r.resolve(POD).container is None
    assert r.resolve(POD, cid("unknown")).container is None
    assert r.resolve("7c1e4a52-9d3b-4f0e-8a61-2b5f9c7d3e10") is None
    assert r.resolve("not-a-uid") is None


def test_static_file_reloads_on_mtime_change_and_keeps_last_good(tmp_path, caplog):
    path = tmp_path / "workloads.json"
    write_static(path, STATIC)
    clock = FakeClock()
    r = StaticFileResolver(path, check_interval_s=2.0, clock=clock)
    changed = json.loads(json.dumps(STATIC))
    changed[POD]["namespace"] = "ml-vision-prod"
    write_static(path, changed)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    clock.t += 1.0
    assert r.resolve(POD).namespace == "ml-vision"  # not re-checked within the interval
    clock.t += 1.5
    assert r.resolve(POD).namespace == "ml-vision-prod"

    path.write_text("{ broken")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    clock.t += 3
    with caplog.at_level(logging.ERROR, logger="gpuledger.collector.attribution"):
        assert r.resolve(POD).namespace == "ml-vision-prod"
        clock.t += 3
        assert r.resolve(POD).namespace == "ml-vision-prod"
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1  # one line per bad file version, not one per check
    assert str(path) in errors[0] and "not valid JSON" in errors[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{ nope", "not valid JSON"),
        ("[1, 2]", "expected an object mapping pod UID"),
        (json.dumps({"train-0": {}}), "key 'train-0' is not a pod UID"),
        (json.dumps({POD: []}), f"pod {POD} must be an object, got list"),
        (
            json.dumps({POD: {"labels": {"team": 3}}}),
            f"pod {POD}.labels must be an object of string to string",
        ),
        (json.dumps({POD: {"containers": ["main"]}}), f"pod {POD}.containers must be an object"),
        (json.dumps({POD: {"namespace": 5}}), f"pod {POD}.namespace must be a string"),
        (json.dumps({POD: {"nmespace": "x"}}), "unknown keys ['nmespace']"),
    ],
    ids=["json", "toplevel", "uid", "entry", "labels", "containers", "namespace", "typo"],
)
def test_static_file_bad_file_names_file_and_problem(tmp_path, content, message):
    path = tmp_path / "workloads.json"
    path.write_text(content)
    with pytest.raises(ResolverError) as e:
        StaticFileResolver(path)
    assert str(e.value).startswith(f"{path}: ")
    assert message in str(e.value)


def test_static_file_missing(tmp_path):
    with pytest.raises(ResolverError, match="cannot read the static workload file"):
        StaticFileResolver(tmp_path / "absent.json")


def test_make_resolver(tmp_path):
    assert isinstance(make_resolver("none", "", "n1"), NullResolver)
    path = tmp_path / "w.json"
    write_static(path, STATIC)
    assert isinstance(make_resolver("file", str(path), "n1"), StaticFileResolver)
    with pytest.raises(ResolverError, match=r"needs collector\.resolver_file"):
        make_resolver("file", "", "n1")
    with pytest.raises(ResolverError, match="'k8s': expected one of kubernetes, file, none"):
        make_resolver("k8s", "", "n1")
    # Outside a cluster the in-cluster config is missing: the client's own error says so.
    env = {
        k: os.environ.pop(k)
        for k in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
        if k in os.environ
    }
    try:
        with pytest.raises(kubernetes.config.ConfigException):
            make_resolver("kubernetes", "", "n1")
    finally:
        os.environ.update(env)


# --- Kubernetes API over loopback HTTP


PODS_JSON = (FIXTURES / "k8s" / "pods.json").read_bytes()
TRAIN_UID = "7c1e4a52-9d3b-4f0e-8a61-2b5f9c7d3e10"
SERVE_UID = "0f5b2a7e-3c1d-4b8e-9a6f-2d4c8e1b7a90"
PENDING_UID = "5a105e8b-9d40-4e13-92c6-b3a8e1c4f7d2"


@pytest.fixture
def api_server():
    state = SimpleNamespace(body=PODS_JSON, status=200, requests=[])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests.append(self.path)
            body = state.body if state.status == 200 else b'{"kind":"Status","status":"Failure","code":500}'
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def k8s_resolver(state, clock, **kw) -> KubernetesResolver:
    client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=state.host))
    return KubernetesResolver("gpu-node-7", api_client=client, clock=clock, request_timeout_s=5, **kw)


def test_kubernetes_resolver_lists_this_node_and_maps_containers(api_server):
    r = k8s_resolver(api_server, FakeClock())
    w = r.resolve(TRAIN_UID, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert w == Workload(
        namespace="ml-vision",
        pod="train-resnet-0",
        container="main",
        pod_uid=TRAIN_UID,
        labels={
            "app": "train-resnet",
            "team": "vision",
            "controller-revision-hash": "train-resnet-6b9f7d8c5c",
            "statefulset.kubernetes.io/pod-name": "train-resnet-0",
        },
        annotations={
            "hami.io/bind-phase": "success",
            "hami.io/bind-time": "1795767243",
            "hami.io/vgpu-devices-allocated": "GPU-4b8e2f61-0c7d-3a95-b1e4-6f2d9c8a7b30,NVIDIA,20480,30:;;",
            "hami.io/vgpu-devices-to-allocate": ";;",
            "hami.io/vgpu-node": "gpu-node-7",
            "hami.io/vgpu-time": "1795767243",
            "kubectl.kubernetes.io/default-container": "main",
        },
    )
    assert len(api_server.requests) == 1
    url = urlsplit(api_server.requests[0])
    assert url.path == "/api/v1/pods"
    assert parse_qs(url.query) == {"fieldSelector": ["spec.nodeName=gpu-node-7"], "resourceVersion": ["0"]}

    # Served from the cache: other pods, other containers, the pod's sidecar.
    assert r.resolve(TRAIN_UID.replace("-", "_")).pod == "train-resnet-0"
    sidecar = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
    assert r.resolve(TRAIN_UID, sidecar).container == "log-shipper"
    assert r.resolve(
        SERVE_UID, "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
    ).container == ("tokenizer")
    pending = r.resolve(PENDING_UID)
    assert (pending.namespace, pending.pod, pending.container) == ("ml-vision", "eval-job-7h2kd", None)
    assert len(api_server.requests) == 1
    assert r.api_calls == 1

    grants = parse_vgpu_allocation(w.annotations["hami.io/vgpu-devices-allocated"])
    assert grants == [[VgpuGrant("GPU-4b8e2f61-0c7d-3a95-b1e4-6f2d9c8a7b30", "NVIDIA", 20480, 30)], []]


def test_kubernetes_resolver_ttl_and_miss_refresh_are_bounded(api_server):
    clock = FakeClock()
    r = k8s_resolver(api_server, clock, ttl_s=60, min_refresh_interval_s=10)
    assert r.resolve(TRAIN_UID).pod == "train-resnet-0"
    assert r.api_calls == 1

    # A burst of unknown pods and containers (e.g. 400 processes of a pod that just started): one call.
    unknown = "11111111-2222-4333-8444-555555555555"
    clock.t += 1  # right after a list: a miss waits for the refresh interval
    assert r.resolve(unknown) is None
    assert r.api_calls == 1
    clock.t += 9
    for i in range(400):
        assert r.resolve(unknown, cid(f"c{i}")) is None
        assert r.resolve(TRAIN_UID, cid(f"restarted-{i}")).container is None
    assert r.api_calls == 2
    clock.t += 5  # still inside the refresh interval
    assert r.resolve(unknown) is None
    assert r.api_calls == 2
    clock.t += 5  # interval over: a miss may refresh again, and the pod has appeared meanwhile
    body = json.loads(PODS_JSON)
    new_pod = json.loads(json.dumps(body["items"][2]))
    new_pod["metadata"].update(uid=unknown, name="fresh-0", namespace="batch")
    body["items"].append(new_pod)
    api_server.body = json.dumps(body).encode()
    assert r.resolve(unknown).pod == "fresh-0"
    assert r.api_calls == 3

    # Known pods: no call until the TTL runs out, then one.
    clock.t += 59
    for _ in range(100):
        r.resolve(TRAIN_UID)
    assert r.api_calls == 3
    clock.t += 1
    r.resolve(TRAIN_UID)
    r.resolve(TRAIN_UID)
    assert r.api_calls == 4
    assert len(api_server.requests) == 4


def test_kubernetes_resolver_keeps_last_list_when_api_fails(api_server, caplog):
    clock = FakeClock()
    r = k8s_resolver(api_server, clock, ttl_s=60, min_refresh_interval_s=10)
    assert r.resolve(TRAIN_UID).pod == "train-resnet-0"
    api_server.status = 500
    clock.t += 61
    with caplog.at_level(logging.WARNING, logger="gpuledger.collector.attribution"):
        for _ in range(50):
            assert r.resolve(TRAIN_UID).pod == "train-resnet-0"
    assert r.api_calls == 2
    warnings = [rec.getMessage() for rec in caplog.records if rec.name == "gpuledger.collector.attribution"]
    assert len(warnings) == 1
    assert "listing pods on node gpu-node-7 from the Kubernetes API failed" in warnings[0]
    assert "500" in warnings[0]


def test_kubernetes_resolver_unreachable_api_does_not_raise(caplog):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}")
    cfg.retries = False
    r = KubernetesResolver("gpu-node-7", api_client=kubernetes.client.ApiClient(cfg), request_timeout_s=2)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="gpuledger.collector.attribution"):
        assert r.resolve(TRAIN_UID) is None
        assert r.resolve(TRAIN_UID) is None
    assert time.monotonic() - t0 < 5
    assert r.api_calls == 1
    assert len(caplog.records) == 1


def test_kubernetes_resolver_cri_o_and_docker_container_ids(api_server):
    body = json.loads(PODS_JSON)
    statuses = body["items"][1]["status"]["containerStatuses"]
    statuses[0]["containerID"] = f"cri-o://{cid('crio-server')}"
    statuses[1]["containerID"] = f"docker://{cid('docker-tok')}"
    api_server.body = json.dumps(body).encode()
    r = k8s_resolver(api_server, FakeClock())
    assert r.resolve(SERVE_UID, cid("crio-server")).container == "server"
    assert r.resolve(SERVE_UID, cid("docker-tok")).container == "tokenizer"


# ---------------------------------------------------------------------------------------------------
# HAMi allocation annotation


def test_parse_vgpu_allocation():
    a, b = "GPU-9a0b1c2d-3e4f-5a6b-7c8d-9e0f1a2b3c4d", "GPU-5d6e7f80-91a2-b3c4-d5e6-f708192a3b4c"
    text = f"{a},NVIDIA,10240,25:{b},NVIDIA,10240,25:;{a},NVIDIA,4096,0:;"
    assert parse_vgpu_allocation(text) == [
        [VgpuGrant(a, "NVIDIA", 10240, 25), VgpuGrant(b, "NVIDIA", 10240, 25)],
        [VgpuGrant(a, "NVIDIA", 4096, 0)],
    ]
    # Containers without a GPU keep their place; only the terminating ';' is dropped.
    assert parse_vgpu_allocation(f";{a},NVIDIA,1024,10:;;") == [[], [VgpuGrant(a, "NVIDIA", 1024, 10)], []]
    assert parse_vgpu_allocation(f"{a},NVIDIA,1024,10") == [[VgpuGrant(a, "NVIDIA", 1024, 10)]]
    assert parse_vgpu_allocation(f"{a},NVIDIA,1024,10::") == [[VgpuGrant(a, "NVIDIA", 1024, 10)]]
    assert parse_vgpu_allocation("") == []
    assert parse_vgpu_allocation(";") == [[]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "GPU-a,NVIDIA,1024:;",
            "container 0 device 'GPU-a,NVIDIA,1024': expected UUID,vendor,memMiB,cores, got 3",
        ),
        (
            ";GPU-a,NVIDIA,lots,10:;",
            "container 1 device 'GPU-a,NVIDIA,lots,10': memMiB and cores must be integers",
        ),
        (
            "GPU-a,NVIDIA,1024,150:;",
            "container 0 device 'GPU-a,NVIDIA,1024,150': memMiB must be >= 0 and cores 0-100",
        ),
        (",NVIDIA,1024,10:;", "empty UUID or vendor"),
    ],
)
def test_parse_vgpu_allocation_bad_text_names_the_piece(text, message):
    with pytest.raises(ValueError) as e:
        parse_vgpu_allocation(text)
    assert str(e.value).startswith("hami.io/vgpu-devices-allocated: ")
    assert message in str(e.value)


def test_fifo_and_link_in_proc_tree_do_not_block_identify(tmp_path, passwd):
    """A FIFO or link in place of a proc file (copied or bind-mounted proc_root) never blocks the tick."""
    import threading

    proc = tmp_path / "proc"
    d = make_proc(proc, 31)
    (d / "cgroup").unlink()
    os.mkfifo(d / "cgroup")
    d2 = make_proc(proc, 32)
    (d2 / "stat").unlink()
    (d2 / "stat").symlink_to(d / "stat")
    att = ProcAttributor(str(proc), str(passwd))
    got: dict[int, object] = {}
    t = threading.Thread(target=lambda: got.update({p: att.identify(p) for p in (31, 32)}), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "identify blocked on a FIFO in the proc tree"
    assert got == {31: ProcessIdentity(31, 4_000_000, None, None, None, None, "alice"), 32: None}
