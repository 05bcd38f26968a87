"""The Excel export, re-opened with openpyxl: exact rows, Vietnamese intact, draft statuses noted."""

from __future__ import annotations

import argparse
from io import BytesIO

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlmodel import Session

from models.tables import Assessment, Officer
from tests.review_seed import GIA_LOC, login, make_app, seed
from webhook import admin

NOTE_GD = ("qd448-2016 — Một phần; tiêu chí tạm thời (draft): c2_3, c3_1, c3_2, c4_1, c4_2; "
           "điểm đạt tạm thời (draft)")
DRAFT_NOTE = ("Lưu ý: một số tiêu chí hoặc điểm đạt đang ở trạng thái Tạm thời (draft), chờ bộ tiêu chí chính "
              "thức của tỉnh — xem cột \"Bộ tiêu chí\" và trang \"Tiêu chí\".")


@pytest.fixture
def seeded(engine):
    with Session(engine) as s:
        a = seed(s, code=GIA_LOC, tag="a")
        officer = s.get(Officer, a.officer_id)
        admin.record_decision(s, s.get(Assessment, a.assessments["submitted"]), officer=officer, decision="recognise")
        s.commit()
    return a


def rows(ws) -> list[list]:
    return [list(r) for r in ws.iter_rows(values_only=True)]


def check_workbook(data: bytes) -> None:
    wb = load_workbook(BytesIO(data))
    assert wb.sheetnames == ["Tổng hợp", "Danh sách công nhận", "Thôn Đoài", "Thôn Đông", "Tiêu chí"]
    listed = rows(wb["Danh sách công nhận"])
    assert listed == [
        ["Danh sách được công nhận năm 2027 — Xã Gia Lộc", None, None, None, None, None],
        [DRAFT_NOTE, None, None, None, None, None],
        ["STT", "Tên", "Thôn", "Danh hiệu", "Điểm", "Bộ tiêu chí"],
        [1, "Vũ Văn Em", "Thôn Đoài", "Gia đình học tập", 100, NOTE_GD],
        [2, "Nguyễn Văn An", "Thôn Đông", "Gia đình học tập", 100, NOTE_GD],
    ]
    assert rows(wb["Thôn Đông"])[3:] == [[1, "Nguyễn Văn An", "Thôn Đông", "Gia đình học tập", 100, NOTE_GD]]
    assert rows(wb["Thôn Đoài"])[3:] == [[1, "Vũ Văn Em", "Thôn Đoài", "Gia đình học tập", 100, NOTE_GD]]
    summary = rows(wb["Tổng hợp"])
    assert summary[2] == ["Danh hiệu", "Số đối tượng", "Đăng ký", "Đã gửi", "Đề xuất đạt", "Được công nhận",
                          "Tỉ lệ (%)", "Chỉ tiêu (%)", "Đạt chỉ tiêu", "Bộ tiêu chí"]
    assert [r[:9] for r in summary[3:]] == [
        ["Gia đình học tập", 6, 6, 6, 5, 2, 33.3, 70, "Chưa đạt"],
        ["Dòng họ học tập", 1, 1, 0, 0, 0, 0, 60, "Chưa đạt"],
        ["Cộng đồng học tập cấp thôn", 2, 0, 1, 0, 0, 0, 60, "Chưa đạt"],
        ["Đơn vị học tập", 1, 0, 0, 0, 0, 0, 70, "Chưa đạt"],
        ["Công dân học tập", 0, 0, 0, 0, 0, None, None, None],
    ]
    assert summary[3][9] == NOTE_GD
    criteria = rows(wb["Tiêu chí"])
    by_id = {(r[0], r[1]): r for r in criteria[3:]}
    assert by_id[("Gia đình học tập", "c3_2")][4] == "Tạm thời (draft)"
    assert by_id[("Gia đình học tập", "c1_1")][2:] == [
        "Trẻ em trong độ tuổi phổ cập đều được đến trường, hoàn thành phổ cập giáo dục (trừ trường hợp ốm đau, "
        "bệnh tật, không có khả năng học tập)", 10, "Chính thức"]
    assert by_id[("Gia đình học tập", None)][2:] == ["Điểm đạt: 80/100", None, "Tạm thời (draft)"]


def test_export_route_returns_the_exact_workbook(engine, tmp_path, seeded) -> None:
    with TestClient(make_app(engine, tmp_path)) as client:
        login(client, seeded.username)
        resp = client.get("/review/export.xlsx?year=2027")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert resp.headers["content-disposition"] == 'attachment; filename="hoctap-xa-gia-loc-2027.xlsx"'
    check_workbook(resp.content)


def test_export_command_writes_the_same_file(engine, db_url, tmp_path, seeded, capsys) -> None:
    from models.settings import get_settings

    settings = get_settings(data_dir=tmp_path, database_url=db_url)
    out = tmp_path / "out"
    assert admin.export_command(settings, argparse.Namespace(commune=GIA_LOC, year=2027, out=str(out))) == 0
    path = out / "hoctap-xa-gia-loc-2027.xlsx"
    assert f"Đã ghi {path}" in capsys.readouterr().out
    check_workbook(path.read_bytes())
    assert admin.export_command(settings, argparse.Namespace(commune=1, year=2027, out=str(out))) == 2
