"""Charge lines as FinOps FOCUS 1.2 cost-and-usage rows (DESIGN §6), and the official check of them.

One charge line is one FOCUS row. This is internal chargeback: the platform is provider,
publisher and invoice issuer; each tenant is a sub-account; the `__unallocated__` line stays a
row of its own so the platform's idle capacity is visible and the rows add up to the fleet.

Why the costs are not all the same number: FOCUS requires ListUnitPrice x PricingQuantity =
ListCost (and the same for the contracted pair) on every row that is not a correction. The
ledger rounds each line to the cent by largest remainder, so the rounded cost is generally not
price x quantity. So BilledCost and EffectiveCost carry the line's rounded `cost` (what the
tenant pays; they add up to the cent), while ListCost and ContractedCost carry the exact
`cost_exact` = unit price x quantity. They differ by less than a cent per line; with no
discounts there is no other difference between them. (focus-validator 2.2.1 writes that rule
with `ChargeClass IS NOT NULL AND ChargeClass <> 'Correction'`, so it never checks ordinary
rows; `_check` holds every line to it instead, at the validator's relative 1e-9.)

Corrections (late data for a month already closed) are billed in the next open month with
ChargeClass "Correction", their ChargePeriod in the month they correct and x_CorrectsPeriod
naming it, as FOCUS prescribes for corrections of a previously invoiced billing period.

Units follow FOCUS's UnitFormat (`<singular-unit>-<plural-time-units>`, as in "GB-Hours"):
"GPU-Hours" for GPU time and "kW-Hours" for energy.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.charges_csv import DECIMAL_SCALES, at_scale, csv_bytes
from warehouse.lake import write_bytes_atomic
from warehouse.ledger_model import (
    CENTS,
    LINE_TYPES,
    MONEY,
    QTY,
    UNALLOCATED_TENANT,
    UNHEALTHY_TENANT,
    ChargeLine,
    ordered_lines,
)

GPU_UNIT = "GPU-Hours"
ENERGY_UNIT = "kW-Hours"
SERVICE_CATEGORY = "Compute"
SERVICE_SUBCATEGORY = "Other (Compute)"
MODES = ("reserved", "used", "hybrid")
IDLE_POLICIES = ("platform", "weighted", "even")
CORRECTABLE = tuple(t for t in LINE_TYPES if t != "correction")

# What this provider supports, in the validator's terms: the conditional FOCUS columns these
# switch on are all present and checked. Not claimed: availability zones, capacity
# reservations, commitment discounts, several pricing categories or account types, billing by
# individual provisioned resource (a line sums many slices), tags, virtual or second currencies.
APPLICABILITY_CRITERIA: tuple[str, ...] = (
    "ACCOUNT_NAMING_SUPPORTED",
    "NEGOTIATED_PRICING_SUPPORTED",
    "PUBLIC_PRICE_LIST_SUPPORTED",
    "REGION_SUPPORTED",
    "SUB_ACCOUNT_SUPPORTED",
    "UNIT_PRICING_SUPPORTED",
    "USAGE_MEASUREMENT_SUPPORTED",
)

_TS = pa.timestamp("us", tz="UTC")

# FOCUS columns first (in the order of the specification's column list), then x_ columns.
FOCUS_SCHEMA = pa.schema(
    [
        pa.field("BilledCost", CENTS, nullable=False),
        pa.field("BillingAccountId", pa.string(), nullable=False),
        pa.field("BillingAccountName", pa.string(), nullable=False),
        pa.field("BillingCurrency", pa.string(), nullable=False),
        pa.field("BillingPeriodEnd", _TS, nullable=False),
        pa.field("BillingPeriodStart", _TS, nullable=False),
        pa.field("ChargeCategory", pa.string(), nullable=False),
        pa.field("ChargeClass", pa.string()),
        pa.field("ChargeDescription", pa.string(), nullable=False),
        pa.field("ChargeFrequency", pa.string(), nullable=False),
        pa.field("ChargePeriodEnd", _TS, nullable=False),
        pa.field("ChargePeriodStart", _TS, nullable=False),
        # No commitment discounts here, so always null; present because the validator's
        # ConsumedQuantity rules test it in a condition and count a missing column as a failure.
        pa.field("CommitmentDiscountStatus", pa.string()),
        pa.field("ConsumedQuantity", QTY),
        pa.field("ConsumedUnit", pa.string()),
        pa.field("ContractedCost", MONEY, nullable=False),
        pa.field("ContractedUnitPrice", MONEY),
        pa.field("EffectiveCost", CENTS, nullable=False),
        pa.field("InvoiceId", pa.string()),
        pa.field("InvoiceIssuerName", pa.string(), nullable=False),
        pa.field("ListCost", MONEY, nullable=False),
        pa.field("ListUnitPrice", MONEY),
        # One currency for pricing and billing: these repeat the billing-currency values. The
        # validator asks for them once PUBLIC_PRICE_LIST_SUPPORTED is declared.
        pa.field("PricingCurrency", pa.string(), nullable=False),
        pa.field("PricingCurrencyContractedUnitPrice", MONEY),
        pa.field("PricingCurrencyEffectiveCost", CENTS, nullable=False),
        pa.field("PricingCurrencyListUnitPrice", MONEY),
        pa.field("PricingQuantity", QTY),
        pa.field("PricingUnit", pa.string()),
        pa.field("ProviderName", pa.string(), nullable=False),
        pa.field("PublisherName", pa.string(), nullable=False),
        pa.field("RegionId", pa.string()),
        pa.field("RegionName", pa.string()),
        pa.field("ServiceCategory", pa.string(), nullable=False),
        pa.field("ServiceName", pa.string(), nullable=False),
        pa.field("ServiceSubcategory", pa.string(), nullable=False),
        pa.field("SkuId", pa.string()),
        pa.field("SkuMeter", pa.string()),
        pa.field("SkuPriceDetails", pa.string()),
        pa.field("SkuPriceId", pa.string()),
        pa.field("SubAccountId", pa.string()),
        pa.field("SubAccountName", pa.string()),
        pa.field("x_BillingPeriod", pa.string(), nullable=False),
        pa.field("x_LineNumber", pa.int32(), nullable=False),
        pa.field("x_LineType", pa.string(), nullable=False),
        pa.field("x_Cluster", pa.string(), nullable=False),
        pa.field("x_GpuModel", pa.string(), nullable=False),
        pa.field("x_Mode", pa.string(), nullable=False),
        pa.field("x_IdlePolicy", pa.string(), nullable=False),
        pa.field("x_PriceEffectiveFrom", pa.date32(), nullable=False),
        pa.field("x_GpuHours", QTY, nullable=False),
        pa.field("x_Kwh", QTY),
        pa.field("x_ReservedGpuHours", QTY),
        pa.field("x_UsedGpuHours", QTY),
        pa.field("x_CorrectsPeriod", pa.string()),
        pa.field("x_CorrectsLineType", pa.string()),
    ]
)

CENT = Decimal("0.01")
_WIDE = Context(prec=80)
PRODUCT_TOLERANCE = Decimal("1e-9")  # relative, as the validator's price x quantity checks
_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def billing_period_bounds(period: str) -> tuple[datetime, datetime]:
    """[start, end) of a YYYY-MM billing period in UTC."""
    m = _PERIOD.match(period)
    if not m:
        raise ValueError(f"billing period {period!r} is not YYYY-MM")
    year, month = int(m.group(1)), int(m.group(2))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _utc_second(value: datetime, what: str) -> datetime:
    if value.utcoffset() != timedelta(0):
        raise ValueError(f"{what} {value.isoformat()} is not timezone-aware UTC")
    if value.microsecond:
        raise ValueError(f"{what} {value.isoformat()} is not on a whole second (FOCUS date/times are)")
    return value.astimezone(UTC)


def _check(ln: ChargeLine) -> None:
    """Refuse a line FOCUS cannot express truthfully, naming the line and the field."""
    if ln.line_type not in LINE_TYPES:
        raise ValueError(f"line_type {ln.line_type!r} is not one of {LINE_TYPES}")
    if ln.mode not in MODES:
        raise ValueError(f"mode {ln.mode!r} is not one of {MODES}")
    if ln.idle_policy not in IDLE_POLICIES:
        raise ValueError(f"idle_policy {ln.idle_policy!r} is not one of {IDLE_POLICIES}")
    if not _CURRENCY.match(ln.currency or ""):
        raise ValueError(f"currency {ln.currency!r} is not a three-letter ISO 4217 code")
    for name in ("tenant", "cluster", "gpu_model"):
        if not str(getattr(ln, name) or "").strip():
            raise ValueError(f"{name} is empty")
    start = _utc_second(ln.charge_start, "charge_start")
    end = _utc_second(ln.charge_end, "charge_end")
    if end <= start:
        raise ValueError(f"charge_end {end.isoformat()} is not after charge_start {start.isoformat()}")
    if ln.line_type == "correction":
        if ln.corrects_period is None:
            raise ValueError("a correction line needs corrects_period")
        if ln.corrects_period >= ln.billing_period:
            raise ValueError(
                f"corrects_period {ln.corrects_period} is not before billing period {ln.billing_period}"
            )
        billing_period_bounds(ln.corrects_period)
        if ln.corrects_line_type not in (None, *CORRECTABLE):
            raise ValueError(f"corrects_line_type {ln.corrects_line_type!r} is not one of {CORRECTABLE}")
    elif ln.corrects_period is not None or ln.corrects_line_type is not None:
        raise ValueError(f"corrects_period/corrects_line_type set on a {ln.line_type} line")
    else:
        b_start, b_end = billing_period_bounds(ln.billing_period)
        if start < b_start or end > b_end:
            raise ValueError(
                f"charge period {start.isoformat()}..{end.isoformat()} is outside billing period "
                f"{ln.billing_period}"
            )
    if ln.line_type == "energy" and ln.kwh is None:
        raise ValueError("an energy line needs kwh")
    for name, scale in DECIMAL_SCALES.items():
        value = getattr(ln, name)
        if value is not None:
            try:
                at_scale(value, scale)
            except (ValueError, ArithmeticError) as exc:
                raise ValueError(f"{name}: {exc}") from exc
    if ln.unit_price < 0:
        raise ValueError(f"unit_price {ln.unit_price} is negative")
    if abs(_WIDE.subtract(ln.cost, ln.cost_exact)) >= CENT:
        raise ValueError(f"cost {ln.cost} is a cent or more away from cost_exact {ln.cost_exact}")
    # FOCUS: ListUnitPrice x PricingQuantity = ListCost except on corrections, which may differ
    # (the validator's own check never fires on rows whose ChargeClass is null, so it is here).
    if ln.line_type == "correction":
        return
    product = _WIDE.multiply(ln.kwh if _is_energy(ln) else ln.gpu_hours, ln.unit_price)
    if abs(_WIDE.subtract(product, ln.cost_exact)) > PRODUCT_TOLERANCE * max(abs(ln.cost_exact), Decimal(1)):
        raise ValueError(f"quantity x unit_price = {product} does not match cost_exact {ln.cost_exact}")


def _is_energy(ln: ChargeLine) -> bool:
    # A correction of an energy line is priced per kWh too: the quantity decides, not the type.
    return ln.kwh is not None


def _what(line_type: str, ln: ChargeLine) -> str:
    where = f"{ln.gpu_model} on {ln.cluster}"
    if line_type == "usage":
        return f"{ln.gpu_model} GPU-hours ({ln.mode}) for {ln.tenant} on {ln.cluster}"
    if line_type == "unallocated":
        return f"Unallocated {where} GPU-hours, carried by the platform"
    if line_type == "unhealthy":
        reason = ln.tenant.partition("/")[2]
        return f"{where} GPU-hours on unhealthy GPU ticks ({reason}), carried by the platform"
    if line_type == "idle_share":
        return f"Share of unallocated {where} GPU-hours ({ln.idle_policy} policy) for {ln.tenant}"
    if line_type == "energy" and ln.tenant.startswith(UNHEALTHY_TENANT + "/"):
        reason = ln.tenant.partition("/")[2]
        return f"Energy of {where} on unhealthy GPU ticks ({reason}), carried by the platform"
    if line_type == "energy":
        return f"Energy of {where} for {ln.tenant}"
    kind = "energy" if _is_energy(ln) else "GPU-hours"  # a correction of unknown origin
    who = "the platform (unallocated)" if ln.tenant == UNALLOCATED_TENANT else ln.tenant
    return f"{where} {kind} for {who}"


def _description(ln: ChargeLine) -> str:
    if ln.line_type != "correction":
        return _what(ln.line_type, ln)
    return f"Correction of {ln.corrects_period}: {_what(ln.corrects_line_type or 'correction', ln)}"


def _sub_account_name(tenant: str) -> str:
    if tenant == UNALLOCATED_TENANT:
        return "Unallocated capacity (platform)"
    if tenant.startswith(UNHEALTHY_TENANT + "/"):
        return "Unhealthy GPU time (platform)"
    return tenant


def _focus_rows(
    lines: Iterable[ChargeLine],
    *,
    provider: str = "gpuledger",
    publisher: str | None = None,
    invoice_issuer: str | None = None,
    billing_account_id: str = "gpuledger-fleet",
    billing_account_name: str = "GPU fleet",
    service_name: str = "GPU Compute",
) -> list[dict[str, object]]:
    """One FOCUS row (a dict keyed by FOCUS_SCHEMA names) per line, in (period, line_no) order."""
    ordered = ordered_lines(lines)
    rows: list[dict[str, object]] = []
    for ln in ordered:
        try:
            _check(ln)
            b_start, b_end = billing_period_bounds(ln.billing_period)
        except ValueError as exc:
            raise ValueError(f"charge line {ln.line_no} of {ln.billing_period}: {exc}") from exc
        energy = _is_energy(ln)
        quantity = ln.kwh if energy else ln.gpu_hours
        unit = ENERGY_UNIT if energy else GPU_UNIT
        meter = "Energy" if energy else "GPU Time"
        price_id = f"{ln.gpu_model}/{'energy' if energy else 'gpu-time'}/{ln.price_from.isoformat()}"
        rows.append(
            {
                "BilledCost": ln.cost,
                "BillingAccountId": billing_account_id,
                "BillingAccountName": billing_account_name,
                "BillingCurrency": ln.currency,
                "BillingPeriodEnd": b_end,
                "BillingPeriodStart": b_start,
                "ChargeCategory": "Usage",
                "ChargeClass": "Correction" if ln.line_type == "correction" else None,
                "ChargeDescription": _description(ln),
                "ChargeFrequency": "Usage-Based",
                "ChargePeriodEnd": ln.charge_end,
                "ChargePeriodStart": ln.charge_start,
                "CommitmentDiscountStatus": None,
                "ConsumedQuantity": quantity,
                "ConsumedUnit": unit,
                "ContractedCost": ln.cost_exact,
                "ContractedUnitPrice": ln.unit_price,
                "EffectiveCost": ln.cost,
                "InvoiceId": f"{billing_account_id}/{ln.billing_period}/{ln.tenant}",
                "InvoiceIssuerName": invoice_issuer or provider,
                "ListCost": ln.cost_exact,
                "ListUnitPrice": ln.unit_price,
                "PricingCurrency": ln.currency,
                "PricingCurrencyContractedUnitPrice": ln.unit_price,
                "PricingCurrencyEffectiveCost": ln.cost,
                "PricingCurrencyListUnitPrice": ln.unit_price,
                "PricingQuantity": quantity,
                "PricingUnit": unit,
                "ProviderName": provider,
                "PublisherName": publisher or provider,
                "RegionId": ln.cluster,
                "RegionName": ln.cluster,
                "ServiceCategory": SERVICE_CATEGORY,
                "ServiceName": service_name,
                "ServiceSubcategory": SERVICE_SUBCATEGORY,
                "SkuId": ln.gpu_model,
                "SkuMeter": meter,
                "SkuPriceDetails": json.dumps({"x_EffectiveFrom": ln.price_from.isoformat()}),
                "SkuPriceId": price_id,
                "SubAccountId": ln.tenant,
                "SubAccountName": _sub_account_name(ln.tenant),
                "x_BillingPeriod": ln.billing_period,
                "x_LineNumber": ln.line_no,
                "x_LineType": ln.line_type,
                "x_Cluster": ln.cluster,
                "x_GpuModel": ln.gpu_model,
                "x_Mode": ln.mode,
                "x_IdlePolicy": ln.idle_policy,
                "x_PriceEffectiveFrom": ln.price_from,
                "x_GpuHours": ln.gpu_hours,
                "x_Kwh": ln.kwh,
                "x_ReservedGpuHours": ln.reserved_gpu_hours,
                "x_UsedGpuHours": ln.used_gpu_hours,
                "x_CorrectsPeriod": ln.corrects_period,
                "x_CorrectsLineType": ln.corrects_line_type,
            }
        )
    return rows


def focus_table(
    lines: Iterable[ChargeLine],
    *,
    provider: str = "gpuledger",
    publisher: str | None = None,
    invoice_issuer: str | None = None,
    billing_account_id: str = "gpuledger-fleet",
    billing_account_name: str = "GPU fleet",
    service_name: str = "GPU Compute",
) -> pa.Table:
    """The FOCUS 1.2 cost-and-usage table of `lines`, one row per line in (period, line_no) order.

    The platform running the fleet is the provider; publisher and invoice issuer default to it.
    A line FOCUS cannot express truthfully raises ValueError naming the line and the field.
    """
    rows = _focus_rows(
        lines,
        provider=provider,
        publisher=publisher,
        invoice_issuer=invoice_issuer,
        billing_account_id=billing_account_id,
        billing_account_name=billing_account_name,
        service_name=service_name,
    )
    cols = {f.name: [r[f.name] for r in rows] for f in FOCUS_SCHEMA}
    return pa.table(cols, schema=FOCUS_SCHEMA)


def focus_parquet_bytes(table: pa.Table) -> bytes:
    """Parquet with fixed writer options, so the same table always gives the same bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", compression_level=3, write_statistics=True)
    return sink.getvalue().to_pybytes()


def focus_csv_bytes(table: pa.Table) -> bytes:
    """FOCUS CSV: exact decimals, `YYYY-MM-DDTHH:MM:SSZ` date/times, empty field for null."""
    names = table.column_names
    return csv_bytes(names, (tuple(r[n] for n in names) for r in table.to_pylist()))


def write_focus(
    lines: Iterable[ChargeLine], out_dir: str | os.PathLike[str], stem: str, **names: str | None
) -> tuple[Path, Path]:
    """Write `<stem>.parquet` and `<stem>.csv` (each atomically) and return their paths.

    `names` are focus_table's keyword arguments (provider, billing account, ...).
    """
    table = focus_table(lines, **names)
    out = Path(out_dir)
    parquet_path = write_bytes_atomic(out / f"{stem}.parquet", focus_parquet_bytes(table))
    csv_path = write_bytes_atomic(out / f"{stem}.csv", focus_csv_bytes(table))
    return parquet_path, csv_path


# --- the official validator ---------------------------------------------------------------------

VALIDATOR_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "focus-validator.sh"


# Rules that focus-validator 2.2.1 fails on every dataset that holds the column, each with the
# composite that states the real requirement and must pass for the excuse to hold. Its model
# checks InvoiceId-C-004-C ("MUST be null when the charge has no invoice") and C-005-C ("MUST NOT
# be null when it has one") both unconditionally, under an OR (C-003-C): one of the two fails
# whatever the data (all null: C-005 fails; all set: C-004 fails; column left out: seven rules
# fail). Our rows belong to a monthly statement, so InvoiceId is set and C-004 is the one.
KNOWN_VALIDATOR_DEFECTS: dict[str, str] = {
    "InvoiceId-C-004-C": "InvoiceId-C-003-C",
}


@dataclass(frozen=True)
class ValidatorReport:
    """The counts of the validator's `<testsuites>` element and the rules that did not pass."""

    tests: int
    failures: int
    errors: int
    skipped: int
    failed: tuple[tuple[str, str], ...]  # (rule id, message) of each failed or errored rule

    @property
    def failed_rules(self) -> tuple[str, ...]:
        return tuple(rule for rule, _ in self.failed)

    @property
    def unexpected(self) -> tuple[tuple[str, str], ...]:
        """Failed rules other than a known defect whose governing composite passed."""
        failed = set(self.failed_rules)
        return tuple(
            (rule, msg)
            for rule, msg in self.failed
            if not (rule in KNOWN_VALIDATOR_DEFECTS and KNOWN_VALIDATOR_DEFECTS[rule] not in failed)
        )

    @property
    def ok(self) -> bool:
        """Every rule passed but the known defects; something was checked; the counts agree."""
        return (
            self.tests > 0
            and self.errors == 0
            and not self.unexpected
            and self.failures + self.errors == len(self.failed)
        )

    def summary(self, limit: int = 20) -> str:
        head = f"{self.tests} rules: {self.failures} failed, {self.errors} errored, {self.skipped} skipped"
        lines = [f"  {rule}: {msg}" for rule, msg in self.failed[:limit]]
        if len(self.failed) > limit:
            lines.append(f"  ... and {len(self.failed) - limit} more")
        return "\n".join([head, *lines])


def read_validator_report(xml_path: str | os.PathLike[str]) -> ValidatorReport:
    """Read the unittest XML: its exit code says nothing, these counts say whether FOCUS holds."""
    root = ET.parse(xml_path).getroot()
    if root.tag != "testsuites":
        raise ValueError(f"{xml_path}: root element is <{root.tag}>, expected <testsuites>")
    try:
        counts = {k: int(root.attrib[k]) for k in ("tests", "failures", "errors", "skipped")}
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{xml_path}: <testsuites> lacks a numeric count: {exc}") from exc
    failed = []
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                rule = case.attrib.get("name", "?").split(" :: ")[0]
                failed.append((rule, el.attrib.get("message", "")))
    return ValidatorReport(failed=tuple(failed), **counts)


def validator_installed(script: str | os.PathLike[str] = VALIDATOR_SCRIPT) -> bool:
    """Whether the pinned validator's environment exists (the script's `python` exits 1 when not),
    asked before a report is written so that a missing validator stops it with nothing written."""
    proc = subprocess.run(["bash", str(script), "python"], capture_output=True, text=True, check=False)
    return proc.returncode == 0


def run_validator(
    data_file: str | os.PathLike[str],
    xml_out: str | os.PathLike[str],
    *,
    criteria: Sequence[str] = APPLICABILITY_CRITERIA,
    script: str | os.PathLike[str] = VALIDATOR_SCRIPT,
    timeout_s: float = 300.0,
) -> ValidatorReport:
    """Run the pinned validator offline on one .parquet/.csv file and read its report.

    Raises RuntimeError when the validator could not run (not installed, crashed), so that a
    missing validator is never mistaken for a clean report.
    """
    cmd = ["bash", str(script), "run", str(data_file), str(xml_out)]
    if criteria:
        cmd += ["--applicability-criteria", ",".join(criteria)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"focus-validator on {data_file} exited {proc.returncode}:\n{tail}")
    return read_validator_report(xml_out)
