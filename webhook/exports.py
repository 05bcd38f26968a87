"""The commune's Excel file: summary against targets, recognised lists (all and per village), criteria statuses."""

from __future__ import annotations

import re
from io import BytesIO
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.worksheet.worksheet import Worksheet
from sqlmodel import Session, col, select

from flows.answers import fold
from models.tables import Assessment, Commune
from webhook.admin import (
    STATUS_NAMES,
    TITLES,
    criteria_for,
    dashboard,
    score_assessment,
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
    rows = list(session.exec(select(Assessment).where(Assessment.commune_code == commune.code, Assessment.year == year,
                                                      Assessment.status == "recognised").order_by(col(Assessment.id))))
    infos = subject_infos(session, {(a.subject_type, a.subject_id) for a in rows})
    vnames = village_names(session, [commune.code])
    sets = criteria_for(commune)
    out = []
    for a in rows:
        info = infos[(a.subject_type, a.subject_id)]
        vid = a.village_id or info.village_id
        result = score_assessment(session, a, sets)
        out.append({"name": info.name, "village": vnames.get(vid or 0, ""), "title": a.title,
                    "title_name": title_name(a.title),
                    "points": _number(result.total if result else (a.total or 0))})
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

    listed = recognised_rows(session, commune, year)
    ws = wb.create_sheet("Danh sách công nhận")
    _head(ws, f"Danh sách được công nhận năm {year} — {commune.name}", draft_note, LIST_HEADER,
          (6, 30, 20, 22, 8, 50))
    for index, r in enumerate(listed, start=1):
        ws.append([index, r["name"], r["village"], r["title_name"], r["points"], notes.get(r["title"], "")])

    used = {"tổng hợp", "danh sách công nhận", "tiêu chí"}
    for village in board.villages:
        mine = [r for r in listed if r["village"] == village.name]
        ws = wb.create_sheet(_sheet_title(village.name, used))
        _head(ws, f"{village.name} — được công nhận năm {year}", draft_note, LIST_HEADER, (6, 30, 20, 22, 8, 50))
        for index, r in enumerate(mine, start=1):
            ws.append([index, r["name"], r["village"], r["title_name"], r["points"], notes.get(r["title"], "")])

    ws = wb.create_sheet("Tiêu chí")
    _head(ws, "Trạng thái bộ tiêu chí", "Chính thức: đã đối chiếu văn bản; Một phần: chưa đầy đủ; "
          "Tạm thời (draft): bản tạm, chờ văn bản chính thức.", ("Danh hiệu", "Mã", "Tiêu chí", "Điểm tối đa",
                                                                  "Trạng thái"), (22, 8, 70, 12, 18))
    for title, cset in criteria_for(commune).items():
        ws.append([cset.name, "", f"Điểm đạt: {cset.pass_rule.min_points:g}/{cset.max_points}", "",
                   STATUS_NAMES.get(cset.pass_rule.status, cset.pass_rule.status)])
        for c in cset.criteria:
            ws.append([cset.name, c.id, c.text, c.max_points, STATUS_NAMES.get(c.status, c.status)])
            if c.status == "draft":
                ws.cell(row=ws.max_row, column=5).fill = DRAFT_FILL
        del title
    buffer = BytesIO()
    wb.save(buffer)
    return buffer.getvalue()
