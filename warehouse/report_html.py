"""A monthly report as one self-contained HTML page: inline CSS, charts as inline SVG, no script, no
external URL, so it can be mailed or archived as is. The same MonthReport gives the same string.
Tenant, workload, cluster and node names are user data: every one is escaped.
"""

from __future__ import annotations

import html

from warehouse.ledger_model import MonthReport
from warehouse.report_charts import (
    Chart,
    to_svg,
)
from warehouse.report_content import TableBlock, _no_data, build_content

# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;margin:24px auto;
max-width:1200px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}.sub{color:#555;margin:0 0 12px}
.total{font-size:20px;font-weight:600;margin:12px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:8px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 10px}
.card .k{color:#555;font-size:12px}.card .v{font-size:16px;font-weight:600}
.chart svg{max-width:100%;height:auto}
table{border-collapse:collapse;width:100%;font-size:12px;margin:4px 0}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num,th.num{text-align:right;white-space:nowrap}
tr.correction td{background:#fff4e0}.note{color:#555;font-size:12px}td.nw{white-space:nowrap}
tr{break-inside:avoid}thead{display:table-header-group}
.nodata{font-size:16px;padding:12px;border:1px dashed #bbb;border-radius:6px}
footer{margin-top:32px;color:#555;font-size:12px;border-top:1px solid #ddd;padding-top:8px;
word-break:break-all}
""".strip()


_NUM = ' class="num"'
_NW = ' class="nw"'


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _html_table(block: TableBlock) -> list[str]:
    out = [f'<h3 id="{block.key}">{_e(block.title)}</h3>']
    if not block.rows:
        out.append(f'<p class="empty">{_e(block.empty)}</p>')
        return out
    head = "".join(f"<th{_NUM if c.numeric else ''}>{_e(c.header)}</th>" for c in block.columns)
    out.append(f"<table><thead><tr>{head}</tr></thead><tbody>")
    for i, row in enumerate(block.rows):
        cls = ' class="correction"' if i in block.marked else ""
        cells = "".join(
            f"<td{_NUM if c.numeric else _NW if c.nowrap else ''}>{_e(v)}</td>"
            for c, v in zip(block.columns, row, strict=True)
        )
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table>")
    if block.note:
        out.append(f'<p class="note">{_e(block.note)}</p>')
    return out


def render_html(report: MonthReport) -> str:
    """One self-contained page (inline CSS and SVG, no script, no URL); same report, same string."""
    content = build_content(report)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="gpuledger">',
        f"<title>{_e(content.title)}</title>",
        f"<style>{_CSS}</style></head>",
        "<body>",
        f"<h1>{_e(content.title)}</h1>",
        f'<p class="sub">{_e(content.subtitle)}</p>',
        f'<p class="total">Total {_e(content.total)}</p>',
    ]
    if not content.has_data:
        out.append(f'<p class="nodata">{_e(_no_data(content.month))}</p>')
    out.append('<div class="cards">')
    out += [
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>'
        for k, v in content.headline
    ]
    out.append("</div>")
    for section in content.sections:
        out.append(f"<h2>{_e(section.title)}</h2>")
        if not section.blocks:
            out.append(f'<p class="empty">{_e(section.empty)}</p>')
        for block in section.blocks:
            if isinstance(block, Chart):
                out.append(f'<h3 id="{block.key}">{_e(block.title)}</h3>')
                out.append(f'<div class="chart">{to_svg(block)}</div>')
            else:
                out += _html_table(block)
    out += [f"<footer>{_e(content.footer)}</footer>", "</body>", "</html>", ""]
    return "\n".join(out)
