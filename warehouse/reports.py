"""Monthly chargeback reports (fleet or one tenant) from a month's MonthReport: which files, named how.

The content is built once (warehouse/report_content.py) and drawn as HTML (report_html.py) and PDF
(report_pdf.py); this module writes them. Names are user data: a tenant's file name part is made
safe and never collides with another's.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from warehouse.ledger_model import MonthReport
from warehouse.report_content import _check
from warehouse.report_html import render_html
from warehouse.report_pdf import render_pdf

FORMATS = ("html", "pdf")
OTHER_FORMATS = ("csv", "focus")  # written by the export module, not here
FLEET = "fleet"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# ---------------------------------------------------------------------------------------------
# Files


def safe_name(tenant: str | None) -> str:
    """A tenant name as a file name part; a changed (or reserved) name gets a hash so none collide.

    `a/b` and `a_b` are different tenants and must not overwrite each other's report, and a
    tenant called `fleet` must not overwrite the fleet report.
    """
    if tenant is None:
        return FLEET
    cleaned = _UNSAFE.sub("_", tenant).strip("._")[:80] or "_"
    if cleaned != tenant or tenant.lower() == FLEET:
        cleaned += "-" + hashlib.sha256(tenant.encode()).hexdigest()[:8]
    return cleaned


def report_filename(report: MonthReport, ext: str) -> str:
    return f"{report.month}-{safe_name(report.tenant)}.{ext}"


def _formats(formats: Iterable[str] | str) -> list[str]:
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    wanted: list[str] = []
    for raw in items:
        fmt = raw.strip().lower()
        if fmt not in FORMATS + OTHER_FORMATS:
            raise ValueError(f"report format {raw!r}: expected some of {', '.join(FORMATS + OTHER_FORMATS)}")
        if fmt in FORMATS and fmt not in wanted:
            wanted.append(fmt)
    return wanted


def write_reports(
    report: MonthReport, out_dir: str | os.PathLike[str], formats: Iterable[str] | str
) -> list[Path]:
    """Write the html/pdf reports (csv and focus are accepted and left to the export module).

    Each file is written under a temporary name and renamed into place, so a reader never sees
    half a report. Returns the written paths in the order of `formats`.
    """
    wanted = _formats(formats)
    _check(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for fmt in wanted:
        target = out / report_filename(report, fmt)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            if fmt == "html":
                tmp.write_text(render_html(report), encoding="utf-8")
            else:
                render_pdf(report, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(target)
    return written
