"""Charge lines of one billing period from the rollups: modes, idle policies, energy, cents.

Quantities come out of DuckDB as fixed-point GPU-seconds (exact sums); from there everything is
Python `Decimal` at 60 digits: costs are seconds x price / 3600, splits give their residue to the
last share, and only the final step rounds to cents, by largest remainder within each (cluster,
GPU model, price segment) subtotal, so every subtotal is right to the cent and the period adds up
to its subtotals. The conservation check recomputes the total independently from GPU capacity and
fails loudly with the difference.
"""

from __future__ import annotations

import decimal
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from warehouse import rules
from warehouse.accounting import Accounting
from warehouse.errors import ConservationError
from warehouse.ledger_model import UNALLOCATED_TENANT, UNHEALTHY_TENANT, ChargeLine, UnhealthyTime
from warehouse.pricing import PriceError, month_bounds
from warehouse.sql import lit
from warehouse.sql import ts_lit as _ts

CTX = decimal.Context(prec=60)
CENT = Decimal("0.01")
Q12 = Decimal("1e-12")
TIE = Decimal("1e-30")  # cents are compared to this many places: below it is division noise
MODES = ("reserved", "used", "hybrid")
POLICIES = ("platform", "weighted", "even")
LINE_ORDER = {"usage": 0, "idle_share": 1, "unallocated": 2, "unhealthy": 3, "energy": 4, "correction": 5}
# The platform's line for slice time on unhealthy GPU ticks (rules.UNHEALTHY_REASON_SQL), one per
# segment and reason: its tenant is UNHEALTHY_TENANT and the reason, e.g. "__unhealthy__/gpu lost".
USED_BASES = ("busy", "sm_active")


@dataclass(frozen=True)
class Segment:
    """One (cluster, GPU model, price) piece of the period: the unit lines are priced in."""

    cluster: str
    model: str
    price_from: date
    start: datetime
    end: datetime
    price: Decimal


@dataclass
class Charges:
    lines: list[ChargeLine]
    expected_total: Decimal  # independent: Σ capacity x price (+ energy, + corrections)
    total: Decimal  # Σ of the lines' cents
    capacity_gpu_h: Decimal


def _d(v: object) -> Decimal:
    return Decimal(0) if v is None else Decimal(str(v)) if not isinstance(v, Decimal) else v


def _split(amount: Decimal, weights: list[Decimal]) -> list[Decimal]:
    """amount x w_i / Σw, the last share taking the residue so the parts add up exactly."""
    total = sum(weights, Decimal(0))
    if total == 0:
        weights, total = [Decimal(1)] * len(weights), Decimal(len(weights))
    parts = [CTX.divide(CTX.multiply(amount, w), total) for w in weights[:-1]]
    return [*parts, CTX.subtract(amount, sum(parts, Decimal(0)))]


@dataclass(frozen=True)
class ChargePolicy:
    """How a period is billed: the chargeback mode, what happens to unallocated capacity, and the
    energy price (None: no energy lines). Checked when made, so a bad value fails at start."""

    mode: str = "reserved"  # reserved | used | hybrid
    idle_policy: str = "platform"  # platform | weighted | even
    kwh_price: Decimal | None = None
    # False: slice time on unhealthy GPU ticks goes to the platform's `unhealthy` lines, not the tenants.
    bill_unhealthy: bool = False
    used_basis: str = "busy"  # what `used` and `hybrid` bill as used: busy | sm_active

    def __post_init__(self) -> None:
        if self.used_basis not in USED_BASES:
            raise ValueError(f"used_basis {self.used_basis!r}: expected one of {', '.join(USED_BASES)}")
        if self.mode not in MODES:
            raise ValueError(f"chargeback mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.idle_policy not in POLICIES:
            raise ValueError(f"idle policy {self.idle_policy!r}: expected one of {', '.join(POLICIES)}")


def compute_charges(
    acct: Accounting,
    month: str,
    policy: ChargePolicy = ChargePolicy(),
    extra_lines: Iterable[ChargeLine] = (),
) -> Charges:
    """All lines of `month` under `policy`, plus `extra_lines` (corrections), in these steps:

    1. every GPU model observed in the month has a price on every date it was seen (else PriceError);
    2. capacity per (cluster, model, price segment) from the GPU-hours: the independent total;
    3. per tenant and segment: reserved, used, and hybrid per slice-hour (bursts paid from the
       GPU-hour's unreserved capacity, pro rata when they exceed it);
    4. usage lines by the mode; what the tenants leave of a segment becomes the platform's
       `unallocated` line or `idle_share` lines by the idle policy;
    5. energy lines by used share (reserved share when nothing was used), when priced; the energy
       of unhealthy GPU ticks to the platform's unhealthy energy lines unless bill_unhealthy;
    6. cents by largest remainder within each subtotal (corrections keep theirs), line numbers;
    7. the conservation check (ConservationError, and no ledger, when anything does not add up).
    """
    with decimal.localcontext(CTX):
        return _compute(acct, month, policy, extra_lines)


def _compute(
    acct: Accounting, month: str, policy: ChargePolicy, extra_lines: Iterable[ChargeLine]
) -> Charges:
    mode, idle_policy, kwh_price = policy.mode, policy.idle_policy, policy.kwh_price
    if acct.price_book is None:
        raise PriceError("chargeback needs a price book (pricing.book)")
    currency = acct.price_book.currency
    m0, m1 = month_bounds(month)
    lo, hi = _ts(m0), _ts(m1)
    # A GPU model with no price on a date it was observed is an error naming both.
    missing = acct.sql(f"""
        SELECT g.model, min(CAST(g.hour AS DATE)) AS day FROM gpu_hourly g
        ANTI JOIN prices p ON p.model = g.model AND CAST(g.hour AS DATE) >= p.valid_from
                          AND CAST(g.hour AS DATE) < p.valid_to
        WHERE g.hour >= {lo} AND g.hour < {hi} GROUP BY g.model ORDER BY day, g.model""").fetchall()
    if missing:
        model, day = missing[0]
        acct.price_book.price_at(model, day)  # raises PriceError naming the model and date
    price_join = rules.price_join("x")
    seg_cols = SEG_COLS
    cap_rows = acct.sql(f"""
        SELECT {seg_cols}, sum(x.capacity_s) AS capacity_s,
               sum(CAST(x.energy_j AS DECIMAL(38, 6))) AS energy_j
        FROM gpu_hourly x {price_join}
        WHERE x.hour >= {lo} AND x.hour < {hi} GROUP BY ALL ORDER BY ALL""").fetchall()
    tenant_rows = acct.sql(_tenant_rows_sql(policy, lo, hi)).fetchall()
    energy_rows: list[tuple] = []
    sick_energy_rows: list[tuple] = []
    if kwh_price is not None:
        # A GPU-hour's energy split by used share (reserved share when nothing was used). With
        # bill_unhealthy = false the energy of its unhealthy GPU ticks is the platform's (one energy
        # line per segment and reason, below), and the rest is split by the healthy ticks' shares.
        # Healthy energy is energy_j - unhealthy_energy_j in double precision: exactly energy_j
        # when nothing was unhealthy, so a healthy month's lines are what they always were.
        sick = not policy.bill_unhealthy
        off_e, off_u, off_r = (
            ("g.unhealthy_energy_j", "unhealthy_used_s", "unhealthy_reserved_s") if sick else ("0", "0", "0")
        )
        energy_rows = acct.sql(f"""
            WITH s AS (
                SELECT gpu_uuid, hour, tenant, sum(used_s - {off_u}) AS u, sum(reserved_s - {off_r}) AS r
                FROM slice_hourly WHERE hour >= {lo} AND hour < {hi} GROUP BY ALL),
            t AS (SELECT gpu_uuid, hour, sum(u) AS su, sum(r) AS sr FROM s GROUP BY ALL),
            x AS (
                SELECT s.tenant, g.cluster, g.model, g.hour,
                       CAST((g.energy_j - {off_e}) * CASE WHEN t.su > 0 THEN s.u / t.su ELSE s.r / t.sr END
                            AS DECIMAL(38, 6)) AS energy_j
                FROM gpu_hourly g JOIN s USING (gpu_uuid, hour) JOIN t USING (gpu_uuid, hour)
                WHERE g.hour >= {lo} AND g.hour < {hi} AND g.energy_j IS NOT NULL AND t.sr > 0)
            SELECT x.tenant, {seg_cols}, sum(x.energy_j) AS energy_j
            FROM x {price_join} GROUP BY ALL ORDER BY ALL""").fetchall()
        if sick:
            sick_energy_rows = acct.sql(f"""
                SELECT x.unhealthy_reason, {seg_cols},
                       sum(CAST(x.unhealthy_energy_j AS DECIMAL(38, 6))) AS energy_j
                FROM gpu_hourly x {price_join}
                WHERE x.hour >= {lo} AND x.hour < {hi} AND x.unhealthy_energy_j > 0
                GROUP BY ALL ORDER BY ALL""").fetchall()

    def seg(cluster: str, model: str, vf: date, vt: date, price: Decimal) -> Segment:
        start = max(datetime.combine(vf, time(), UTC), datetime.combine(m0, time(), UTC))
        end = min(datetime.combine(vt, time(), UTC), datetime.combine(m1, time(), UTC))
        return Segment(cluster, model, vf, start, end, _d(price))

    capacity: dict[Segment, Decimal] = {}
    energy_total: dict[Segment, Decimal] = {}
    for cluster, model, vf, vt, price, cap_s, energy_j in cap_rows:
        sg = seg(cluster, model, vf, vt, price)
        capacity[sg] = _d(cap_s)
        energy_total[sg] = _d(energy_j)
    # segment -> tenant -> (reserved, used, hybrid, taken off for unhealthy ticks) GPU-seconds
    usage: dict[Segment, dict[str, tuple[Decimal, Decimal, Decimal, Decimal]]] = defaultdict(dict)
    # (segment) -> reason -> GPU-seconds taken off the tenants' bills (bill_unhealthy = false)
    unhealthy: dict[Segment, dict[str, Decimal]] = defaultdict(dict)
    for tenant, cluster, model, vf, vt, price, reason, r_s, u_s, h_s, k_s, _ in tenant_rows:
        sg = seg(cluster, model, vf, vt, price)
        off = _d(k_s) if reason and not policy.bill_unhealthy else Decimal(0)
        # an hour of a tenant can hold healthy and unhealthy slice-hours: add them up
        r0, u0, h0, o0 = usage[sg].get(tenant, (Decimal(0), Decimal(0), Decimal(0), Decimal(0)))
        usage[sg][tenant] = (r0 + _d(r_s), u0 + _d(u_s), h0 + _d(h_s), o0 + off)
        if off > 0:
            unhealthy[sg][reason] = unhealthy[sg].get(reason, Decimal(0)) + off

    def line(ltype: str, tenant: str, sg: Segment, seconds: Decimal, **kw: object) -> ChargeLine:
        hours = CTX.divide(seconds, Decimal(3600))
        cost = CTX.multiply(hours, sg.price)
        return ChargeLine(
            billing_period=month,
            line_no=0,
            line_type=ltype,
            tenant=tenant,
            cluster=sg.cluster,
            gpu_model=sg.model,
            charge_start=sg.start,
            charge_end=sg.end,
            price_from=sg.price_from,
            gpu_hours=hours,
            unit_price=sg.price,
            kwh=None,
            currency=currency,
            cost_exact=cost,
            cost=Decimal(0),
            mode=mode,
            idle_policy=idle_policy,
            **kw,  # type: ignore[arg-type]
        )

    lines: list[ChargeLine] = []
    expected = Decimal(0)
    capacity_s_total = Decimal(0)
    for sg in sorted(capacity, key=_seg_key):
        cap_s = capacity[sg]
        capacity_s_total += cap_s
        expected += CTX.divide(CTX.multiply(cap_s, sg.price), Decimal(3600))
        billed_total = Decimal(0)
        tenants = usage.get(sg, {})
        for tenant in sorted(tenants):
            r_s, u_s, h_s, off = tenants[tenant]
            # the tenant's reserved and used hours stay as measured; the bill leaves out `off`
            billed = {"reserved": r_s, "used": u_s, "hybrid": h_s}[mode] - off
            billed_total += billed
            lines.append(
                line(
                    "usage",
                    tenant,
                    sg,
                    billed,
                    reserved_gpu_hours=CTX.divide(r_s, Decimal(3600)),
                    used_gpu_hours=CTX.divide(u_s, Decimal(3600)),
                )
            )
        for reason, off in sorted(unhealthy.get(sg, {}).items()):
            billed_total += off
            lines.append(line("unhealthy", f"{UNHEALTHY_TENANT}/{reason}", sg, off))
        rest = cap_s - billed_total  # unallocated capacity (+ reserved-but-unused in used mode)
        if rest < 0:
            raise ConservationError(
                f"{month} {sg.cluster}/{sg.model} from {sg.price_from}: tenants billed "
                f"{billed_total} GPU-s, more than the capacity {cap_s} GPU-s (difference {-rest})"
            )
        names = sorted(tenants)
        if rest > 0 and idle_policy != "platform" and names:
            weights = (
                [tenants[t][0] for t in names] if idle_policy == "weighted" else [Decimal(1)] * len(names)
            )
            for tenant, part in zip(names, _split(rest, weights), strict=True):
                lines.append(line("idle_share", tenant, sg, part))
        elif rest > 0:
            lines.append(line("unallocated", UNALLOCATED_TENANT, sg, rest))
    if kwh_price is not None:
        by_seg: dict[Segment, dict[str, Decimal]] = defaultdict(dict)
        for tenant, cluster, model, vf, vt, price, e_j in energy_rows:
            by_seg[seg(cluster, model, vf, vt, price)][tenant] = _d(e_j)
        sick_by_seg: dict[Segment, dict[str, Decimal]] = defaultdict(dict)
        for reason, cluster, model, vf, vt, price, e_j in sick_energy_rows:
            sick_by_seg[seg(cluster, model, vf, vt, price)][f"{UNHEALTHY_TENANT}/{reason}"] = _d(e_j)
        for sg in sorted(energy_total, key=_seg_key):
            total_kwh = CTX.divide(energy_total[sg], Decimal(3_600_000))
            expected += CTX.multiply(total_kwh, kwh_price)
            shares = dict(by_seg.get(sg, {}))
            platform = sick_by_seg.get(sg, {})  # the unhealthy ticks' energy: never scaled
            healthy = energy_total[sg] - sum(platform.values(), Decimal(0))
            # Per-row rounding (to the micro-joule) can make the shares pass the healthy energy by a
            # few micro-joules; the largest share gives that back, so no line is ever negative.
            excess = sum(shares.values(), Decimal(0)) - healthy
            if excess > 0 and shares:
                shares[max(shares, key=lambda t: (shares[t], t))] -= excess
            shares.update(platform)
            given = Decimal(0)
            for tenant in sorted(shares):
                kwh = CTX.divide(shares[tenant], Decimal(3_600_000))
                given += kwh
                lines.append(_energy(line("energy", tenant, sg, Decimal(0)), kwh, kwh_price))
            if total_kwh - given > 0:
                lines.append(
                    _energy(line("energy", UNALLOCATED_TENANT, sg, Decimal(0)), total_kwh - given, kwh_price)
                )
    extra = list(extra_lines)
    for ln in extra:
        expected += ln.cost_exact
    lines = _number(_round_cents([*lines, *extra]))
    total = sum((ln.cost for ln in lines), Decimal(0))
    check_conservation(month, lines, expected)
    return Charges(lines, expected, total, CTX.divide(capacity_s_total, Decimal(3600)))


SEG_COLS = "x.cluster, x.model, p.valid_from, p.valid_to, p.gpu_hour"  # a price segment's columns


def _tenant_rows_sql(policy: ChargePolicy, lo: str, hi: str) -> str:
    """Per tenant, price segment and unhealthy reason ('' for healthy slice-hours): reserved, used
    (on the policy's basis), hybrid, and the seconds on unhealthy GPU ticks: billed by the mode
    (unh_s) and reserved (unh_r), for hours in [lo, hi)."""
    mode = policy.mode
    # The used basis picks the rollup column; sm_active already fell back to busy per tick.
    used_col, unh_used_col = (
        ("used_sm_s", "unhealthy_used_sm_s")
        if policy.used_basis == "sm_active"
        else ("used_s", "unhealthy_used_s")
    )
    price_join, seg_cols = rules.price_join("x"), SEG_COLS
    # Hybrid bills max(reserved, used) per slice-hour: a slice is its slice_id across agent restarts
    # and date partitions (the rollup rows of one hour can sit under two boots and two dates), so
    # reserved and used are summed per (slice_id, hour) before the burst is taken. Where the bursts
    # (used above reserved) of a GPU-hour add up past the capacity left unreserved, each burst is
    # scaled down to its share of that free capacity (floored to the nanosecond), so nobody pays
    # below what they reserved and the GPU is never billed past its capacity.
    # The reasons are gathered apart, over the few slice-hours that have one, and joined back: a
    # DISTINCT string aggregate over every slice-hour of a month tripled the query's time.
    keys = ("slice_id", "gpu_uuid", "hour", "tenant", "cluster", "model")
    on = " AND ".join(f"a.{k} IS NOT DISTINCT FROM b.{k}" for k in keys)
    return f"""
        WITH a AS (
            SELECT {", ".join(keys)},
                   sum(reserved_s) AS reserved_s, sum({used_col}) AS used_s,
                   sum(unhealthy_reserved_s) AS unh_r, sum({unh_used_col}) AS unh_u
            FROM slice_hourly WHERE hour >= {lo} AND hour < {hi} GROUP BY ALL),
        b AS (
            SELECT {", ".join(keys)},
                   string_agg(DISTINCT unhealthy_reason, '; ' ORDER BY unhealthy_reason) AS reason
            FROM slice_hourly
            WHERE hour >= {lo} AND hour < {hi} AND unhealthy_reason IS NOT NULL GROUP BY ALL),
        s AS (SELECT a.*, b.reason FROM a LEFT JOIN b ON {on}),
        x AS (SELECT *, greatest(used_s - reserved_s, 0) AS burst FROM s),
        g AS (
            SELECT gpu_uuid, hour, sum(burst) AS sum_burst, sum(reserved_s) AS sum_r FROM x GROUP BY ALL),
        c AS (
            SELECT gpu_uuid, hour, sum(capacity_s) AS capacity_s FROM gpu_hourly
            WHERE hour >= {lo} AND hour < {hi} GROUP BY ALL),
        h AS (
            SELECT x.*, x.reserved_s + CASE
                WHEN g.sum_burst > greatest(c.capacity_s - g.sum_r, 0)
                THEN CAST(floor(CAST(x.burst AS DOUBLE) * CAST(greatest(c.capacity_s - g.sum_r, 0) AS DOUBLE)
                                / CAST(g.sum_burst AS DOUBLE) * 1e9) / 1e9 AS DECIMAL(18, 9))
                ELSE x.burst END AS hybrid_s
            FROM x JOIN g USING (gpu_uuid, hour) JOIN c USING (gpu_uuid, hour)),
        -- the part of each slice-hour's bill that fell on unhealthy GPU ticks, by mode (hybrid:
        -- the larger of the two, never more than the slice-hour's hybrid bill)
        k AS (SELECT *, CASE {lit(mode)} WHEN 'reserved' THEN unh_r WHEN 'used' THEN unh_u
                             ELSE least(hybrid_s, greatest(unh_r, unh_u)) END AS unh_s FROM h)
        SELECT x.tenant, {seg_cols}, coalesce(x.reason, '') AS reason, sum(x.reserved_s) AS reserved_s,
               sum(x.used_s) AS used_s, sum(x.hybrid_s) AS hybrid_s, sum(x.unh_s) AS unh_s,
               sum(x.unh_r) AS unh_r
        FROM k x {price_join} GROUP BY ALL ORDER BY ALL"""


def unhealthy_by_tenant(
    acct: Accounting, month: str, policy: ChargePolicy = ChargePolicy()
) -> list[UnhealthyTime]:
    """Each tenant's slice time on unhealthy GPU ticks in `month`, per reason: its reserved
    GPU-hours there, what the mode bills of them and that at the segments' prices (to the cent,
    half-even), taken off the bill unless `policy.bill_unhealthy`. The same query as the lines, so
    the report's numbers are the ones the platform's `unhealthy` lines carry."""
    m0, m1 = month_bounds(month)
    rows = acct.sql(_tenant_rows_sql(policy, _ts(m0), _ts(m1))).fetchall()
    with decimal.localcontext(CTX):
        acc: dict[tuple[str, str], tuple[Decimal, Decimal, Decimal]] = {}
        for tenant, _c, _m, _vf, _vt, price, reason, _r, _u, _h, k_s, unh_r in rows:
            if not reason:
                continue
            r0, b0, w0 = acc.get((tenant, reason), (Decimal(0), Decimal(0), Decimal(0)))
            billed = CTX.divide(_d(k_s), Decimal(3600))
            acc[(tenant, reason)] = (
                r0 + CTX.divide(_d(unh_r), Decimal(3600)),
                b0 + billed,
                w0 + CTX.multiply(billed, _d(price)),
            )
    return [
        UnhealthyTime(
            tenant,
            reason,
            r.quantize(Q12, rounding=ROUND_HALF_EVEN, context=CTX),
            b.quantize(Q12, rounding=ROUND_HALF_EVEN, context=CTX),
            w.quantize(CENT, rounding=ROUND_HALF_EVEN, context=CTX),
            not policy.bill_unhealthy,
        )
        for (tenant, reason), (r, b, w) in sorted(acc.items())
    ]


def _energy(ln: ChargeLine, kwh: Decimal, price: Decimal) -> ChargeLine:
    return replace(ln, gpu_hours=Decimal(0), kwh=kwh, unit_price=price, cost_exact=CTX.multiply(kwh, price))


def _seg_key(sg: Segment) -> tuple:
    return (sg.cluster, sg.model, sg.start)


def subtotal_key(ln: ChargeLine) -> tuple:
    """The subtotal a line's cents are rounded within: its (cluster, GPU model, price segment),
    GPU time and energy apart. Corrections are billed in whole cents already (see close.py)."""
    return ("energy" if ln.line_type == "energy" else "gpu", ln.cluster, ln.gpu_model, ln.price_from)


def line_order(ln: ChargeLine) -> tuple:
    """The documented order of a period's lines: type, corrected period, tenant, cluster, model, start.

    Line numbers follow it, and so do the cents of exact ties (below)."""
    return (
        LINE_ORDER[ln.line_type],
        ln.corrects_period or "",
        ln.tenant,
        ln.cluster,
        ln.gpu_model,
        ln.charge_start,
    )


def _exact_cents(value: Decimal) -> Decimal:
    """A cost in cents, cleared of the last digits' noise of 60-digit division (seconds / 3600 and
    weighted splits), so equal costs compare equal and a half cent is exactly a half cent."""
    return CTX.divide(value, CENT).quantize(TIE, rounding=ROUND_HALF_EVEN, context=CTX)


def _subtotal_cents(group: list[ChargeLine]) -> int:
    """A subtotal's exact cost in whole cents, rounded half-even (summed before it is rounded)."""
    with decimal.localcontext(CTX):
        exact = sum((ln.cost_exact for ln in group), Decimal(0))
    return int(_exact_cents(exact).to_integral_value(ROUND_HALF_EVEN))


def _round_cents(lines: list[ChargeLine]) -> list[ChargeLine]:
    """Cents by largest remainder within each subtotal: floor every line, then hand the cents the
    subtotal is missing to the largest fractions.

    Each (cluster, model, price segment) subtotal is its exact cost rounded half-even to the cent,
    so a model's lines always add up to its own cost and the month adds up to its subtotals.
    Ties (equal fractions, e.g. tenants with identical exact costs) go to the line that comes first
    in `line_order`. Correction lines keep the cents they were given.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, ln in enumerate(lines):
        if ln.line_type != "correction":
            groups[subtotal_key(ln)].append(i)
    cents: dict[int, int] = {}
    for idx in groups.values():
        exact = {i: _exact_cents(lines[i].cost_exact) for i in idx}
        target = _subtotal_cents([lines[i] for i in idx])
        floors = {i: int(exact[i].to_integral_value(ROUND_FLOOR)) for i in idx}
        missing = target - sum(floors.values())
        order = sorted(idx, key=lambda i: (floors[i] - exact[i], line_order(lines[i])))
        for i in order[:missing]:
            floors[i] += 1
        cents.update(floors)
    return [replace(ln, cost=Decimal(cents[i]) * CENT) if i in cents else ln for i, ln in enumerate(lines)]


def _number(lines: list[ChargeLine]) -> list[ChargeLine]:
    return [replace(ln, line_no=i + 1) for i, ln in enumerate(sorted(lines, key=line_order))]


def check_conservation(month: str, lines: list[ChargeLine], expected: Decimal) -> None:
    """Lines add up exactly to the independently computed total, every subtotal to its own exact
    cost rounded to the cent, and every correction is a whole number of cents."""
    with decimal.localcontext(CTX):
        exact = sum((ln.cost_exact for ln in lines), Decimal(0))
    if abs(exact - expected) > Decimal("1e-30"):
        raise ConservationError(
            f"{month}: charge lines add up to {exact}, capacity x price is {expected} "
            f"(difference {exact - expected})"
        )
    groups: dict[tuple, list[ChargeLine]] = defaultdict(list)
    for ln in lines:
        if ln.line_type == "correction":
            if ln.cost != ln.cost.quantize(CENT):
                raise ConservationError(
                    f"{month}: correction line {ln.line_no} is {ln.cost}, not whole cents"
                )
        else:
            groups[subtotal_key(ln)].append(ln)
    for key, group in groups.items():
        want = sum((_exact_cents(ln.cost_exact) for ln in group), Decimal(0)).to_integral_value(
            ROUND_HALF_EVEN
        )
        cents = sum((ln.cost for ln in group), Decimal(0))
        if cents != want * CENT:
            raise ConservationError(
                f"{month}: subtotal {key} adds up to {cents} in cents, its exact cost rounds to "
                f"{want * CENT} (difference {cents - want * CENT})"
            )


def quantize_line(ln: ChargeLine) -> ChargeLine:
    """Stored form: quantities and exact costs to 12 places (the cents were rounded before)."""

    def q(v: Decimal | None) -> Decimal | None:
        return None if v is None else v.quantize(Q12, rounding=ROUND_HALF_EVEN, context=CTX)

    return replace(
        ln,
        gpu_hours=q(ln.gpu_hours),
        kwh=q(ln.kwh),
        cost_exact=q(ln.cost_exact),
        unit_price=q(ln.unit_price),
        reserved_gpu_hours=q(ln.reserved_gpu_hours),
        used_gpu_hours=q(ln.used_gpu_hours),
    )
