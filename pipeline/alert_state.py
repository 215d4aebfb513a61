"""The alert engine's memory between evaluations: one JSON state file under ``<lake>/alerts``, loaded
under an exclusive lock and written back atomically, plus the identities it is keyed by (Alertmanager
fingerprints) and its timestamp format.

Small on purpose: per slice/GPU series the last tick and the current idle episode, the pending and
firing alerts, and the outbox of notifications not yet delivered, so an idle period of three days
costs no more to evaluate than one of three minutes.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from warehouse.lake import Lake

STATE_FILE = "_state.json"
STATE_VERSION = 1

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_SEP = 0xFF


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of a label set: FNV-1a 64 over sorted name, 0xff, value, 0xff.

    The same labels give the same fingerprint here and in an Alertmanager, in any order.
    """
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for b in part.encode():
                h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ _SEP) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _empty_state() -> dict[str, Any]:
    # series: per slice/GPU key: last tick seen and the current idle episode
    # alerts: per fingerprint: pending or firing alerts; outbox: notifications not yet delivered
    return {
        "version": STATE_VERSION,
        "watermark": None,
        "series": {},
        "alerts": {},
        "nodes": {},
        "outbox": [],
        "seq": {},
    }


class StateStore:
    """The state file of one alerts folder."""

    def __init__(self, lake: Lake, root: Path) -> None:
        self.lake = lake
        self.root = root
        self.state_path = root / STATE_FILE

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """The state, loaded under an exclusive lock and saved back atomically on success."""
        with open(self.lake.lock_file(self.root / "_state.lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self.load()
                yield state
                self.save(state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load(self) -> dict[str, Any]:
        try:
            state = json.loads(self.lake.read_text(self.state_path))
        except FileNotFoundError:
            return _empty_state()
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{self.state_path}: state version {state.get('version')!r}, expected 1")
        return state

    def save(self, state: dict[str, Any]) -> None:
        body = json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
        self.lake.write_bytes(self.state_path, body)
