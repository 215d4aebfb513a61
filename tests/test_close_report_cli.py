"""`gpuledger close` and `gpuledger report` run as a user runs them, on the golden scenario's lake.

The money is the hand-worked scenario of test_accounting_golden.py (reserved mode, platform
policy): research 4.40, vision 3.85, nlp 5.61, hpc-chem 2.64, alice-lab 1.65, platform 3.85.
"""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import scenario
from pypdf import PdfReader
from test_cli import gpuledger

from warehouse.focus import run_validator
from warehouse.lake import Lake

TENANT_TOTALS = {
    "research": "4.40",
    "vision": "3.85",
    "nlp": "5.61",
    "hpc-chem": "2.64",
    "alice-lab": "1.65",
}


def config(tmp: Path, book: list[dict[str, str]] = scenario.BOOK) -> Path:
    lake = tmp / "lake"
    if not lake.exists():
        scenario.write(Lake(lake), scenario.messages())
    rules = ",\n  ".join("{" + ", ".join(f'{k} = "{v}"' for k, v in r.items()) + "}" for r in scenario.RULES)
    prices = ",\n  ".join("{" + ", ".join(f'{k} = "{v}"' for k, v in e.items()) + "}" for e in book)
    cfg = tmp / "gpuledger.toml"
    cfg.write_text(
        f'[lake]\npath = "{lake}"\n[tenants]\nrules = [\n  {rules}\n]\n[pricing]\nbook = [\n  {prices}\n]\n'
    )
    return cfg


def test_close_prints_the_totals_and_is_idempotent(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    r = gpuledger(tmp_path, "--config", str(cfg), "close", "--month", "2026-10")
    assert r.rc == 0, r.err
    assert r.out.splitlines()[0] == "2026-10: closed"
    assert "total        USD 22.00" in r.out and "lines        11" in r.out
    manifest = json.loads((tmp_path / "lake/ledger/month=2026-10/manifest.json").read_text())
    assert manifest["totals"]["cost"] == "22.00" and manifest["lines"] == 11
    assert all("sha256" in i or "listing_sha256" in i for i in manifest["inputs"])
    again = gpuledger(tmp_path, "--config", str(cfg), "close", "--month", "2026-10")
    assert again.rc == 0 and "unchanged" in again.out.splitlines()[0]


def test_close_refuses_an_open_month_and_a_missing_price(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    r = gpuledger(tmp_path, "--config", str(cfg), "close", "--month", "2099-01")
    assert r.rc == 1 and r.out == ""
    assert r.err.strip().splitlines() == [
        "gpuledger close: month 2099-01 is not over yet (it ends 2099-02-01 00:00 UTC); close it after"
    ]
    (tmp_path / "b").mkdir()
    no_h100 = config(tmp_path / "b", [e for e in scenario.BOOK if e["model"] != scenario.H100])
    r = gpuledger(tmp_path, "--config", str(no_h100), "close", "--month", "2026-10")
    assert r.rc == 1
    assert "no price for GPU model 'NVIDIA H100 80GB HBM3' on 2026-10-15" in r.err
    assert not (tmp_path / "b/lake/ledger/month=2026-10").exists()


def test_report_writes_every_format_and_focus_passes_the_validator(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert gpuledger(tmp_path, "--config", str(cfg), "close", "--month", "2026-10").rc == 0
    out = tmp_path / "reports"
    r = gpuledger(
        tmp_path,
        "--config",
        str(cfg),
        "report",
        "--month",
        "2026-10",
        "--format",
        "html,pdf,csv,focus",
        "--out",
        str(out),
        "--validate",
        timeout=600,
    )
    assert r.rc == 0, r.err[-3000:]
    names = sorted(p.name for p in out.iterdir() if not p.name.endswith(".xml"))
    scopes = ["fleet", *sorted(TENANT_TOTALS)]
    assert names == sorted(
        f"2026-10-{s}{ext}"
        for s in scopes
        for ext in (".html", ".pdf", "-charges.csv", "-focus.parquet", "-focus.csv")
    )
    assert r.err.count("FOCUS validation ok") == len(scopes)
    # every tenant's PDF states its own total; the fleet's states the whole
    for tenant, total in TENANT_TOTALS.items():
        text = "".join(page.extract_text() for page in PdfReader(out / f"2026-10-{tenant}.pdf").pages)
        assert f"USD {total}" in text and "2026-10" in text
        rows = list(csv.DictReader((out / f"2026-10-{tenant}-charges.csv").open()))
        assert {row["tenant"] for row in rows} == {tenant}  # a tenant's files hold only its lines
        assert sum(Decimal(row["cost"]) for row in rows) == Decimal(total)
        focus = pq.read_table(out / f"2026-10-{tenant}-focus.parquet").to_pylist()
        assert sum(Decimal(str(row["BilledCost"])) for row in focus) == Decimal(total)
        html = (out / f"2026-10-{tenant}.html").read_text()
        assert all(other not in html for other in TENANT_TOTALS if other not in (tenant, "nlp"))
    fleet = "".join(page.extract_text() for page in PdfReader(out / "2026-10-fleet.pdf").pages)
    assert "USD 22.00" in fleet
    rows = list(csv.DictReader((out / "2026-10-fleet-charges.csv").open()))
    assert sum(Decimal(row["cost"]) for row in rows) == Decimal("22.00")
    # the fleet FOCUS file once more through the validator, read here
    rep = run_validator(out / "2026-10-fleet-focus.parquet", tmp_path / "fleet.xml")
    assert rep.ok, rep.summary()


def test_report_of_an_unknown_tenant_fails(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    r = gpuledger(tmp_path, "--config", str(cfg), "report", "--month", "2026-10", "--tenant", "nobody")
    assert r.rc == 1
    assert r.err.strip() == "gpuledger report: no data for tenant 'nobody' in 2026-10"


@pytest.mark.parametrize("fmt", ["xlsx", "html,doc", ""])
def test_report_rejects_unknown_formats(tmp_path: Path, fmt: str) -> None:
    cfg = config(tmp_path)
    r = gpuledger(tmp_path, "--config", str(cfg), "report", "--month", "2026-10", "--format", fmt)
    assert r.rc == 2 and "expected a comma list of html, pdf, csv, focus" in r.err
