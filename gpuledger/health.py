"""What a GPU's health signals mean, defined once for the collector and the warehouse.

Why here: the collector picks a tick's critical Xid (``xid_critical``) and the warehouse's
unhealthy rule (`warehouse.rules.UNHEALTHY_REASON_SQL`) takes GPU time off tenants' bills for the
same codes. The collector must not import the warehouse, so the table lives in the shared contract
package both import; a code added here changes what is collected and what is billed together.
"""

from __future__ import annotations

from collections.abc import Iterable

# Xid codes (NVIDIA's Xid catalog, "Xid Errors" in the GPU deployment guide) that mean the GPU or
# its memory could not do the tenant's work in that tick; application faults (13 graphics engine
# exception, 31 MMU fault, 43 app stopped ...) are the tenant's own and stay billed.
CRITICAL_XIDS: dict[int, str] = {
    48: "double-bit ECC error",
    63: "ECC page retirement / row remap event",
    64: "ECC page retirement / row remap failure",
    74: "NVLink error",
    79: "GPU fell off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}


def first_critical_xid(codes: Iterable[int]) -> int | None:
    """The first code of a tick's Xid events that is in `CRITICAL_XIDS`; None when none is.

    The first, not the last: a critical Xid is often followed by benign ones from the same fault
    (an application's 13 or 43 after a 79), and the tick must still say what broke.
    """
    return next((c for c in codes if c in CRITICAL_XIDS), None)
