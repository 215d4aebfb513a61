"""The effective-dated price book: $ per GPU-hour per GPU model, one currency.

A GPU model with no price on a date is an error naming the model and the date: a $0 line would
quietly hand out free GPUs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from warehouse.errors import PriceError

FAR_FUTURE = date(9999, 12, 31)


@dataclass(frozen=True)
class Price:
    model: str
    valid_from: date
    valid_to: date  # exclusive: the next entry's start for the same model
    gpu_hour: Decimal


def _decimal(value: Any, where: str) -> Decimal:
    # Floats from TOML go through their shortest repr ("2.1"), never through binary expansion.
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise PriceError(f"{where}: {value!r} is not a decimal price") from exc
    if not d.is_finite() or d < 0:
        raise PriceError(f"{where}: {value!r} is not a price >= 0")
    return d


class PriceBook:
    """Prices by model and date; entries of a model take effect on their `from` date (UTC)."""

    def __init__(self, entries: Iterable[Mapping[str, Any]], currency: str = "USD") -> None:
        self.currency = currency
        by_model: dict[str, list[tuple[date, Decimal]]] = {}
        for i, e in enumerate(entries):
            where = f"pricing.book[{i}] = {dict(e)!r}"
            unknown = set(e) - {"model", "gpu_hour", "from"}
            if unknown:
                raise PriceError(f"{where}: unknown keys {sorted(unknown)}; expected model, gpu_hour, from")
            model = e.get("model")
            if not isinstance(model, str) or not model:
                raise PriceError(f"{where}: expected a non-empty 'model'")
            if "gpu_hour" not in e:
                raise PriceError(f"{where}: expected 'gpu_hour' (price per GPU-hour)")
            frm = e.get("from", "1970-01-01")
            try:
                start = frm if isinstance(frm, date) else date.fromisoformat(str(frm))
            except ValueError as exc:
                raise PriceError(f"{where}: 'from' = {frm!r} is not a date YYYY-MM-DD") from exc
            dates = by_model.setdefault(model, [])
            if any(d == start for d, _ in dates):
                raise PriceError(f"{where}: a second price for {model!r} from {start}")
            dates.append((start, _decimal(e["gpu_hour"], where)))
        self.prices: list[Price] = []
        for model in sorted(by_model):
            seq = sorted(by_model[model])
            for j, (start, price) in enumerate(seq):
                end = seq[j + 1][0] if j + 1 < len(seq) else FAR_FUTURE
                self.prices.append(Price(model, start, end, price))

    def price_at(self, model: str, day: date) -> Price:
        for p in self.prices:
            if p.model == model and p.valid_from <= day < p.valid_to:
                return p
        known = sorted({p.model for p in self.prices})
        raise PriceError(
            f"no price for GPU model {model!r} on {day.isoformat()}: add a pricing.book entry "
            f"(models with prices: {', '.join(known) or 'none'})"
        )

    def rows(self) -> list[tuple[str, date, date, Decimal]]:
        """(model, from, to, price) for a SQL join."""
        return [(p.model, p.valid_from, p.valid_to, p.gpu_hour) for p in self.prices]

    def as_config(self) -> list[dict[str, str]]:
        """Canonical entries for manifests: the book a month was closed with."""
        return [
            {"model": p.model, "from": p.valid_from.isoformat(), "gpu_hour": str(p.gpu_hour)}
            for p in self.prices
        ]


def month_bounds(month: str) -> tuple[date, date]:
    """'YYYY-MM' -> (first day, first day of the next month)."""
    try:
        y, m = (int(x) for x in month.split("-"))
        start = date(y, m, 1)
    except ValueError as exc:
        raise ValueError(f"month {month!r}: expected YYYY-MM") from exc
    if len(month) != 7:
        raise ValueError(f"month {month!r}: expected YYYY-MM")
    end = date(y + (m == 12), m % 12 + 1, 1)
    return start, end


def days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days)]
