"""The people's CSV of charge lines: exact text, ledger column order, same lines -> same bytes."""

from __future__ import annotations

import csv
import io
import random
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from test_focus import march_lines

from warehouse.charges_csv import charges_csv_bytes, format_decimal, write_charges_csv
from warehouse.ledger_model import LEDGER_SCHEMA, lines_to_table, table_to_lines

D = Decimal

HEADER = (
    "billing_period,line_no,line_type,tenant,cluster,gpu_model,charge_start,charge_end,price_from,"
    "gpu_hours,unit_price,kwh,currency,cost_exact,cost,mode,idle_policy,corrects_period,"
    "reserved_gpu_hours,used_gpu_hours,corrects_line_type\r\n"
)


def test_exact_bytes() -> None:
    lines = march_lines()
    got = charges_csv_bytes([lines[1], lines[10], lines[13]])
    assert (
        got
        == (
            HEADER
            + "2025-03,2,usage,vision,eu-west-a,H100,2025-03-16T00:00:00Z,2025-04-01T00:00:00Z,2025-03-16,"
            "1100.333333333333,2.200000000000,,USD,2420.733333333333,2420.73,reserved,weighted,,"
            "1100.333333333333,350.000000000000,\r\n"
            "2025-03,11,energy,vision,eu-west-a,H100,2025-03-01T00:00:00Z,2025-04-01T00:00:00Z,2025-01-01,"
            "0.000000000000,0.120000000000,1605.300000000000,USD,192.636000000000,192.64,reserved,weighted,,,,\r\n"
            "2025-03,14,correction,__unallocated__,eu-west-a,H100,2025-02-27T00:00:00Z,2025-02-28T00:00:00Z,"
            "2025-01-01,-3.500000000000,2.500000000000,,USD,-8.750000000000,-8.75,reserved,weighted,2025-02,,,"
            "unallocated\r\n"
        ).encode()
    )


def test_header_is_the_ledger_schema_in_order() -> None:
    assert charges_csv_bytes([]).decode() == HEADER
    assert HEADER.strip().split(",") == LEDGER_SCHEMA.names


def test_all_lines_parse_back_to_the_exact_values(tmp_path: Path) -> None:
    lines = march_lines()
    path = write_charges_csv(lines, tmp_path / "out" / "charges-2025-03.csv")
    assert path == tmp_path / "out" / "charges-2025-03.csv"
    assert not list(path.parent.glob("*.tmp"))
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    assert [int(r["line_no"]) for r in rows] == list(range(1, 15))
    assert [D(r["cost"]) for r in rows] == [ln.cost for ln in lines]
    assert [D(r["cost_exact"]) for r in rows] == [ln.cost_exact for ln in lines]
    assert [D(r["gpu_hours"]) for r in rows] == [ln.gpu_hours for ln in lines]
    assert sum(D(r["cost"]) for r in rows) == D("14136.35")
    assert sum(D(r["cost_exact"]) for r in rows) == D("14136.345533333334")
    assert [r["tenant"] for r in rows].count("__unallocated__") == 3
    assert rows[12]["corrects_period"] == "2025-02" and rows[0]["corrects_period"] == ""


def test_same_lines_same_bytes_in_any_order_and_after_the_parquet_ledger(tmp_path: Path) -> None:
    lines = march_lines()
    first = charges_csv_bytes(lines)
    shuffled = lines[:]
    random.Random(11).shuffle(shuffled)
    assert charges_csv_bytes(shuffled) == first
    # Lines read back from the Parquet ledger carry 12-place decimals: the text is the same.
    assert charges_csv_bytes(table_to_lines(lines_to_table(lines))) == first
    a = write_charges_csv(lines, tmp_path / "a.csv").read_bytes()
    b = write_charges_csv(shuffled, tmp_path / "b.csv").read_bytes()
    assert a == b == first


def test_decimal_text_is_exact_and_never_scientific() -> None:
    assert format_decimal(D("1E+2")) == "100"
    assert format_decimal(D("1E-12")) == "0.000000000001"
    assert format_decimal(D("-0.00")) == "0.00"
    assert format_decimal(D("123456789012345678901234567.123456789012")) == (
        "123456789012345678901234567.123456789012"
    )
    with pytest.raises(ValueError, match="not a finite decimal"):
        format_decimal(D("NaN"))
    ln = replace(march_lines()[0], gpu_hours=D("1234.5E0"), cost=D("3086.250"), cost_exact=D("3.08625E+3"))
    text = charges_csv_bytes([ln]).decode().splitlines()[1]
    assert ",1234.500000000000,2.500000000000,,USD,3086.250000000000,3086.25," in text


def test_odd_text_is_quoted_and_timestamps_keep_microseconds() -> None:
    ln = replace(
        march_lines()[0],
        tenant='team "a", ml',
        charge_start=datetime(2025, 3, 1, 0, 0, 0, 500, tzinfo=UTC),
    )
    row = next(csv.reader(io.StringIO(charges_csv_bytes([ln]).decode().splitlines()[1])))
    assert row[3] == 'team "a", ml'
    assert row[6] == "2025-03-01T00:00:00.000500Z"
    assert '"team ""a"", ml"' in charges_csv_bytes([ln]).decode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"charge_start": datetime(2025, 3, 1)}, "charge line 1 of 2025-03, charge_start: naive datetime"),
        ({"cost": D("3086.255")}, "charge line 1 of 2025-03, cost: 3086.255 has more than 2 decimal places"),
        (
            {"gpu_hours": D("1.0000000000001")},
            "charge line 1 of 2025-03, gpu_hours: 1.0000000000001 has more",
        ),
        ({"kwh": D("Infinity")}, "charge line 1 of 2025-03, kwh:"),
    ],
)
def test_bad_values_name_the_line_and_the_column(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as err:
        charges_csv_bytes([replace(march_lines()[0], **change)])
    assert message in str(err.value)


def test_duplicate_lines_are_refused() -> None:
    lines = march_lines()
    with pytest.raises(ValueError, match="charge line 5 of 2025-03 appears twice"):
        charges_csv_bytes([*lines, lines[4]])
