"""What crashed writes leave in the lake, and its removal (`gpuledger jobs`, job ``janitor``).

Two kinds of leftovers, both invisible to queries (DESIGN §5) but taking disk for ever:

- ``*.tmp`` files anywhere under the lake: a write that died between opening its temporary file
  and renaming it into place;
- orphan row files ``samples/{gpu,slice,process}/date=D/X.parquet`` whose batch never committed:
  no tick file ``samples/tick/date=*/X.parquet`` (written last, the batch's commit record) exists
  for the same name. The re-delivered messages landed again in another batch.

Only leftovers older than ``min_age_s`` (by modification time) go, so a write in progress, which
may sit for seconds between its row files and its tick file, is never touched. A row file whose
name has a tick file in any date partition is kept whatever its age: it belongs to a committed
batch.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from warehouse.lake import SAMPLES, TMP_SUFFIX, Lake, as_lake

log = logging.getLogger(__name__)

ROW_TABLES = ("gpu", "slice", "process")


@dataclass
class SweepResult:
    tmp_removed: int = 0
    orphans_removed: int = 0
    bytes_freed: int = 0
    kept_young: int = 0  # leftovers not old enough yet
    errors: list[str] = field(default_factory=list)

    def as_detail(self) -> dict[str, object]:
        return {
            "tmp_removed": self.tmp_removed,
            "orphans_removed": self.orphans_removed,
            "bytes_freed": self.bytes_freed,
            "kept_young": self.kept_young,
            "errors": self.errors[:20],
        }


def _committed_batches(root: Path) -> set[str]:
    tick = root / SAMPLES / "tick"
    if not tick.is_dir():
        return set()
    return {p.name for p in tick.glob("date=*/*.parquet") if p.is_file()}


def _remove(path: Path, st: os.stat_result, res: SweepResult, counter: str) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return  # someone else removed it (another janitor, a compaction)
    except OSError as exc:
        res.errors.append(f"{path}: {exc.strerror}")
        return
    setattr(res, counter, getattr(res, counter) + 1)
    res.bytes_freed += st.st_size


def sweep(root: Lake | str | os.PathLike[str], min_age_s: float, now: float | None = None) -> SweepResult:
    """Remove ``*.tmp`` files and uncommitted row files older than ``min_age_s``; see the module doc."""
    lake = as_lake(root)
    lake.unsupported("the janitor")
    root = Path(lake.root)
    now = time.time() if now is None else now
    res = SweepResult()
    if not root.is_dir():
        return res
    # Read the commit records before listing the row files: a batch that commits while we list
    # has a young row file, which the age test keeps anyway.
    committed = _committed_batches(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not Path(dirpath, d).is_symlink()]
        for name in filenames:
            if not name.endswith(TMP_SUFFIX):
                continue
            path = Path(dirpath, name)
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if not path.is_file() or path.is_symlink():
                continue
            if now - st.st_mtime < min_age_s:
                res.kept_young += 1
                continue
            _remove(path, st, res, "tmp_removed")
    for kind in ROW_TABLES:
        for path in sorted((root / SAMPLES / kind).glob("date=*/*.parquet")):
            if path.name in committed:
                continue
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if now - st.st_mtime < min_age_s:
                res.kept_young += 1
                continue
            # Re-check just before removing: the batch may have committed since the listing.
            if any((root / SAMPLES / "tick").glob(f"date=*/{path.name}")):
                continue
            _remove(path, st, res, "orphans_removed")
    if res.tmp_removed or res.orphans_removed:
        log.info(
            "janitor: removed %d tmp files and %d orphan row files (%d bytes)",
            res.tmp_removed,
            res.orphans_removed,
            res.bytes_freed,
        )
    return res
