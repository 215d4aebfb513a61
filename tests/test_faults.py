"""The fault suite's fast subset (bench/faults.py), run by CI within 90 s on 2 cores: ingest
SIGKILLed twice after it held partitions, a malformed flood among good ticks, and a full disk
(RLIMIT_FSIZE on ingest). Ground truth is counted apart from the code under test (the fleet
regenerated from its seed, the topic re-read, the lake read as queries read it). The outage
scenarios (broker restart, collector killed in an outage, two consumers, read-only lake) need a
broker of their own and minutes: `python bench/faults.py` runs them all (bench/RESULTS.md)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import faults

pytestmark = [pytest.mark.kafka, pytest.mark.faults]
BUDGET_S = 90.0


def check(row: faults.Row) -> None:
    print("\n" + faults.Row.HEADER + "\n" + row.line() + f"\n{row.note}")
    assert row.sent > 0 and row.in_topic == row.sent, row
    assert row.lost == 0 and row.landed == row.sent, row
    assert row.dup_queries == 0 and row.foreign == 0, row
    assert row.bad_in_dlq >= row.bad_sent, row


def test_fault_subset_loses_nothing_and_counts_nothing_twice(kafka_bootstrap: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    kill = faults.ingest_sigkill(kafka_bootstrap, tmp_path / "kill", kills=2, rounds=12)
    check(kill)
    assert kill.dup_disk > 0 or kill.note  # a killed batch is redone: on disk twice, in queries once

    flood = faults.malformed_flood(kafka_bootstrap, tmp_path / "flood", rounds=8, bad_per_round=8)
    assert flood.bad_sent == 64
    check(flood)

    disk = faults.full_disk(kafka_bootstrap, tmp_path / "disk", rounds=8, how="fsize")
    check(disk)
    assert time.monotonic() - t0 < BUDGET_S
