"""The commune's Excel file: summary against targets, recognised lists (all and per village), criteria statuses."""

from __future__ import annotations

import math
import re
import zipfile
from io import BytesIO
from typing import Any
from xml.sax.saxutils import escape

from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.utils.exceptions import IllegalCharacterError
from openpyxl.worksheet.worksheet import Worksheet
from sqlmodel import Session, col, select

from flows.answers import fold
from models.tables import Assessment, Commune
from webhook.admin import (
    STATUS_NAMES,
    TITLES,
    answers_unless_stored,
    computed_many,
    criteria_for,
    dashboard,
    live_titles,
    proposal,
    stored_proposal,
    subject_infos,
    title_name,
    village_names,
)

LIST_HEADER = ("STT", "Tên", "Thôn", "Danh hiệu", "Điểm", "Bộ tiêu chí")
SUMMARY_HEADER = ("Danh hiệu", "Số đối tượng", "Đăng ký", "Đã gửi", "Đề xuất đạt", "Được công nhận", "Tỉ lệ (%)",
                  "Chỉ tiêu (%)", "Đạt chỉ tiêu", "Bộ tiêu chí")
BOLD = Font(bold=True)
HEAD_FILL = PatternFill("solid", fgColor="DDEBF7")
DRAFT_FILL = PatternFill("solid", fgColor="FFF2CC")


def export_filename(commune: Commune, year: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", fold(commune.name)).strip("-") or str(commune.code)
    return f"hoctap-{slug}-{year}.xlsx"


def set_note(session: Session, commune: Commune) -> dict[str, str]:
    """Per title: "version — status", with the draft parts named (criteria or pass mark)."""
    notes: dict[str, str] = {}
    for title, cset in criteria_for(commune).items():
        parts = [f"{cset.version} — {STATUS_NAMES.get(cset.status, cset.status)}"]
        drafts = [c.id for c in cset.criteria if c.status == "draft"]
        if drafts:
            parts.append(f"tiêu chí tạm thời (draft): {', '.join(drafts)}")
        if cset.pass_rule.status == "draft":
            parts.append("điểm đạt tạm thời (draft)")
        notes[title] = "; ".join(parts)
    return notes


def _sheet_title(name: str, used: set[str]) -> str:
    base = re.sub(r"[\[\]:*?/\\]", " ", name).strip()[:28] or "Thôn"
    title, n = base, 2
    while title.lower() in used:
        title = f"{base[:25]} ({n})"
        n += 1
    used.add(title.lower())
    return title


def _head(ws: Worksheet, heading: str, note: str, header: tuple[str, ...], widths: tuple[int, ...]) -> None:
    ws.append([heading])
    ws["A1"].font = Font(bold=True, size=13)
    ws.append([note])
    ws["A2"].font = Font(italic=True)
    ws.append(list(header))
    for cell in ws[3]:
        cell.font = BOLD
        cell.fill = HEAD_FILL
        cell.alignment = Alignment(wrap_text=True, vertical="top")
    for index, width in enumerate(widths):
        ws.column_dimensions[chr(ord("A") + index)].width = width
    ws.freeze_panes = "A4"


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 2)


def recognised_rows(session: Session, commune: Commune, year: int) -> list[dict[str, Any]]:
    """Recognised subjects of the year, ordered by village, title, name."""
    sets = criteria_for(commune)
    needs = live_titles(sets)
    rows = list(session.connection().execute(
        select(Assessment.id, Assessment.subject_type, Assessment.subject_id, Assessment.village_id, Assessment.title,
               Assessment.year, Assessment.total, Assessment.proposal, answers_unless_stored(sets))
        .where(Assessment.commune_code == commune.code, Assessment.year == year, Assessment.status == "recognised")
        .order_by(col(Assessment.id))).all())
    infos = subject_infos(session, {(kind, ident) for _id, kind, ident, *_rest in rows}, contacts=False)
    vnames = village_names(session, [commune.code])
    computed = computed_many(session, {(kind, ident, y) for _id, kind, ident, _v, t, y, *_rest in rows if t in needs})
    out = []
    for _id, kind, ident, village_id, title, y, total, stored, text in rows:
        info = infos[(kind, ident)]
        vid = village_id or info.village_id
        if text is None:
            result = stored_proposal(sets.get(title), stored)
        else:
            result = proposal(sets.get(title), text, computed.get((kind, ident, y)) if title in needs else None)
        out.append({"name": info.name, "village": vnames.get(vid or 0, ""), "title": title,
                    "title_name": title_name(title), "points": _number(result[0] if result else (total or 0))})
    order = {t: i for i, t in enumerate(TITLES)}
    out.sort(key=lambda r: (r["village"] == "", fold(r["village"]), order.get(r["title"], 99), fold(r["name"])))
    return out


def export_workbook(session: Session, commune: Commune, year: int) -> bytes:
    """The XLSX bytes for one commune and year."""
    board = dashboard(session, commune, year)
    notes = set_note(session, commune)
    any_draft = any("draft" in n for n in notes.values())
    draft_note = ("Lưu ý: một số tiêu chí hoặc điểm đạt đang ở trạng thái Tạm thời (draft), chờ bộ tiêu chí chính "
                  "thức của tỉnh — xem cột \"Bộ tiêu chí\" và trang \"Tiêu chí\".") if any_draft else \
        "Bộ tiêu chí: xem cột \"Bộ tiêu chí\"."
    wb = Workbook()
    ws = wb.active
    ws.title = "Tổng hợp"
    _head(ws, f"Tổng hợp danh hiệu học tập năm {year} — {commune.name}", draft_note, SUMMARY_HEADER,
          (22, 12, 10, 10, 12, 14, 10, 12, 12, 50))
    for row in board.titles:
        reached = {True: "Đạt", False: "Chưa đạt", None: ""}[row.reached]
        ws.append([row.name, row.subjects, row.registered, row.submitted, row.proposed, row.recognised,
                   row.share, row.target, reached, notes.get(row.title, "")])

    # The list sheets hold nearly all the cells: openpyxl writes their headings, _with_rows their rows (see there).
    listed = recognised_rows(session, commune, year)
    lists: dict[int, list[list[Any]]] = {}
    ws = wb.create_sheet("Danh sách công nhận")
    _head(ws, f"Danh sách được công nhận năm {year} — {commune.name}", draft_note, LIST_HEADER,
          (6, 30, 20, 22, 8, 50))
    lists[len(wb.worksheets)] = [[index, r["name"], r["village"], r["title_name"], r["points"],
                                  notes.get(r["title"], "")] for index, r in enumerate(listed, start=1)]
    by_village: dict[str, list[dict[str, Any]]] = {}
    for r in listed:
        by_village.setdefault(r["village"], []).append(r)

    used = {"tổng hợp", "danh sách công nhận", "tiêu chí"}
    for village in board.villages:
        ws = wb.create_sheet(_sheet_title(village.name, used))
        _head(ws, f"{village.name} — được công nhận năm {year}", draft_note, LIST_HEADER, (6, 30, 20, 22, 8, 50))
        lists[len(wb.worksheets)] = [[index, r["name"], r["village"], r["title_name"], r["points"],
                                      notes.get(r["title"], "")]
                                     for index, r in enumerate(by_village.get(village.name, ()), start=1)]

    ws = wb.create_sheet("Tiêu chí")
    _head(ws, "Trạng thái bộ tiêu chí", "Chính thức: đã đối chiếu văn bản; Một phần: chưa đầy đủ; "
          "Tạm thời (draft): bản tạm, chờ văn bản chính thức.", ("Danh hiệu", "Mã", "Tiêu chí", "Điểm tối đa",
                                                                  "Trạng thái"), (22, 8, 70, 12, 18))
    for cset in criteria_for(commune).values():
        ws.append([cset.name, "", f"Điểm đạt: {cset.pass_rule.min_points:g}/{cset.max_points}", "",
                   STATUS_NAMES.get(cset.pass_rule.status, cset.pass_rule.status)])
        for c in cset.criteria:
            ws.append([cset.name, c.id, c.text, c.max_points, STATUS_NAMES.get(c.status, c.status)])
            if c.status == "draft":
                ws.cell(row=ws.max_row, column=5).fill = DRAFT_FILL
    buffer = BytesIO()
    wb.save(buffer)
    return _with_rows(buffer.getvalue(), lists)


# openpyxl (without lxml) spends ~0.1 ms per cell serialising through ElementTree: 60,000 cells for a commune of
# 5,000 families took 10 s on a loaded 2-core machine. The list sheets are plain values, so their rows are written
# here as the same XML openpyxl writes for them (inline strings, numbers "%.16g", empty cells) and put into the
# sheets openpyxl wrote with their headers, widths and frozen panes. Text is never a formula here.
def _cell_xml(ref: str, value: Any) -> str:
    if value is None:
        return f'<c r="{ref}" t="n"/>'
    if isinstance(value, bool):
        return f'<c r="{ref}" t="b"><v>{int(value)}</v></c>'
    if isinstance(value, int | float):
        if math.isnan(value) or math.isinf(value):
            return f'<c r="{ref}" t="n"><v></v></c>'
        return f'<c r="{ref}" t="n"><v>{value:.16g}</v></c>'
    text = str(value)[:32767]
    if text == "":
        return f'<c r="{ref}" t="inlineStr"/>'
    if ILLEGAL_CHARACTERS_RE.search(text):
        raise IllegalCharacterError(f"{text} cannot be used in worksheets.")
    space = ' xml:space="preserve"' if text.strip() and text != text.strip() else ""
    return f'<c r="{ref}" t="inlineStr"><is><t{space}>{escape(text)}</t></is></c>'


def _rows_xml(rows: list[list[Any]], first: int) -> tuple[str, int]:
    """The rows' XML and the number of the last row."""
    out = []
    letters = [get_column_letter(i) for i in range(1, 1 + max((len(r) for r in rows), default=0))]
    texts: dict[str, str] = {}  # villages, titles and notes repeat on every row
    number = first - 1
    for number, row in enumerate(rows, start=first):
        cells = []
        for letter, value in zip(letters, row, strict=False):
            if isinstance(value, str) and value:
                xml = texts.get(value)
                if xml is None:
                    xml = _cell_xml("{ref}", value)
                    if len(texts) < 10_000:
                        texts[value] = xml
                cells.append(xml.replace("{ref}", f"{letter}{number}", 1))
            else:
                cells.append(_cell_xml(f"{letter}{number}", value))
        out.append(f'<row r="{number}">{"".join(cells)}</row>')
    return "".join(out), number


def _with_rows(data: bytes, rows: dict[int, list[list[Any]]], first: int = 4) -> bytes:
    """The workbook with ``rows`` appended (from row ``first``) to sheet N (1-based, openpyxl's sheetN.xml)."""
    source = zipfile.ZipFile(BytesIO(data))
    out = BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            body = source.read(item.filename)
            match = re.fullmatch(r"xl/worksheets/sheet(\d+)\.xml", item.filename)
            extra = rows.get(int(match.group(1))) if match else None
            if extra:
                text = body.decode("utf-8")
                cut = text.rindex("</sheetData>")
                xml, last = _rows_xml(extra, first)
                text = text[:cut] + xml + text[cut:]
                # the sheet's extent as openpyxl would have written it (readers size sheets by it); the rows
                # are never wider than the header openpyxl wrote
                found = re.search(r'<dimension ref="A1:([A-Z]+)\d+"', text)
                if found:
                    text = f'{text[:found.start()]}<dimension ref="A1:{found.group(1)}{last}"{text[found.end():]}'
                body = text.encode("utf-8")
            target.writestr(item, body)
    return out.getvalue()
