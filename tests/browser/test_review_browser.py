"""An officer in a real browser (Debian chromium): signs in, opens a submission, looks at a photo, returns it with
a reason, approves another, downloads the Excel file; screenshots at 1280 and 360 px for docs/screenshots/."""

from __future__ import annotations

import os
import tempfile
from io import BytesIO
from pathlib import Path

import pytest
from openpyxl import load_workbook
from sqlmodel import Session, select

from models.tables import Assessment, OutboxMessage
from tests.livehttp import live_server
from tests.review_seed import GIA_LOC, PASSWORD, make_app, seed

pytestmark = pytest.mark.browser
# Screenshots go to a temporary folder, or to $HOCTAP_SCREENSHOTS_DIR (docs/screenshots to refresh the docs),
# so a test run does not rewrite tracked files.
SHOTS = Path(os.environ.get("HOCTAP_SCREENSHOTS_DIR") or tempfile.mkdtemp(prefix="hoctap-shots-"))


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


def sign_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/review/")
    assert "/review/login" in page.url
    page.get_by_label("Tên đăng nhập").fill(username)
    page.get_by_label("Mật khẩu").fill(PASSWORD)
    page.get_by_role("button", name="Đăng nhập").click()
    page.wait_for_url(f"{base}/review/")


def no_sideways_scroll(page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"page is {width}px wide"


def test_officer_reviews_in_a_browser(browser, engine, tmp_path) -> None:
    with Session(engine) as s:
        a = seed(s, code=GIA_LOC, tag="a", media_dir=tmp_path / "media")
        s.commit()
    app = make_app(engine, tmp_path)
    with live_server(app) as base:
        desk = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True, locale="vi-VN")
        page = desk.new_page()
        sign_in(page, base, a.username)
        assert page.get_by_role("heading", name="Tổng quan năm 2027").is_visible()
        shot(page, "review-dashboard-1280.png")

        page.get_by_role("link", name="Hồ sơ cần xét").first.click()
        page.get_by_text("Nguyễn Văn An").click()
        page.wait_for_url(f"{base}/review/assessments/{a.assessments['submitted']}")
        assert page.get_by_text("Tạm thời (draft)").first.is_visible()
        shot(page, "review-submission-1280.png")

        with desk.expect_page() as opened:
            page.get_by_alt_text("Ảnh minh chứng c3_2").click()
        photo = opened.value
        photo.wait_for_load_state()
        assert photo.evaluate("document.images[0].naturalWidth") == 64
        photo.close()
        thumb_width = page.evaluate("document.querySelector('.photos img').naturalWidth")
        assert thumb_width == 32

        page.get_by_label("Trả lại để bổ sung").check()
        page.get_by_label("Lý do / việc cần bổ sung").fill("Ảnh tủ sách bị mờ, xin gửi lại ảnh rõ hơn.")
        page.get_by_role("button", name="Ghi quyết định").click()
        page.wait_for_url("**?done=return")
        assert page.get_by_role("status").inner_text().startswith("✅ Đã ghi quyết định")
        assert page.locator(".history").inner_text().count("Ảnh tủ sách bị mờ") == 1

        page.goto(f"{base}/review/assessments/{a.assessments['confirmed1']}")
        page.get_by_label("Công nhận", exact=True).check()
        page.get_by_role("button", name="Ghi quyết định").click()
        page.wait_for_url("**?done=recognise")

        page.goto(f"{base}/review/?year=2027")
        with page.expect_download() as dl:
            page.get_by_role("link", name="⬇ Xuất Excel").click()
        download = dl.value
        assert download.suggested_filename == "hoctap-xa-gia-loc-2027.xlsx"
        wb = load_workbook(BytesIO(Path(download.path()).read_bytes()))
        listed = [r[:5] for r in wb["Danh sách công nhận"].iter_rows(min_row=4, values_only=True)]
        assert listed == [(1, "Vũ Văn Em", "Thôn Đoài", "Gia đình học tập", 100),
                          (2, "Lê Thị Bình", "Thôn Đông", "Gia đình học tập", 100)]
        page.goto(f"{base}/review/villages/{a.villages[0]}/print")
        shot(page, "review-print-qr-1280.png")
        page.goto(f"{base}/review/villages")
        shot(page, "review-villages-1280.png")
        page.goto(f"{base}/review/print/certificates?year=2027")
        assert page.locator(".certificate").count() == 2
        shot(page, "review-certificates-1280.png")
        desk.close()

        phone = browser.new_context(viewport={"width": 360, "height": 760}, device_scale_factor=2, is_mobile=True,
                                    has_touch=True, locale="vi-VN")
        page = phone.new_page()
        page.goto(f"{base}/review/login")
        shot(page, "review-login-360.png")
        sign_in(page, base, a.username)
        no_sideways_scroll(page)
        shot(page, "review-dashboard-360.png")
        page.goto(f"{base}/review/queue?year=2027&state=all")
        no_sideways_scroll(page)
        shot(page, "review-queue-360.png")
        page.goto(f"{base}/review/assessments/{a.assessments['submitted']}")
        no_sideways_scroll(page)
        shot(page, "review-submission-360.png")
        page.goto(f"{base}/review/villages/{a.villages[0]}/bulk?year=2027")
        no_sideways_scroll(page)
        phone.close()

    with Session(engine) as s:
        assert s.get(Assessment, a.assessments["submitted"]).status == "returned"
        assert s.get(Assessment, a.assessments["confirmed1"]).status == "recognised"
        texts = [m.payload["text"] for m in s.exec(select(OutboxMessage).order_by(OutboxMessage.id))]
    assert texts[0].endswith("\"Ảnh tủ sách bị mờ, xin gửi lại ảnh rõ hơn.\"")
    assert texts[1].startswith("✅ Chúc mừng!")
