"""Connections and cached results for the dashboard's page queries.

A DuckDB connection is not shared between threads, so a bounded pool of `Accounting` connections
serves concurrent requests. Month-sized results (charge lines, idle periods, coverage) cost
seconds and change only when a rollup date is rebuilt or a month is closed, so they are cached
per process under a fingerprint of those files and dropped when it changes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from warehouse.accounting import Accounting
from warehouse.lake import Lake
from warehouse.rollups import change_key


class AccountingPool:
    """At most `size` Accounting connections; a request borrows one and gives it back."""

    def __init__(self, factory: Callable[[], Accounting], size: int, timeout_s: float = 60.0) -> None:
        self.factory, self.size, self.timeout_s = factory, size, timeout_s
        self._idle: queue.LifoQueue[Accounting] = queue.LifoQueue()
        self._made = 0
        self._lock = threading.Lock()

    @contextmanager
    def get(self) -> Iterator[Accounting]:
        try:
            acct = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                make = self._made < self.size
                if make:
                    self._made += 1
            if make:
                try:
                    acct = self.factory()
                except BaseException:
                    with self._lock:
                        self._made -= 1
                    raise
            else:
                acct = self._idle.get(timeout=self.timeout_s)
        ok = False
        try:
            acct.refresh()  # new rollup files -> views re-pointed (replaced files are re-read anyway)
            yield acct
            ok = True
        finally:
            if ok:
                self._idle.put(acct)
            else:  # a failed query may leave the connection in a bad state: drop it
                acct.close()
                with self._lock:
                    self._made -= 1

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class ResultCache:
    """Results keyed by what they were computed from: the rollup state files and the ledger."""

    def __init__(self, lake: Lake, max_entries: int = 256) -> None:
        self.lake = lake
        self.max_entries = max_entries
        self._cache: dict[Any, tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        self._fp: tuple[float, Any] = (-1.0, None)

    def fingerprint(self) -> str:
        """Changes whenever a rollup date is rebuilt or a month is closed (looked at most once a second)."""
        now = time.monotonic()
        at, fp = self._fp
        if now - at < 1.0 and fp is not None:
            return fp
        fp = change_key(self.lake)
        self._fp = (now, fp)
        return fp

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        fp = self.fingerprint()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == fp:
            return hit[1]
        value = compute()
        with self._lock:
            if len(self._cache) > self.max_entries:
                self._cache.clear()
            self._cache[key] = (fp, value)
        return value
