"""Recognition certificates (giấy công nhận) as PDF: Vietnamese text that survives a round trip through the PDF
(extracted with poppler's pdftotext when installed), one page per recognised subject, and scoping."""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from models.tables import Household, ReviewDecision
from tests.review_seed import GIA_LOC, KIM_BANG, csrf_for, login, make_app, seed
from webhook.printables import FONTS_DIR, Certificate, certificates_pdf, place_name, vn_long_date

DECIDED = datetime(2027, 12, 15, 2, 30, tzinfo=UTC)  # 15/12/2027 09:30 in Vietnam

needs_pdftotext = pytest.mark.skipif(shutil.which("pdftotext") is None,
                                     reason="pdftotext (poppler-utils) not installed")


def pdf_pages(data: bytes) -> list[str]:
    """The text of each page, lines with their whitespace squeezed."""
    out = subprocess.run(["pdftotext", "-layout", "-enc", "UTF-8", "-", "-"], input=data, capture_output=True,
                         check=True).stdout.decode("utf-8")
    pages = out.split("\f")
    if pages and not pages[-1].strip():
        pages.pop()
    return [" ".join(page.split()) for page in pages]


@pytest.fixture
def env(engine, tmp_path):
    with Session(engine) as s:
        a = seed(s, code=GIA_LOC, tag="a", media_dir=tmp_path / "media")
        b = seed(s, code=KIM_BANG, tag="b", media_dir=tmp_path / "media")
        s.add(ReviewDecision(assessment_id=a.assessments["recognised"], decision="recognise", reason="",
                             officer_id=a.officer_id, created_at=DECIDED))
        s.commit()
    with TestClient(make_app(engine, tmp_path)) as client:
        login(client, a.username)
        yield client, a, b, engine


def test_the_font_ships_with_the_code() -> None:
    for name in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "LICENSE-DejaVu.txt"):
        assert (FONTS_DIR / name).is_file(), name
    assert "Bitstream" in (FONTS_DIR / "LICENSE-DejaVu.txt").read_text(encoding="utf-8")


def test_vietnamese_dates_and_places() -> None:
    assert vn_long_date(date(2027, 12, 15)) == "ngày 15 tháng 12 năm 2027"
    assert vn_long_date(date(2028, 1, 5)) == "ngày 05 tháng 01 năm 2028"  # 0 before days 1–9, months 1–2
    assert vn_long_date(date(2027, 3, 9)) == "ngày 09 tháng 3 năm 2027"
    assert vn_long_date(None) == "ngày …… tháng …… năm ……"
    assert place_name("Xã Gia Lộc") == "Gia Lộc" and place_name("Phường Kim Bảng") == "Kim Bảng"
    c = Certificate("household", "Vũ Văn Em", "Gia đình học tập", 2027, "Thôn Đoài", "Phường Kim Bảng",
                    "Ninh Bình", date(2028, 1, 5))
    assert c.address == "Thôn Đoài, phường Kim Bảng, tỉnh Ninh Bình"
    assert c.place_and_date == "Kim Bảng, ngày 05 tháng 01 năm 2028"


def test_certificate_pdf_of_one_recognised_household(env) -> None:
    client, a, _, _ = env
    resp = client.get(f"/review/assessments/{a.assessments['recognised']}/certificate.pdf")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/pdf"
    assert resp.headers["content-disposition"] == (
        f'inline; filename="giay-cong-nhan-2027-{a.assessments["recognised"]}.pdf"')
    assert resp.content.startswith(b"%PDF-")
    assert b"/FontFile2" in resp.content and b"DejaVuSans" in resp.content  # the font travels inside the PDF
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) not installed: text not checked")
    [page] = pdf_pages(resp.content)
    for expected in ("ỦY BAN NHÂN DÂN", "XÃ GIA LỘC", "CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM",
                     "Độc lập - Tự do - Hạnh phúc", "GIẤY CÔNG NHẬN", "“GIA ĐÌNH HỌC TẬP” NĂM 2027",
                     "Gia đình ông/bà: Vũ Văn Em", "Thôn Đoài, xã Gia Lộc, thành phố Hải Phòng",
                     "Gia Lộc, ngày 15 tháng 12 năm 2027", "TM. ỦY BAN NHÂN DÂN", "CHỦ TỊCH",
                     "(Ký, ghi rõ họ tên, đóng dấu)"):
        assert expected in page, (expected, page)


@needs_pdftotext
def test_the_association_can_issue_it_and_decomposed_names_print_whole(env) -> None:
    client, a, _, engine = env
    with Session(engine) as s:
        h = s.get(Household, a.households["em"])
        h.head_name = unicodedata.normalize("NFD", "Vũ Văn Ểm")  # as some phone keyboards send it
        s.add(h)
        s.commit()
    resp = client.get(f"/review/assessments/{a.assessments['recognised']}/certificate.pdf?issuer=hkh")
    [page] = pdf_pages(resp.content)
    assert "Gia đình ông/bà: Vũ Văn Ểm" in page
    assert page.startswith("HỘI KHUYẾN HỌC CỘNG HÒA") and "TM. BAN CHẤP HÀNH" in page
    assert "ỦY BAN NHÂN DÂN" not in page


def test_no_certificate_for_what_is_not_recognised_or_not_ours(env) -> None:
    client, a, b, _ = env
    for key in ("submitted", "confirmed1", "returned", "village"):
        assert client.get(f"/review/assessments/{a.assessments[key]}/certificate.pdf").status_code == 404, key
    assert client.get(f"/review/assessments/{b.assessments['recognised']}/certificate.pdf").status_code == 404
    assert client.get(f"/review/assessments/{b.assessments['recognised']}/certificate").status_code == 404
    assert client.get("/review/assessments/999999/certificate.pdf").status_code == 404
    assert client.get(f"/review/print/certificates.pdf?commune={b.code}").status_code == 404
    assert client.get(f"/review/print/certificates.pdf?village={b.villages[1]}").status_code == 404
    assert client.get(f"/review/print/certificates?village={b.villages[1]}").status_code == 404


def test_signed_out_visitors_get_no_pdf(env, engine, tmp_path) -> None:
    _, a, _, _ = env
    with TestClient(make_app(engine, tmp_path)) as anon:
        resp = anon.get(f"/review/assessments/{a.assessments['recognised']}/certificate.pdf", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/review/login")


@needs_pdftotext
def test_print_all_recognised_one_page_each_with_filters(env) -> None:
    client, a, _, _ = env
    resp = client.post(f"/review/assessments/{a.assessments['confirmed1']}/decisions", follow_redirects=False,
                       data={"csrf": csrf_for(client), "decision": "recognise", "reason": ""})
    assert resp.status_code == 303
    resp = client.get("/review/print/certificates.pdf?year=2027&title=gia_dinh")
    assert resp.status_code == 200 and resp.content.startswith(b"%PDF-")
    assert resp.headers["content-disposition"] == 'inline; filename="giay-cong-nhan-2027-gia-dinh.pdf"'
    pages = pdf_pages(resp.content)
    assert len(pages) == 2
    # by village, then name: Thôn Đoài before Thôn Đông
    assert "Vũ Văn Em" in pages[0] and "Thôn Đoài" in pages[0]
    assert "Lê Thị Bình" in pages[1] and "Thôn Đông, xã Gia Lộc" in pages[1]
    assert all("GIẤY CÔNG NHẬN" in p for p in pages)
    one = pdf_pages(client.get(f"/review/print/certificates.pdf?year=2027&village={a.villages[0]}").content)
    assert len(one) == 1 and "Lê Thị Bình" in one[0]
    none = client.get("/review/print/certificates.pdf?year=2027&title=dong_ho")
    assert none.status_code == 200 and pdf_pages(none.content) == ["Chưa có hồ sơ nào được công nhận."]


def test_html_preview_links_to_the_pdf(env) -> None:
    client, a, _, _ = env
    page = client.get(f"/review/assessments/{a.assessments['recognised']}/certificate").text
    assert f'href="/review/assessments/{a.assessments["recognised"]}/certificate.pdf?issuer=ubnd"' in page
    assert "GIẤY CÔNG NHẬN" in page and "Gia Lộc, ngày 15 tháng 12 năm 2027" in page
    page = client.get(f"/review/print/certificates?year=2027&village={a.villages[1]}").text
    assert (f'href="/review/print/certificates.pdf?year=2027&amp;commune={GIA_LOC}&amp;village={a.villages[1]}'
            f'&amp;issuer=ubnd"') in page
    assert page.count('class="a4 landscape certificate"') == 1


def test_a_long_clan_name_stays_inside_the_frame(tmp_path: Path) -> None:
    long = "Dòng họ Nguyễn Đình làng Phượng Dực, chi thứ ba, nhánh trưởng đời thứ mười hai"
    data = certificates_pdf([Certificate("clan", long, "Dòng họ học tập", 2027, "", "Xã Gia Lộc",
                                         "Thành phố Hải Phòng", None)])
    assert data.startswith(b"%PDF-")
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) not installed")
    [page] = pdf_pages(data)
    assert long in page and "Gia Lộc, ngày …… tháng …… năm ……" in page
    boxes = subprocess.run(["pdftotext", "-bbox", "-", "-"], input=data, capture_output=True, check=True).stdout
    xs = [float(x) for x in re.findall(rb'xM(?:in|ax)="([0-9.]+)"', boxes)]
    frame = 11 / 25.4 * 72  # the inner frame, 11 mm from the edge of an A4 landscape page (842 pt wide)
    assert xs and min(xs) > frame and max(xs) < 842 - frame
