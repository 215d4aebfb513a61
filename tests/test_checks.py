"""Data checks on every rollup build (warehouse/checks.py): clean data passes every check, and
each check fails on the one kind of bad data it is about, naming the date and an example."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import scenario

from gpuledger.decode import decode_batch
from warehouse.checks import QUERIES
from warehouse.lake import Lake, new_batch_id
from warehouse.rollups import Rollups

DATE = "2026-10-15"


def _lake(tmp_path: Path, msgs: list[dict]) -> Lake:
    lake = Lake(tmp_path / "lake")
    scenario.write(lake, msgs)
    return lake


def _failing(lake: Lake) -> dict[str, tuple[int, str | None]]:
    r = Rollups(lake)
    st = r.update()
    assert st.rebuilt >= 1
    return {c.check: (c.failures, c.example) for c in r.failed_checks() if c.date == DATE}


def test_the_golden_scenario_passes_every_check(tmp_path: Path) -> None:
    lake = _lake(tmp_path, scenario.messages())
    r = Rollups(lake)
    r.update()
    assert r.failed_checks() == []
    assert {c.check for c in r.checks} == set(QUERIES)  # every check ran
    assert r.check_failures == 0


def test_a_slice_with_no_allocation_fails_share_in_range(tmp_path: Path) -> None:
    msgs = [scenario.node_b(k) for k in range(1, 11)]
    for m in msgs:
        m["slices"][1]["mem_cap_mib"], m["slices"][1]["core_cap_pct"] = 0, 0  # HAMi slice holding nothing
    failing = _failing(_lake(tmp_path, msgs))
    assert failing == {"share_in_range": (10, "share 0.0")}


def test_a_kind_outside_the_contract_fails_accepted_kinds(tmp_path: Path) -> None:
    lake = _lake(tmp_path, [scenario.node_b(k) for k in range(1, 11)])
    (path,) = (lake.table_dir("slice") / f"date={DATE}").glob("*.parquet")
    t = pq.read_table(path)
    kinds = t["kind"].to_pylist()
    kinds[0] = "bogus"  # one row breaks the contract
    pq.write_table(t.set_column(t.schema.get_field_index("kind"), "kind", pa.array(kinds, pa.string())), path)
    failing = _failing(lake)
    assert failing["accepted_kinds"] == (1, "bogus")


def test_a_tick_twice_in_one_batch_fails_unique_ticks(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    batch = new_batch_id()
    msgs = [scenario.node_a(k) for k in range(1, 6)]
    decoded = decode_batch([orjson.dumps(m) for m in msgs], batch=batch, max_message_bytes=1 << 20)
    for kind in decoded.tables:  # the same five ticks twice inside one committed batch
        decoded.tables[kind] = pa.concat_tables([decoded.tables[kind], decoded.tables[kind]])
    lake.write_batch(decoded, batch)
    n, example = _failing(lake)["unique_ticks"]
    assert n == 5 and example is not None and example.startswith("node-a ")


def test_a_failed_check_is_shown_on_the_overview(tmp_path: Path) -> None:
    """The admin sees which rule broke where and an example; a tenant viewer only that it broke."""
    from dashboards.data import DashboardData
    from dashboards.filters import Filters
    from dashboards.pages import overview_cards
    from warehouse.close import CloseSettings

    msgs = [scenario.node_b(k) for k in range(1, 11)]
    for m in msgs:
        m["slices"][1]["mem_cap_mib"], m["slices"][1]["core_cap_pct"] = 0, 0
    lake = _lake(tmp_path, msgs)
    Rollups(lake).update()
    settings = CloseSettings(
        tuple(scenario.RULES), "unassigned", "USD", (), "", "reserved", "platform", 0.05, 30.0
    )
    data = DashboardData(lake.root, settings, connections=1)
    try:
        admin = data.overview(None, Filters())
        viewer = data.overview(frozenset({"nlp"}), Filters())
    finally:
        data.close()
    assert admin["checks_failed"] == [f"share_in_range on {DATE}: 10 row(s), e.g. share 0.0"]
    assert viewer["checks_failed"] == [f"share_in_range on {DATE}: 10 row(s)"]
    (banner,) = [c for c in overview_cards(admin) if getattr(c, "id", None) == "card-checks"]
    assert "share_in_range on 2026-10-15" in str(banner.children)
    clean = dict(admin, checks_failed=[])
    assert not [c for c in overview_cards(clean) if getattr(c, "id", None) == "card-checks"]
