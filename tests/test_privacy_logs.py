"""Message text, phone numbers and the bot token never appear in logs (Nghị định 13/2023).

A full e2e conversation runs through the app with its real background runtime (webhook mode, inbox worker,
outbox sender, scheduler) against FakeTelegram, with ALL logging captured at DEBUG by a handler on the
root logger (tracebacks included). Then the captured text is scanned for what the person typed, the phone
number in every usual format, the bot token and the webhook secret. The crash harness does the same for
the serve subprocess's stderr (tests/reliability/crash_harness.py, ``scan_log``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.fakes import telegram_server as tg
from tests.test_telegram_e2e import SECRET, Household, Live, jpeg, register_and_submit, tg_settings, wait_for
from webhook.app import create_app

PHONE = "84912345678"  # as Telegram shares it (register_and_submit's contact card)
PHONE_FORMATS = [PHONE, "+84912345678", "0912345678", "0912 345 678", "0912.345.678", "912345678", "+84 912 345 678"]
TYPED = ["Nguyễn Văn An", "Thôn Đông", "gia loc", "Chuỗi riêng tư 7f3a", "0987 654 321"]


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # format() adds the traceback of exc_info


@pytest.fixture
def capture() -> Iterator[Capture]:
    root = logging.getLogger()
    handler = Capture()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def leaks(text: str, token: str) -> list[str]:
    needles = [*PHONE_FORMATS, *TYPED, token, token.split(":", 1)[1], SECRET, "987654321"]
    return [n for n in needles if n in text]


def test_a_full_conversation_logs_no_personal_data_or_secrets(engine, tmp_path: Path, capture: Capture) -> None:
    with tg.FakeTelegram().running() as fake:
        fake.add_file("jpg", jpeg())
        settings = tg_settings(tmp_path, fake)
        with TestClient(create_app(settings, engine=engine)) as client:
            wait_for(lambda: fake.webhook is not None)
            live = Live(client, fake)
            person = Household(fake, 4711, live.deliver)
            asyncio.run(register_and_submit(person, with_refusals=False))

            async def more() -> None:
                await person.say("Chuỗi riêng tư 7f3a")  # free text the flows do not expect here
                await person.say("/trangthai")
                await person.say("0987 654 321")  # a phone number typed where it means nothing
                await person.send(tg.sticker_update(next(person.ids), 4711))

            asyncio.run(more())
            # a wrong secret and a malformed body are logged (if at all) without their content
            client.post("/webhooks/telegram", json=tg.text_update(1, 4711, "Nguyễn Văn An"),
                        headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"})
            client.post("/webhooks/telegram", content=b'{"update_id": 2, "message": {"text": "0912345678"',
                        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
        token = fake.token
    text = "\n".join(capture.lines)
    assert len(capture.lines) > 20, "the capture saw the run"
    assert any("hoctap" in line for line in capture.lines)
    assert leaks(text, token) == [], [line for line in capture.lines if leaks(line, token)][:5]
