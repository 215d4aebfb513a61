"""The view's filters as a URL query string, so that a copied link opens the same view.

Only the query string carries state; parsing never fails (a hand-edited link with junk in it
shows the default view for the junk), and every value is bounded in count and length because
the query string comes from whoever sends the request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import parse_qs, urlencode

RANGES: dict[str, int] = {"6h": 6, "24h": 24, "7d": 7 * 24, "30d": 30 * 24, "90d": 90 * 24}
DEFAULT_RANGE = "7d"
MAX_VALUES = 50
MAX_LEN = 200
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class Filters:
    clusters: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    range: str = DEFAULT_RANGE
    month: str | None = None  # chargeback page
    gpu: str | None = None  # GPUs page drill-down

    @property
    def hours(self) -> int:
        return RANGES[self.range]

    @classmethod
    def from_search(cls, search: str | None) -> Filters:
        q = parse_qs((search or "").lstrip("?"), keep_blank_values=False, max_num_fields=4 * MAX_VALUES)

        def many(key: str) -> tuple[str, ...]:
            vals = [v for v in q.get(key, []) if 0 < len(v) <= MAX_LEN]
            return tuple(dict.fromkeys(vals))[:MAX_VALUES]  # order kept, duplicates dropped

        def one(key: str) -> str | None:
            vals = many(key)
            return vals[0] if vals else None

        rng = one("range")
        month = one("month")
        return cls(
            clusters=many("cluster"),
            models=many("model"),
            tenants=many("tenant"),
            range=rng if rng in RANGES else DEFAULT_RANGE,
            month=month if month and _MONTH.match(month) else None,
            gpu=one("gpu"),
        )

    def to_search(self) -> str:
        pairs: list[tuple[str, str]] = []
        pairs += [("cluster", v) for v in self.clusters]
        pairs += [("model", v) for v in self.models]
        pairs += [("tenant", v) for v in self.tenants]
        if self.range != DEFAULT_RANGE:
            pairs.append(("range", self.range))
        if self.month:
            pairs.append(("month", self.month))
        if self.gpu:
            pairs.append(("gpu", self.gpu))
        return ("?" + urlencode(pairs)) if pairs else ""

    def with_(self, **kw: object) -> Filters:
        return replace(self, **kw)  # type: ignore[arg-type]
