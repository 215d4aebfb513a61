"""Everything about money a bill depends on, in one frozen object: tenant rules, price book,
chargeback mode and idle policy, energy price, idle settings.

The close records it in the manifest (and its hash) and reads it back to compute corrections with
the settings a month was closed with; reports and dashboards make their Accounting connections
and charge policies from it, so every reader of a month prices it the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from warehouse.accounting import Accounting
from warehouse.chargeback import ChargePolicy, Charges, compute_charges
from warehouse.lake import Lake
from warehouse.ledger_model import ChargeLine
from warehouse.pricing import PriceBook


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


@dataclass(frozen=True)
class CloseSettings:
    """Everything about money a close depends on; recorded in the manifest and reused for corrections."""

    tenant_rules: tuple[dict[str, Any], ...]
    default_tenant: str
    currency: str
    book: tuple[dict[str, Any], ...]
    kwh: str
    mode: str
    idle_policy: str
    idle_util_ratio: float
    idle_min_minutes: float
    bill_unhealthy: bool = False
    used_basis: str = "busy"

    @classmethod
    def from_config(cls, cfg: Any) -> CloseSettings:
        return cls(
            tenant_rules=tuple(cfg.tenants.rules),
            default_tenant=cfg.tenants.default,
            currency=cfg.pricing.currency,
            book=tuple(PriceBook(cfg.pricing.book, cfg.pricing.currency).as_config()),
            kwh=cfg.pricing.kwh,
            mode=cfg.pricing.mode,
            idle_policy=cfg.pricing.idle_policy,
            idle_util_ratio=cfg.alerts.idle_util_ratio,
            idle_min_minutes=cfg.alerts.idle_min_minutes,
            bill_unhealthy=cfg.pricing.bill_unhealthy,
            used_basis=cfg.pricing.used_basis,
        )

    def as_json(self) -> dict[str, Any]:
        # Issue 17's keys are written only when not their defaults, so the settings (and the
        # manifest hash) of a month closed before them are unchanged.
        extra: dict[str, Any] = {}
        if self.bill_unhealthy:
            extra["bill_unhealthy"] = True
        if self.used_basis != "busy":
            extra["used_basis"] = self.used_basis
        return {
            "tenants": {"rules": list(self.tenant_rules), "default": self.default_tenant},
            "pricing": {
                "currency": self.currency,
                "book": list(self.book),
                "kwh": self.kwh,
                "mode": self.mode,
                "idle_policy": self.idle_policy,
                **extra,
            },
            "alerts": {"idle_util_ratio": self.idle_util_ratio, "idle_min_minutes": self.idle_min_minutes},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CloseSettings:
        return cls(
            tenant_rules=tuple(d["tenants"]["rules"]),
            default_tenant=d["tenants"]["default"],
            currency=d["pricing"]["currency"],
            book=tuple(d["pricing"]["book"]),
            kwh=d["pricing"]["kwh"],
            mode=d["pricing"]["mode"],
            idle_policy=d["pricing"]["idle_policy"],
            idle_util_ratio=d["alerts"]["idle_util_ratio"],
            idle_min_minutes=d["alerts"]["idle_min_minutes"],
            bill_unhealthy=d["pricing"].get("bill_unhealthy", False),
            used_basis=d["pricing"].get("used_basis", "busy"),
        )

    def sha256(self) -> str:
        return hashlib.sha256(_canonical(self.as_json())).hexdigest()

    def charges(self, acct: Accounting, month: str, extra_lines: Sequence[ChargeLine] = ()) -> Charges:
        """The month's lines under these settings (`acct` must have been made by `accounting`)."""
        return compute_charges(acct, month, self.policy(), extra_lines)

    def policy(self) -> ChargePolicy:
        return ChargePolicy(
            self.mode,
            self.idle_policy,
            Decimal(self.kwh) if self.kwh else None,
            bill_unhealthy=self.bill_unhealthy,
            used_basis=self.used_basis,
        )

    def accounting(self, lake: Lake | str | Path, priced: bool = True, **kw: Any) -> Accounting:
        """An Accounting connection under these settings; `priced=False` leaves the price book out
        (usage and idle without costs, for a config that has no prices yet)."""
        return Accounting(
            lake,
            tenant_rules=self.tenant_rules,
            default_tenant=self.default_tenant,
            idle_util_ratio=self.idle_util_ratio,
            idle_min_minutes=self.idle_min_minutes,
            price_book=PriceBook(self.book, self.currency) if priced else None,
            **kw,
        )
