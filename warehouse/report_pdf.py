"""A monthly report as PDF (reportlab), drawn from the same content as the HTML: words never split,
tables broken only between rows with their header repeated.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Sequence

from warehouse.ledger_model import MonthReport
from warehouse.report_charts import (
    Chart,
    to_png,
)
from warehouse.report_content import TableBlock, _no_data, build_content

# ---------------------------------------------------------------------------------------------
# PDF


def _pdf_date(month: str):  # type: ignore[no-untyped-def]
    """The PDF's creation date: the first instant after the billing period (when it could be closed)."""
    year, mon = (int(p) for p in month.split("-"))
    year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    stamp = f"D:{year:04d}{mon:02d}01000000+00'00'"
    return lambda *_ymdhms: stamp


PDF_CELL_SIZE = 6.5
PDF_MIN_SIZE = 4.0
PDF_PAD = 12.0  # left + right cell padding (reportlab's default 6 + 6)


def pdf_column_layout(
    block: TableBlock, width: float, size: float = PDF_CELL_SIZE
) -> tuple[list[float], list[float]]:
    """Column widths and font sizes for a PDF table in which no word is ever broken.

    Text wraps at spaces only, never inside a word: a GPU model (`NVIDIA A100-SXM4-80GB`), a UUID
    or a slice id stays whole on its line. Each column is at least as wide as its widest word
    (numbers and `nowrap` columns such as GPU models: their whole text), the rest of the page
    width going to the columns in proportion to their weights. When the widest words of all
    columns together do not fit the page, every column keeps its share of them and the font
    shrinks until they fit (never below PDF_MIN_SIZE)."""

    from reportlab.pdfbase.pdfmetrics import stringWidth

    def words(text: str, whole: bool) -> list[str]:
        return [text] if whole else text.split()

    need = []
    for i, c in enumerate(block.columns):
        w = max((stringWidth(x, "Helvetica-Bold", size) for x in words(c.header, c.numeric)), default=0.0)
        for row in block.rows:
            for x in words(row[i], c.numeric or c.nowrap):
                w = max(w, stringWidth(x, "Helvetica", size))
        need.append(w)
    fixed = PDF_PAD + 1.0  # padding, + 1 pt: a word exactly as wide as the cell still fits
    if sum(need) + fixed * len(need) > width:
        scale = max(0.0, width - fixed * len(need)) / sum(need)
        if size * scale >= PDF_MIN_SIZE:
            return [n * scale + fixed for n in need], [size * scale] * len(need)
        # even the smallest type does not fit: the smallest type, the width shared by need
        total = sum(need) * PDF_MIN_SIZE / size + fixed * len(need)
        return [(n * PDF_MIN_SIZE / size + fixed) * width / total for n in need], [PDF_MIN_SIZE] * len(need)
    need = [n + fixed for n in need]
    weights = sum(c.weight for c in block.columns)
    widths = [max(n, width * c.weight / weights) for n, c in zip(need, block.columns, strict=True)]
    excess = sum(widths) - width
    slack = [w - n for w, n in zip(widths, need, strict=True)]
    total_slack = sum(slack)
    if excess > 0 and total_slack > 0:
        widths = [w - excess * s / total_slack for w, s in zip(widths, slack, strict=True)]
    return widths, [size] * len(need)


def render_pdf(report: MonthReport, path: str | os.PathLike[str]) -> None:
    """The same content as `render_html`, as a landscape A4 PDF with standard fonts.

    Byte-identical output: the same MonthReport gives the same bytes (checked by a test) with the
    same reportlab and matplotlib versions. The document is built with reportlab's `invariant`
    mode (fixed internal timestamp, file ID from content), and its CreationDate/ModDate show the
    first instant after the billing period rather than the time of rendering. Setting
    SOURCE_DATE_EPOCH in the environment changes reportlab's internal timestamp and so the bytes
    (still reproducible under the same value). Text is in the standard Helvetica fonts, so
    pypdf and search find it; characters outside Latin-1 (e.g. CJK tenant names) print as boxes.
    """
    from reportlab.lib import colors
    from reportlab.lib.enums import TA_RIGHT
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import cm
    from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    content = build_content(report)
    page = landscape(A4)
    margin = 1.2 * cm
    width = page[0] - 2 * margin
    ss = getSampleStyleSheet()
    h1 = ParagraphStyle("h1", parent=ss["Heading1"], fontSize=16, leading=19, spaceAfter=2)
    h2 = ParagraphStyle("h2", parent=ss["Heading2"], fontSize=13, leading=16, spaceBefore=10)
    h3 = ParagraphStyle("h3", parent=ss["Heading3"], fontSize=10, leading=12, spaceBefore=6)
    body = ParagraphStyle("body", parent=ss["Normal"], fontSize=9, leading=11)
    note = ParagraphStyle("note", parent=body, fontSize=7, leading=9, textColor=colors.HexColor("#555555"))
    total_style = ParagraphStyle("total", parent=body, fontName="Helvetica-Bold", fontSize=14, leading=18)
    cell = ParagraphStyle("cell", parent=body, fontSize=6.5, leading=8)
    cell_num = ParagraphStyle("cellnum", parent=cell, alignment=TA_RIGHT)
    head = ParagraphStyle("head", parent=cell, fontName="Helvetica-Bold")
    head_num = ParagraphStyle("headnum", parent=head, alignment=TA_RIGHT)
    # words are never split (a model name, a UUID), nor hyphenated: lines break at spaces only
    cell_whole = ParagraphStyle(
        "cellwhole", parent=cell, splitLongWords=0, embeddedHyphenation=0, hyphenationLang=""
    )
    h3_keep = ParagraphStyle("h3keep", parent=h3, keepWithNext=1)
    grid = colors.HexColor("#cccccc")

    def p(text: str, style: ParagraphStyle) -> Paragraph:
        return Paragraph(html.escape(text, quote=False), style)

    def table(block: TableBlock) -> list:  # type: ignore[type-arg]
        title = p(block.title, h3_keep)  # never left alone at the foot of a page
        if not block.rows:
            return [title, p(block.empty, body)]
        widths, sizes = pdf_column_layout(block, width)
        text_styles = [
            ParagraphStyle(f"cell{i}", parent=cell_whole, fontSize=sz, leading=sz * 1.25)
            for i, sz in enumerate(sizes)
        ]
        head_styles = [
            ParagraphStyle(f"head{i}", parent=head_num if c.numeric else head, fontSize=sz, leading=sz * 1.25)
            for i, (c, sz) in enumerate(zip(block.columns, sizes, strict=True))
        ]
        data = [[p(c.header, head_styles[i]) for i, c in enumerate(block.columns)]]
        # Numbers are short and never wrap: plain strings (drawn as is, no markup, much faster to
        # lay out than a Paragraph each) in right-aligned columns; text wraps in Paragraphs, at
        # spaces only.
        data += [
            [
                v if c.numeric else p(v, text_styles[i])
                for i, (c, v) in enumerate(zip(block.columns, row, strict=True))
            ]
            for row in block.rows
        ]
        style = [
            ("FONT", (0, 1), (-1, -1), "Helvetica", cell.fontSize, cell.leading),
            *[
                ("FONT", (i, 1), (i, -1), "Helvetica", sizes[i], sizes[i] * 1.25)
                for i in range(len(sizes))
                if sizes[i] != cell.fontSize
            ],
            *[("ALIGN", (i, 1), (i, -1), "RIGHT") for i, c in enumerate(block.columns) if c.numeric],
            ("GRID", (0, 0), (-1, -1), 0.25, grid),
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#f0f0f0")),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("TOPPADDING", (0, 0), (-1, -1), 1.5),
            ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
        ]
        style += [
            ("BACKGROUND", (0, i + 1), (-1, i + 1), colors.HexColor("#fff4e0")) for i in sorted(block.marked)
        ]
        # Page breaks fall between rows, never inside one, and the header row repeats on each page.
        t = Table(data, colWidths=widths, repeatRows=1, splitByRow=1, splitInRow=0, style=TableStyle(style))
        t.gpuledger_key = block.key  # type: ignore[attr-defined]
        flow: list = [title, t]  # type: ignore[type-arg]
        if block.note:
            flow.append(p(block.note, note))
        return flow

    def image(chart: Chart, box_w: float) -> Image:
        fw, fh = chart.figure.get_size_inches()
        return Image(io.BytesIO(to_png(chart)), width=box_w, height=box_w * fh / fw)

    def charts(group: Sequence[Chart]) -> list:  # type: ignore[type-arg]
        half = (width - 0.4 * cm) / 2
        cells = [[p(c.title, h3), image(c, half)] for c in group]
        rows = [cells[i : i + 2] for i in range(0, len(cells), 2)]
        if len(rows[-1]) == 1:
            rows[-1].append("")
        tstyle = TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)])
        return [Table(rows, colWidths=[half + 0.2 * cm] * 2, style=tstyle, hAlign="LEFT")]

    story: list = [  # type: ignore[type-arg]
        p(content.title, h1),
        p(content.subtitle, body),
        Spacer(1, 4),
        p(f"Total {content.total}", total_style),
    ]
    if not content.has_data:
        story.append(p(_no_data(content.month), total_style))
    kv = [[p(k, cell), p(v, cell_num)] for k, v in content.headline]
    half_rows = (len(kv) + 1) // 2
    left, right = kv[:half_rows], kv[half_rows:] + [["", ""]] * (half_rows - len(kv[half_rows:]))
    story.append(
        Table(
            [a + b for a, b in zip(left, right, strict=True)],
            colWidths=[width * 0.22, width * 0.18, width * 0.22, width * 0.18],
            style=TableStyle([("LINEBELOW", (0, 0), (-1, -1), 0.25, grid)]),
            hAlign="LEFT",
        )
    )
    for section in content.sections:
        story.append(p(section.title, h2))
        if not section.blocks:
            story.append(p(section.empty, body))
        pending: list[Chart] = []
        for block in [*section.blocks, None]:
            if isinstance(block, Chart):
                pending.append(block)
                continue
            if pending:
                story += charts(pending)
                pending = []
            if block is not None:
                story += table(block)
    story += [Spacer(1, 8), p(content.footer, note)]

    date_formatter = _pdf_date(content.month)

    def on_page(canvas, doc) -> None:  # type: ignore[no-untyped-def]
        canvas.setDateFormatter(date_formatter)
        canvas.saveState()
        canvas.setFont("Helvetica", 6.5)
        canvas.setFillColor(colors.HexColor("#555555"))
        canvas.drawString(margin, 0.6 * cm, content.footer)
        canvas.drawRightString(page[0] - margin, 0.6 * cm, f"page {doc.page}")
        canvas.restoreState()

    doc = SimpleDocTemplate(
        str(path),
        pagesize=page,
        leftMargin=margin,
        rightMargin=margin,
        topMargin=margin,
        bottomMargin=margin,
        title=content.title,
        author="gpuledger",
        subject=content.subtitle,
        creator="gpuledger",
        invariant=1,
    )
    doc.build(story, onFirstPage=on_page, onLaterPages=on_page)
