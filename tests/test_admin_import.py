"""Villages (and households) from a spreadsheet: a bad row is reported by its number, good rows are kept."""

from __future__ import annotations

import argparse
from io import BytesIO

import pytest
from fastapi.testclient import TestClient
from openpyxl import Workbook
from sqlmodel import Session, col, select

from models.tables import Household, Village
from tests.review_seed import GIA_LOC, csrf_for, login, make_app, seed
from webhook import admin

ERRORS = [
    "Dòng 3: số nhân khẩu \"bốn\" không phải số nguyên.",
    "Dòng 4: thiếu tên thôn.",
    "Dòng 8: số điện thoại \"12345\" không đúng.",
]


def xlsx(rows: list[list]) -> bytes:
    wb = Workbook()
    for row in rows:
        wb.active.append(row)
    buffer = BytesIO()
    wb.save(buffer)
    return buffer.getvalue()


SHEET = [
    ["Thôn", "Chủ hộ", "Số nhân khẩu", "Điện thoại"],
    ["Thôn Bắc", "Nguyễn Văn Một", 4, "0912 345 678"],
    ["Thôn Bắc", "Trần Thị Hai", "bốn", None],
    [None, "Lê Văn Ba", 3, None],
    ["Thôn Nam", None, None, None],
    ["Thôn Nam", "Phạm Thị Bốn", 2, 912345679],  # a number cell: Excel dropped the leading 0
    ["thôn bắc", "Nguyễn Văn Một", 4, None],  # already there
    ["Thôn Nam", "Võ Văn Năm", 3, "12345"],
    [None, None, None, None],
]


def check_rows(engine) -> None:
    with Session(engine) as s:
        villages = s.exec(select(Village).where(Village.commune_code == GIA_LOC).order_by(col(Village.id))).all()
        households = s.exec(select(Household).order_by(col(Household.id))).all()
    assert [v.name for v in villages] == ["Thôn Bắc", "Thôn Nam"]
    assert len({v.invite_code for v in villages}) == 2 and all(len(v.invite_code) == 8 for v in villages)
    assert [(h.head_name, h.members, h.phone, h.village_id) for h in households] == [
        ("Nguyễn Văn Một", 4, "+84912345678", villages[0].id),
        ("Phạm Thị Bốn", 2, "+84912345679", villages[1].id),
    ]


def test_import_keeps_good_rows_and_reports_bad_ones(session, engine) -> None:
    admin.ensure_commune(session, GIA_LOC)
    report = admin.import_villages(session, GIA_LOC, xlsx(SHEET))
    session.commit()
    assert report.villages_created == ["Thôn Bắc", "Thôn Nam"]
    assert (report.households_created, report.skipped) == (2, 1)
    assert report.errors == ERRORS
    check_rows(engine)
    # importing the same file again adds nothing new
    again = admin.import_villages(session, GIA_LOC, xlsx(SHEET))
    assert (again.villages_created, again.households_created, again.skipped) == ([], 0, 3)


def test_a_sheet_without_the_village_column_is_refused(session) -> None:
    admin.ensure_commune(session, GIA_LOC)
    with pytest.raises(admin.ReviewError, match="cần có cột \"Thôn\""):
        admin.import_villages(session, GIA_LOC, xlsx([["Tên"], ["A"]]))
    with pytest.raises(admin.ReviewError, match="Không đọc được tệp"):
        admin.import_villages(session, GIA_LOC, b"not a workbook")


def test_upload_page(engine, tmp_path) -> None:
    with Session(engine) as s:
        a = seed(s, code=GIA_LOC, tag="a")
        s.commit()
    with TestClient(make_app(engine, tmp_path)) as client:
        login(client, a.username)
        files = {"file": ("thon.xlsx", xlsx(SHEET), "application/octet-stream")}
        resp = client.post("/review/villages/import", data={"csrf": csrf_for(client)}, files=files)
        assert resp.status_code == 200
        for line in ERRORS:
            assert line.replace('"', "&#34;") in resp.text
        assert "Thêm 2 thôn, 2 hộ, bỏ qua 1 hộ đã có." in resp.text
        bad = client.post("/review/villages/import", data={"csrf": csrf_for(client)},
                          files={"file": ("x.xlsx", b"nope", "application/octet-stream")})
        assert bad.status_code == 400 and "Không đọc được tệp" in bad.text
        no_csrf = client.post("/review/villages/import", files=files)
        assert no_csrf.status_code == 403
    with Session(engine) as s:
        names = [v.name for v in s.exec(select(Village).order_by(col(Village.id)))]
    assert names == ["Thôn Đông", "Thôn Đoài", "Thôn Bắc", "Thôn Nam"]


def test_villages_import_command(engine, db_url, tmp_path, capsys) -> None:
    from models.settings import get_settings

    path = tmp_path / "thon.xlsx"
    path.write_bytes(xlsx(SHEET))
    settings = get_settings(data_dir=tmp_path, database_url=db_url)
    code = admin.villages_import_command(settings, argparse.Namespace(file=str(path), commune=GIA_LOC))
    assert code == 1  # some rows were bad
    out = capsys.readouterr()
    assert out.out == "Thêm 2 thôn, 2 hộ, bỏ qua 1 hộ đã có.\n"
    assert out.err.splitlines() == ERRORS
    check_rows(engine)
