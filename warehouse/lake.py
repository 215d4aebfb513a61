"""The lake's layout on disk and the only code that writes files into it.

The lake is the source of truth (DESIGN §5): Hive-partitioned, zstd Parquet, every file
written under a temporary name, fsync'd and renamed into place, so a reader sees a file
whole or not at all and a crash leaves at worst a `*.tmp` file that no query globs.

Within one ingest batch the tick file is written last: it is the batch's commit record.
Row files of a batch without its tick file (a crash between the two) are ignored by the
views, and the re-delivered messages land again in a new batch.

The lake may live on an S3-compatible object store (``[lake] path = "s3://bucket/prefix"``,
optionally with ``?endpoint_override=host:port&scheme=http``; credentials from the usual
``AWS_*`` environment). Objects are written through pyarrow's filesystem layer and read by DuckDB
through the same filesystem registered with it (`register`). There is no atomic rename on an
object store, and none is needed: a PUT makes an object appear whole or not at all, every sample
file has a unique name (its batch id), and the tick file, the commit record, is PUT only after
every row file of its batch was acknowledged. A transient store error (connection, throttling,
5xx) is retried with backoff for up to `retry_s`; anything else raises, so the batch's Kafka
offsets are never committed for files that are not there. Ingest, the staging layer's readers, the
rollups, the close, the reports and the dashboards' reads run on an object store; the enforcer and
the janitor stop in one line (`unsupported`).

Every other file of the lake (rollups, their state, the ledger) goes through the file operations
below (`exists`, `glob`, `stat`, `read_bytes`, `read_table`, `write_bytes`, `delete`, `url`),
which are the one place that knows whether the root is a directory or a prefix: locally a write is
temp name + fsync + rename (`write_bytes_atomic`), on a store one PUT (whole or not at all). A
commit record written last (a rollup date's state file, a month's manifest) keeps its meaning: a
reader that finds it finds every object PUT before it. A store has no locks: `lock_file` gives a
file of the local host to `flock` instead, so one host runs the jobs of an object-store lake.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gpuledger.decode import DecodedBatch
from gpuledger.lake_tables import TABLES, table_schema
from warehouse.errors import LakeError

log = logging.getLogger(__name__)

SAMPLES = "samples"
DLQ = "dlq"
TMP_SUFFIX = ".tmp"

DLQ_SCHEMA = pa.schema(
    [
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("key", pa.binary()),
        ("reason", pa.string()),
        ("size", pa.int64()),
        ("payload", pa.binary()),
    ]
)


def new_batch_id() -> int:
    """A 63-bit id ordered by time (ms) with 22 random bits so concurrent ingesters never collide."""
    return ((time.time_ns() // 1_000_000) << 22) | secrets.randbits(22)


REMOTE_SCHEMES = ("s3://",)
# pyarrow's messages for store errors worth another try (network, throttling, server side)
TRANSIENT = (
    "NETWORK_CONNECTION",
    "SLOW_DOWN",
    "THROTTL",
    "SERVICE_UNAVAILABLE",
    "INTERNAL_FAILURE",
    "REQUEST_TIMEOUT",
    "HTTP status 5",
    "Connection reset",
    "Timeout",
    "timed out",
)


def is_remote(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and location.startswith(REMOTE_SCHEMES)


def is_transient(exc: BaseException) -> bool:
    """A store error that may pass by itself (retry), as opposed to a refusal (raise at once)."""
    text = str(exc)
    return isinstance(exc, OSError) and any(t in text for t in TRANSIENT)


class Lake:
    """Paths and atomic writes under one lake root: a local directory or an object-store prefix."""

    def __init__(self, root: str | os.PathLike[str], zstd_level: int = 3, retry_s: float = 120.0) -> None:
        self.zstd_level = zstd_level
        self.retry_s = retry_s  # how long a transient object-store error is retried
        self.location = str(root) if is_remote(root) else str(Path(root))
        self.remote = is_remote(root)
        self.fs: pafs.FileSystem | None = None
        if self.remote:
            try:
                self.fs, base = pafs.FileSystem.from_uri(str(root))
            except (OSError, ValueError, pa.ArrowException) as exc:
                raise LakeError(f"lake {self.location}: {_one_line(exc)}") from exc
            # keys under the store (bucket/prefix/...), never opened as local files
            self.root: Any = PurePosixPath(base.rstrip("/"))
        else:
            self.root = Path(root)

    def url(self, path: PurePath | str) -> str:
        """How DuckDB names a file of the lake (an s3:// URL on an object store)."""
        return f"s3://{path}" if self.remote else str(path)

    def register(self, con: Any) -> None:
        """Let a DuckDB connection read this lake's files (object store: through pyarrow's S3)."""
        if self.remote:
            from fsspec.implementations.arrow import ArrowFSWrapper

            class _S3(ArrowFSWrapper):
                protocol = ("s3",)

            con.register_filesystem(_S3(self.fs))

    def check(self) -> None:
        """Fail at start, in one line naming the lake, when it cannot be written (a bucket that
        does not exist, refused credentials): a probe object is PUT and deleted."""
        if not self.remote:
            return
        probe = str(self.root / "_probe" / f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            with self.fs.open_output_stream(probe) as fh:
                fh.write(b"gpuledger lake probe")
            self.fs.delete_file(probe)
        except OSError as exc:
            raise LakeError(f"lake {self.location} cannot be written: {_one_line(exc)}") from exc

    def list_names(self, directory: PurePath, suffix: str = ".parquet") -> list[str]:
        """Names of the files directly in `directory` ending in `suffix`, sorted (none if absent)."""
        if not self.remote:
            d = Path(directory)
            return sorted(p.name for p in d.glob(f"*{suffix}")) if d.exists() else []
        infos = self._retry(
            lambda: self.fs.get_file_info(pafs.FileSelector(str(directory), allow_not_found=True)),
            f"listing {directory}",
        )
        files = (i for i in infos if i.type == pafs.FileType.File)
        return sorted(i.base_name for i in files if i.base_name.endswith(suffix))

    def sizes(self, directory: PurePath, suffix: str = ".parquet") -> list[tuple[str, int]]:
        """(name, size) of the files directly in `directory` ending in `suffix`, sorted by name."""
        if not self.remote:
            d = Path(directory)
            return [(p.name, p.stat().st_size) for p in sorted(d.glob(f"*{suffix}"))] if d.exists() else []
        infos = self._retry(
            lambda: self.fs.get_file_info(pafs.FileSelector(self._key(directory), allow_not_found=True)),
            f"listing {directory}",
        )
        files = (i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))
        return sorted((i.base_name, int(i.size or 0)) for i in files)

    def list_dirs(self, directory: PurePath) -> list[str]:
        """Names of the folders directly in `directory`, sorted."""
        if not self.remote:
            d = Path(directory)
            return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.exists() else []
        infos = self._retry(
            lambda: self.fs.get_file_info(pafs.FileSelector(str(directory), allow_not_found=True)),
            f"listing {directory}",
        )
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def _retry(self, op: Callable[[], Any], what: str) -> Any:
        """Run a store operation, retrying transient errors with backoff for up to `retry_s`."""
        deadline = time.monotonic() + self.retry_s
        wait = 0.2
        while True:
            try:
                return op()
            except OSError as exc:
                if not is_transient(exc) or time.monotonic() + wait > deadline:
                    raise
                log.warning(
                    "lake %s: %s failed (%s); retrying in %.1f s", self.location, what, _one_line(exc), wait
                )
                time.sleep(wait)
                wait = min(wait * 2, 5.0)

    # -- files of the lake, local or remote -------------------------------------------------------

    def _key(self, path: PurePath | str) -> str:
        """The store key of a lake path or of a URL `url` made (object store only)."""
        text = str(path)
        return text[len("s3://") :] if text.startswith("s3://") else text

    def exists(self, path: PurePath | str) -> bool:
        if not self.remote:
            return Path(path).exists()
        info = self._retry(lambda: self.fs.get_file_info(self._key(path)), f"looking up {path}")
        return info.type != pafs.FileType.NotFound

    def find(self, directory: PurePath, pattern: str) -> list[Any]:
        """Files under `directory` matching `pattern` ("*.parquet", "date=*/*.json"), sorted."""
        if not self.remote:
            d = Path(directory)
            return sorted(p for p in d.glob(pattern) if p.is_file()) if d.exists() else []
        parts = pattern.split("/")
        base = self._key(directory)
        infos = self._retry(
            lambda: self.fs.get_file_info(
                pafs.FileSelector(base, allow_not_found=True, recursive=len(parts) > 1)
            ),
            f"listing {directory}",
        )
        out = []
        for i in infos:
            rel = i.path[len(base) :].lstrip("/").split("/")
            if (
                i.type == pafs.FileType.File
                and len(rel) == len(parts)
                and all(fnmatch.fnmatchcase(a, b) for a, b in zip(rel, parts, strict=True))
            ):
                out.append(PurePosixPath(i.path))
        return sorted(out)

    def stat(self, path: PurePath | str) -> tuple[int, int] | None:
        """(size, mtime in ns) of a file, or None when it is not there."""
        if not self.remote:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return st.st_size, st.st_mtime_ns
        info = self._retry(lambda: self.fs.get_file_info(self._key(path)), f"looking up {path}")
        if info.type != pafs.FileType.File:
            return None
        return int(info.size or 0), int(info.mtime_ns or 0)

    def read_bytes(self, path: PurePath | str) -> bytes:
        """A file's bytes (FileNotFoundError when it is not there, as a local read)."""
        if not self.remote:
            return Path(path).read_bytes()

        def get() -> bytes:
            try:
                with self.fs.open_input_stream(self._key(path)) as fh:
                    return fh.read()
            except FileNotFoundError:
                raise
            except OSError as exc:
                if "NoSuchKey" in str(exc) or "does not exist" in str(exc):
                    raise FileNotFoundError(str(path)) from exc
                raise

        return self._retry(get, f"reading {path}")

    def sha256(self, path: PurePath | str) -> str:
        """A file's SHA-256, read in 1 MiB pieces (rollup files may be large)."""

        def digest() -> str:
            h = hashlib.sha256()
            with open(path, "rb") if not self.remote else self.fs.open_input_stream(self._key(path)) as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            return h.hexdigest()

        return digest() if not self.remote else self._retry(digest, f"reading {path}")

    def read_text(self, path: PurePath | str) -> str:
        return self.read_bytes(path).decode()

    def read_table(self, path: PurePath | str, schema: pa.Schema | None = None) -> pa.Table:
        """One Parquet file of the lake as an Arrow table (read as `schema` when given)."""
        if not self.remote:
            return pq.read_table(path, schema=schema)
        return self._retry(
            lambda: pq.read_table(self._key(path), schema=schema, filesystem=self.fs), f"reading {path}"
        )

    def write_bytes(self, path: PurePath, data: bytes) -> Any:
        """Write a whole file so a reader sees it whole or the previous one: locally temp name,
        fsync, rename (`write_bytes_atomic`); on an object store one acknowledged PUT."""
        if not self.remote:
            return write_bytes_atomic(path, data)

        def put() -> None:
            with self.fs.open_output_stream(self._key(path)) as fh:
                fh.write(data)

        self._retry(put, f"writing {path}")
        return path

    def delete(self, path: PurePath | str) -> None:
        """Remove a file; one that is already gone is not an error."""
        if not self.remote:
            Path(path).unlink(missing_ok=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self._retry(lambda: self.fs.delete_file(self._key(path)), f"deleting {path}")

    def lock_file(self, path: PurePath) -> Path:
        """A local file to `flock` for the lake path `path` (made ready to open): beside the data
        on a local lake, so every process over it shares it; an object store has no locks, so
        there it is a file of this host's temp folder, keyed by the lake (one host's processes
        exclude each other; run one `gpuledger jobs` per object-store lake)."""
        if self.remote:
            tag = hashlib.sha256(self.location.encode()).hexdigest()[:16]
            local = Path(tempfile.gettempdir()) / "gpuledger-locks" / tag / str(path).lstrip("/")
        else:
            local = Path(path)
        local.parent.mkdir(parents=True, exist_ok=True)
        return local

    def unsupported(self, what: str) -> None:
        """Stop, in one line naming the lake, where a part cannot run on an object store yet."""
        if self.remote:
            raise LakeError(f"lake {self.location}: {what} needs a local lake path, not object storage (yet)")

    def table_dir(self, kind: str) -> Path:
        return self.root / SAMPLES / kind

    def glob(self, kind: str) -> str:
        """The glob a DuckDB view reads for one sample table (dates are Hive partitions)."""
        return str(self.table_dir(kind) / "date=*" / "*.parquet")

    def dlq_glob(self) -> str:
        return str(self.root / DLQ / "date=*" / "*.parquet")

    def has_files(self, pattern: str) -> bool:
        base = Path(pattern.split("*", 1)[0].rsplit("/", 1)[0])
        return base.exists() and any(base.rglob("*.parquet"))

    # -- writing ------------------------------------------------------------------------------

    def _parquet(self, table: pa.Table, fh: Any) -> None:
        """The lake's one Parquet form: zstd, 1 Mi-row groups, statistics (DuckDB prunes with them)."""
        pq.write_table(
            table,
            fh,
            compression="zstd",
            compression_level=self.zstd_level,
            row_group_size=1 << 20,
            write_statistics=True,
        )

    def write_file(self, table: pa.Table, path: Path) -> Path:
        """Write one Parquet file atomically and durably (temp name, fsync, rename, fsync dir; on an
        object store one PUT of the whole file, acknowledged before this returns)."""
        if self.remote:

            def put() -> None:
                with self.fs.open_output_stream(str(path)) as fh:
                    self._parquet(table, fh)

            self._retry(put, f"writing {path}")
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + TMP_SUFFIX)
        with open(tmp, "wb") as fh:
            self._parquet(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return path

    def write_batch(self, decoded: DecodedBatch, batch: int) -> list[Path]:
        """Write a decoded batch: row tables first, the tick table (the commit record) last."""
        written: list[Path] = []
        name = f"part-{batch:020d}.parquet"
        for kind in (*[t for t in TABLES if t != "tick"], "tick"):
            table = decoded.tables[kind]
            if table.num_rows == 0:
                continue
            for date, part in _split_by_date(table):
                written.append(self.write_file(part, self.table_dir(kind) / f"date={date}" / name))
        return written

    def write_dlq(self, rows: Iterable[dict[str, object]], batch: int) -> Path | None:
        rows = list(rows)
        if not rows:
            return None
        table = pa.Table.from_pylist(rows, schema=DLQ_SCHEMA)
        last = None
        for date, part in _split_by_date(table, column="received_at"):
            last = self.write_file(part, self.root / DLQ / f"date={date}" / f"dlq-{batch:020d}.parquet")
        return last


def as_lake(lake: Lake | str | os.PathLike[str]) -> Lake:
    """A Lake from a Lake, a local path or an s3:// location (callers take any of them)."""
    return lake if isinstance(lake, Lake) else Lake(lake)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Any file of the lake (ledger, manifests, exports, state): temp name, fsync, rename, fsync dir,
    so a reader sees the whole file or the previous one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _split_by_date(table: pa.Table, column: str = "ts") -> list[tuple[str, pa.Table]]:
    # UTC day of each row; a cast, not strftime (which formats row by row and cost 13 % of ingest).
    dates = table[column].cast(pa.timestamp("us")).cast(pa.date32())
    uniq = sorted(pc.unique(dates).to_pylist())
    if len(uniq) == 1:
        return [(uniq[0].isoformat(), table)]
    return [(d.isoformat(), table.filter(pc.equal(dates, pa.scalar(d, pa.date32())))) for d in uniq]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def schema_of(kind: str) -> pa.Schema:
    """Arrow schema of a lake sample table (re-exported so readers need not know the decoder)."""
    return table_schema(kind)
