"""The simulator in headless Chromium: a new family registers, self-assesses, sends a photo and submits through
the real conversation; then the demo officer signs in and finds the submission in the review queue.

Screenshots go to a temporary folder, or to $HOCTAP_SCREENSHOTS_DIR (docs/screenshots to refresh the docs).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from flows.i18n import t
from models.settings import get_settings
from tests.livehttp import live_server
from webhook.app import create_app
from webhook.demo import _demo_jpeg, ensure_demo

pytestmark = pytest.mark.browser

PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("HOCTAP_SCREENSHOTS_DIR") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def base_url(engine, tmp_path):
    settings = get_settings(data_dir=tmp_path, database_url="", telegram_bot_token="", zalo_bot_token="",
                            zalo_oa_app_id="")
    ensure_demo(engine, settings)
    with live_server(create_app(settings, engine=engine, background=False)) as base:
        yield base


class Phone:
    """Drives the simulator page like a person: taps buttons, types, sends photos; waits for the bot."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.bot = page.locator("[data-testid=bot-message]")

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='1']")

    def _await_reply(self, before: int) -> None:
        self.page.wait_for_function(
            "n => document.querySelectorAll('[data-testid=bot-message]').length > n"
            " && !document.querySelector('.typing')", arg=before, timeout=15000)

    def tap(self, label: str) -> None:
        before = self.bot.count()
        self.page.get_by_role("button", name=label, exact=True).last.click()
        self._await_reply(before)

    def type(self, text: str) -> None:
        before = self.bot.count()
        self.page.get_by_test_id("text-input").fill(text)
        self.page.get_by_test_id("text-input").press("Enter")
        self._await_reply(before)

    def photo(self, data: bytes, name: str = "tu-sach.jpg", mime: str = "image/jpeg") -> None:
        before = self.bot.count()
        self.page.get_by_test_id("photo-input").set_input_files(files=[{"name": name, "mimeType": mime, "buffer": data}])
        self._await_reply(before)

    def last_text(self) -> str:
        return self.bot.last.locator(".text").inner_text()

    def last_buttons(self) -> list[str]:
        return [b.strip() for b in self.bot.last.locator(".kb-btn").all_inner_texts()]


def test_family_registers_assesses_sends_photo_submits_and_officer_sees_it(browser, base_url, shots) -> None:
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, locale="vi-VN")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    phone = Phone(page)
    phone.open(f"{base_url}/simulator?chat=web-browser-family")
    page.get_by_test_id("welcome").wait_for()
    page.screenshot(path=shots / "simulator-welcome-360.png")

    # sign-up: tap the welcome button, then the roles; type the commune without diacritics
    before = phone.bot.count()
    page.get_by_role("button", name="Bắt đầu", exact=True).click()
    phone._await_reply(before)
    assert phone.last_text() == t("start.hello")
    phone.tap(t("btn.role_household"))
    phone.type("gia loc")
    phone.tap("Gia Lộc – Hải Phòng")
    phone.tap("Thôn Phú Lộc")
    phone.type("Trần Văn Tâm")
    phone.type("4")
    assert "📱 Gửi số điện thoại" in phone.last_buttons()
    before = phone.bot.count()
    page.get_by_role("button", name="📱 Gửi số điện thoại").last.click()
    page.get_by_test_id("text-input").fill("0912 345 678")
    page.get_by_test_id("text-input").press("Enter")
    phone._await_reply(before)
    phone.tap(t("btn.agree"))
    assert "Trần Văn Tâm" in page.get_by_test_id("messages").inner_text()
    page.screenshot(path=shots / "simulator-signup-360.png")
    phone.tap(t("btn.register"))
    phone.tap(t("btn.assess"))

    # the self-assessment: "Có" where offered (typed once, without diacritics), the first option otherwise,
    # skip optional photos, send a photo where one is required
    sent_photo = typed = False
    for _ in range(40):
        text, labels = phone.last_text(), phone.last_buttons()
        if "Gửi Hội Khuyến học" in labels:
            break
        if "cần ảnh" in text:
            page.screenshot(path=shots / "simulator-question-360.png")
            phone.photo(_demo_jpeg(777, label="browser"))
            assert "📷" in phone.last_text()
            sent_photo = True
            phone.tap(t("btn.done"))
        elif "📷" in text:
            phone.tap(t("btn.skip"))
        elif "Có" in labels and not typed:
            phone.type("co")
            typed = True
        elif "Có" in labels:
            phone.tap("Có")
        else:
            phone.tap(labels[0])
    assert sent_photo
    assert "100/100" in page.get_by_test_id("messages").inner_text()
    phone.tap("Gửi Hội Khuyến học")
    assert "✅ Đã gửi" in page.get_by_test_id("messages").inner_text()
    page.screenshot(path=shots / "simulator-submitted-360.png")
    assert errors == []

    # the same chat on a wide screen: the history comes back from the server
    wide = browser.new_context(viewport=DESKTOP, locale="vi-VN").new_page()
    Phone(wide).open(f"{base_url}/simulator?chat=web-browser-family")
    assert "✅ Đã gửi" in wide.get_by_test_id("messages").inner_text()
    assert wide.locator(".msg-user img, .msg-user").count() > 10
    wide.screenshot(path=shots / "simulator-1280.png")

    # the demo officer signs in and finds the family in the review queue
    wide.goto(f"{base_url}/")
    assert "demo" in wide.get_by_test_id("demo-signin").inner_text()
    wide.screenshot(path=shots / "simulator-home-1280.png", full_page=True)
    wide.goto(f"{base_url}/review/login")
    wide.fill("input[name=username]", "demo")
    wide.fill("input[name=password]", "demo")
    wide.get_by_role("button", name="Đăng nhập").click()
    wide.wait_for_url(re.compile(r"/review/(\?.*)?$"))
    wide.goto(f"{base_url}/review/queue")
    assert "Trần Văn Tâm" in wide.content()
    wide.screenshot(path=shots / "simulator-review-queue-1280.png", full_page=True)

    # the officer returns it; the family's open simulator tab receives the decision by itself (polling)
    wide.get_by_role("link", name=re.compile("Trần Văn Tâm")).click()
    wide.check("input[name=decision][value=return]")
    wide.fill("textarea[name=reason]", "Ảnh tủ sách bị mờ, xin gửi lại ảnh rõ hơn.")
    wide.get_by_role("button", name="Ghi quyết định").click()
    wide.wait_for_load_state()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=bot-message] .text')]"
        ".some(e => e.textContent.includes('Ảnh tủ sách bị mờ'))", timeout=15000)
    page.screenshot(path=shots / "simulator-returned-360.png")
    wide.context.close()
    context.close()


def test_invite_link_personas_and_refused_photo(browser, base_url, shots) -> None:
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, locale="vi-VN")
    page = context.new_page()
    phone = Phone(page)
    page.goto(f"{base_url}/")
    page.get_by_test_id("link-simulator").wait_for()
    page.screenshot(path=shots / "simulator-home-360.png", full_page=True)

    # an invite link starts the conversation in the village; the URL keeps the chat, not the start
    phone.open(f"{base_url}/simulator?start=v_demodongcan")
    page.wait_for_function("document.querySelectorAll('[data-testid=bot-message]').length > 0")
    assert "Thôn Đông Cận" in phone.last_text()
    assert "start=" not in page.url and "chat=web-" in page.url

    # a file that is not a photo is refused with the channel's words
    phone.photo(b"not a photo at all", name="ghi-chu.txt", mime="text/plain")
    assert phone.last_text() == t("channel.photo_not_image")

    # a second tab speaks as the village leader persona: a different chat, recognised by name
    leader = context.new_page()
    Phone(leader).open(f"{base_url}/simulator")
    leader.get_by_test_id("persona").select_option("demo-leader")
    leader.wait_for_url(re.compile(r"chat=demo-leader"))
    leader.wait_for_selector("body[data-ready='1']")
    assert leader.get_by_test_id("persona").input_value() == "demo-leader"
    before = leader.locator("[data-testid=bot-message]").count()
    leader.get_by_test_id("text-input").fill("/start")
    leader.get_by_test_id("text-input").press("Enter")
    Phone(leader)._await_reply(before)
    assert "Phạm Văn Đức" in leader.get_by_test_id("messages").inner_text()
    assert "Phạm Văn Đức" not in page.get_by_test_id("messages").inner_text()
    leader.screenshot(path=shots / "simulator-leader-360.png")
    context.close()
