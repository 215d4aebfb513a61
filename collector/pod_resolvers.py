"""Pod UID -> namespace, pod, container name, labels and annotations, from a pluggable resolver: the
Kubernetes API (one list of this node's pods, cached with a TTL, refreshed on a miss at most once
per interval) or a static JSON file (for tests, air-gapped nodes and non-Kubernetes sites).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from collector.proc_identity import canonical_pod_uid

log = logging.getLogger("gpuledger.collector.attribution")


@dataclass(frozen=True)
class Workload:
    namespace: str | None
    pod: str | None
    container: str | None
    pod_uid: str | None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)  # HAMi's allocation annotation lives here


class WorkloadResolver(Protocol):
    def resolve(self, pod_uid: str, container_id: str | None = None) -> Workload | None: ...


class ResolverError(ValueError):
    """A resolver source that cannot be used; the message names the source and what is wrong."""


def normalize_container_id(container_id: str) -> str:
    """`containerd://<id>`, `cri-o://<id>`, `docker://<id>` (the API's spelling) -> `<id>` (the cgroup's)."""
    _, sep, rest = container_id.partition("://")
    return (rest if sep else container_id).strip().lower()


@dataclass(frozen=True)
class _Pod:
    namespace: str | None
    name: str | None
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]
    containers: dict[str, str]  # container id -> container name

    def workload(self, container_id: str | None) -> Workload:
        name = self.containers.get(normalize_container_id(container_id)) if container_id else None
        return Workload(self.namespace, self.name, name, self.uid, self.labels, self.annotations)


class NullResolver:
    """No source of workload names: processes keep their container id and pod UID only."""

    def resolve(self, pod_uid: str, container_id: str | None = None) -> Workload | None:
        return None


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ResolverError(f"{where} must be an object of string to string, got {json.dumps(value)[:80]}")
    return dict(value)


def _opt_str(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ResolverError(f"{where} must be a string, got {json.dumps(value)[:80]}")
    return value


def _load_static(path: Path) -> dict[str, _Pod]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ResolverError(f"{path}: cannot read the static workload file: {e.strerror or e}") from e
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResolverError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ResolverError(
            f"{path}: expected an object mapping pod UID -> "
            f"{{namespace, pod, labels, annotations, containers}}, got {type(doc).__name__}"
        )
    pods: dict[str, _Pod] = {}
    for key, entry in doc.items():
        uid = canonical_pod_uid(key)
        if uid is None:
            raise ResolverError(f"{path}: key {key!r} is not a pod UID (a UUID such as 8f2c6b1e-...)")
        where = f"{path}: pod {key}"
        if not isinstance(entry, dict):
            raise ResolverError(f"{where} must be an object, got {type(entry).__name__}")
        unknown = set(entry) - {"namespace", "pod", "labels", "annotations", "containers"}
        if unknown:
            raise ResolverError(f"{where} has unknown keys {sorted(unknown)}")
        containers = _str_map(entry.get("containers"), f"{where}.containers")
        pods[uid] = _Pod(
            namespace=_opt_str(entry.get("namespace"), f"{where}.namespace"),
            name=_opt_str(entry.get("pod"), f"{where}.pod"),
            uid=uid,
            labels=_str_map(entry.get("labels"), f"{where}.labels"),
            annotations=_str_map(entry.get("annotations"), f"{where}.annotations"),
            containers={normalize_container_id(k): v for k, v in containers.items()},
        )
    return pods


class StaticFileResolver:
    """Pod UID -> workload from a JSON file, re-read when its mtime or size changes.

    Format: {"<pod uid>": {"namespace": str, "pod": str, "labels": {..}, "annotations": {..},
    "containers": {"<container id>": "<name>"}}}. A bad file at start raises ResolverError; a bad
    edit later keeps the last good contents and logs one error per file version, so a typo in the
    file never stops the agent.
    """

    def __init__(
        self, path: str | Path, *, check_interval_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = Path(path)
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._stamp = self._file_stamp()
        self._pods = _load_static(self.path)
        self._checked_at = clock()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload(self) -> None:
        """Read the file now; raises ResolverError (and keeps the old contents) when it is bad."""
        stamp = self._file_stamp()
        self._stamp = stamp
        self._pods = _load_static(self.path)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked_at < self._check_interval_s:
            return
        self._checked_at = now
        if self._file_stamp() == self._stamp:
            return
        try:
            self.reload()
        except ResolverError as e:
            log.error("%s; keeping the previous contents", e)

    def resolve(self, pod_uid: str, container_id: str | None = None) -> Workload | None:
        self._maybe_reload()
        uid = canonical_pod_uid(pod_uid)
        pod = self._pods.get(uid) if uid else None
        return pod.workload(container_id) if pod else None


def _pod_from_api(item: Mapping[str, Any]) -> _Pod | None:
    meta = item.get("metadata") or {}
    uid = canonical_pod_uid(str(meta.get("uid") or ""))
    if uid is None:
        return None
    status = item.get("status") or {}
    containers: dict[str, str] = {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            cid, name = cs.get("containerID"), cs.get("name")
            if isinstance(cid, str) and cid and isinstance(name, str):
                containers[normalize_container_id(cid)] = name
    return _Pod(
        namespace=meta.get("namespace"),
        name=meta.get("name"),
        uid=uid,
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        containers=containers,
    )


class KubernetesResolver:
    """Pod UID -> workload from the API server: one list of this node's pods, cached.

    The list (field selector spec.nodeName=<node>, resourceVersion=0 so the API server answers from
    its watch cache, not etcd) is refreshed when it is older than `ttl_s`, or when a pod UID or
    container id is not in it (a pod that just started); either way at most once per
    `min_refresh_interval_s`, so a node full of unknown PIDs cannot storm the API server. When the
    API fails, the last good list is kept and one warning is logged per failed attempt.
    """

    def __init__(
        self,
        node_name: str,
        *,
        api_client: Any = None,
        ttl_s: float = 60.0,
        min_refresh_interval_s: float = 10.0,
        request_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not node_name:
            raise ValueError(
                "KubernetesResolver needs the node name (collector.node) to list this node's pods"
            )
        import kubernetes  # imported here: the agent on a Slurm or bare-metal node never needs it

        if api_client is None:
            kubernetes.config.load_incluster_config()
            api_client = kubernetes.client.ApiClient()
        self.node_name = node_name
        self._api = kubernetes.client.CoreV1Api(api_client)
        self._ttl_s = ttl_s
        self._min_refresh_interval_s = min_refresh_interval_s
        self._timeout_s = request_timeout_s
        self._clock = clock
        self._pods: dict[str, _Pod] = {}
        self._loaded_at: float | None = None
        self._attempted_at: float | None = None
        self.api_calls = 0  # list requests sent (tests and the exporter read it)

    def _refresh(self, now: float) -> None:
        self._attempted_at = now
        self.api_calls += 1
        try:
            resp = self._api.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.node_name}",
                resource_version="0",
                _preload_content=False,
                _request_timeout=self._timeout_s,
            )
            try:
                doc = json.loads(resp.data)
            finally:
                resp.release_conn()
            items = doc.get("items") if isinstance(doc, dict) else None
            if not isinstance(items, list):
                raise ValueError(f"expected a PodList with items, got {str(doc)[:120]}")
        except Exception as e:  # API errors, refused connections, timeouts, bad bodies: keep the old list
            log.warning("listing pods on node %s from the Kubernetes API failed: %s", self.node_name, e)
            return
        pods = {}
        for item in items:
            pod = _pod_from_api(item) if isinstance(item, dict) else None
            if pod is not None:
                pods[pod.uid] = pod
        self._pods, self._loaded_at = pods, now

    def resolve(self, pod_uid: str, container_id: str | None = None) -> Workload | None:
        uid = canonical_pod_uid(pod_uid)
        if uid is None:
            return None
        now = self._clock()
        pod = self._pods.get(uid)
        stale = self._loaded_at is None or now - self._loaded_at >= self._ttl_s
        miss = pod is None or (
            container_id is not None and normalize_container_id(container_id) not in pod.containers
        )
        may = self._attempted_at is None or now - self._attempted_at >= self._min_refresh_interval_s
        if (stale or miss) and may:
            self._refresh(now)
            pod = self._pods.get(uid)
        return pod.workload(container_id) if pod else None


def make_resolver(kind: str, path: str, node: str) -> WorkloadResolver:
    """The resolver named in collector config: "kubernetes" (in-cluster), "file" (static JSON), "none"."""
    if kind == "none":
        return NullResolver()
    if kind == "file":
        if not path:
            raise ResolverError("collector.resolver = file needs collector.resolver_file (a JSON file path)")
        return StaticFileResolver(path)
    if kind == "kubernetes":
        return KubernetesResolver(node)
    raise ResolverError(f"collector.resolver = {kind!r}: expected one of kubernetes, file, none")
