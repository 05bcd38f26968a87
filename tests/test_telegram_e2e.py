"""End to end over real HTTP: webhook posts of real update JSON → inbox → flows → outbox → fake Bot API.

A household registers, answers, sends photos and submits. The first tests drive the worker and sender
explicitly (no sleeps); the last ones run the real background runtime (webhook mode and long polling) with
bounded waits.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.inbox import InboxWorker
from bot.outbox import OutboxSender
from bot.telegram import CHANNEL, TelegramChannel
from flows.i18n import t
from models.settings import Settings, get_settings
from models.tables import Assessment, ChannelCredential, Evidence, InboxUpdate, OutboxMessage, Person
from tests.fakes import telegram_server as tg
from tests.fakes.telegram_server import FakeTelegram
from webhook.app import create_app

SECRET = "hoctap-test-secret"
HEADERS = {"X-Telegram-Bot-Api-Secret-Token": SECRET}


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    with FakeTelegram().running() as server:
        yield server


def tg_settings(tmp_path: Path, fake: FakeTelegram, *, public: bool = True) -> Settings:
    return get_settings(
        data_dir=tmp_path,
        telegram_bot_token=fake.token,
        telegram_api_base_url=fake.base_url,
        telegram_webhook_secret=SECRET,
        public_base_url="https://hoctap.example" if public else "",
        per_chat_interval_seconds=0.0,
        telegram_rate_per_second=500.0,
    )


def jpeg() -> bytes:
    image = Image.new("RGB", (800, 600), (240, 220, 180))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2026:10:20 08:15:00"
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    return out.getvalue()


def bomb() -> bytes:
    from tests.test_telegram_media import png_header_only

    return png_header_only(100_000, 100_000)


class Household:
    """A person on Telegram: every action is a real update JSON posted to the webhook (or queued for polling)."""

    def __init__(
        self, fake: FakeTelegram, chat_id: int, deliver: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        self.fake = fake
        self.chat_id = chat_id
        self.deliver = deliver
        self.ids = itertools.count(chat_id * 1000)
        self.seen = 0
        self.last: list[dict[str, Any]] = []

    async def send(self, update: dict[str, Any]) -> list[dict[str, Any]]:
        await self.deliver(update)
        new = self.fake.sent_messages(self.chat_id)[self.seen :]
        self.seen += len(new)
        if new:
            self.last = new
        return new

    def texts(self) -> list[str]:
        return [m["text"] for m in self.last]

    def keyboard(self) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        for message in reversed(self.last):
            rows = (message.get("reply_markup") or {}).get("inline_keyboard")
            if rows:
                return message, [(b["text"], b["callback_data"]) for row in rows for b in row]
        return {}, []

    def labels(self) -> list[str]:
        return [label for label, _ in self.keyboard()[1]]

    async def say(self, text: str) -> list[dict[str, Any]]:
        return await self.send(tg.text_update(next(self.ids), self.chat_id, text))

    async def press(self, label: str) -> list[dict[str, Any]]:
        message, buttons = self.keyboard()
        data = dict(buttons)[label]
        update = tg.callback_update(
            next(self.ids), self.chat_id, data, message_id=message["message_id"], buttons=buttons
        )
        return await self.send(update)

    async def share_phone(self, phone: str) -> list[dict[str, Any]]:
        return await self.send(tg.contact_update(next(self.ids), self.chat_id, phone))

    async def photo(self, file_id: str) -> list[dict[str, Any]]:
        return await self.send(tg.photo_update(next(self.ids), self.chat_id, file_id))

    async def file(self, file_id: str, name: str, mime: str) -> list[dict[str, Any]]:
        return await self.send(
            tg.document_update(next(self.ids), self.chat_id, file_id, file_name=name, mime_type=mime)
        )


async def register_and_submit(person: Household, *, with_refusals: bool = True) -> None:
    """The whole household story, answering by the labels the bot shows."""
    await person.say("/start")
    assert person.texts()[0].startswith("Chào Anh/Chị!")
    await person.press("Chủ hộ gia đình")
    await person.say("gia loc")
    await person.press("Gia Lộc – Hải Phòng")
    await person.say("Thôn Đông")
    await person.say("Nguyễn Văn An")
    await person.say("4")
    assert person.fake.sent(person.chat_id)[-1]["reply_markup"]["keyboard"][0][0]["request_contact"] is True
    await person.share_phone("84912345678")
    await person.press("Đồng ý")
    await person.press("Đăng ký")
    await person.press("Tự đánh giá")
    refused = not with_refusals
    for _ in range(60):
        labels, text = person.labels(), person.texts()[-1]
        if "Gửi Hội Khuyến học" in labels:
            await person.press("Gửi Hội Khuyến học")
            break
        if text.startswith("📷") and "Xong" not in labels:
            if not refused:
                # a text file renamed .jpg, and a pixel bomb: refused in Vietnamese, the question stays open
                assert await person.file("txt", "anh.jpg", "image/jpeg") and person.texts() == [
                    t("channel.photo_not_image")
                ]
                assert await person.file("bomb", "anh.png", "image/png") and person.texts() == [
                    t("channel.photo_too_many_pixels")
                ]
                person.last = [m for m in person.fake.sent_messages(person.chat_id) if m["text"] == text][-1:]
                refused = True
            await person.photo("jpg")
            continue
        if "Xong" in labels:
            await person.press("Xong")
            continue
        choice = next((p for p in ("Có", "100%") if p in labels), None) or next(
            label for label in labels if label.startswith("Có")
        )
        await person.press(choice)
    else:
        pytest.fail("the assessment did not reach its summary")
    assert person.texts()[0].startswith("✅ Đã gửi")


def check_household_submitted(engine: Engine, media: Path) -> None:
    with Session(engine) as session:
        person = session.exec(select(Person)).one()
        assert person.name == "Nguyễn Văn An"
        assert person.phone is not None and person.phone.endswith("912345678")
        assessment = session.exec(select(Assessment)).one()
        assert (assessment.title, assessment.status) == ("gia_dinh", "submitted")
        evidence = session.exec(select(Evidence)).all()
        assert len(evidence) >= 1 and len({e.sha256 for e in evidence}) == 1
        assert {e.taken_at for e in evidence} == {"2026-10-20T08:15:00"}
        assert {r.status for r in session.exec(select(InboxUpdate))} == {"done"}
        outbox = session.exec(select(OutboxMessage)).all()
        assert {r.status for r in outbox} == {"sent"}
    # the same JPEG sent for every photo question: stored once, one thumbnail
    files = sorted(p.relative_to(media).as_posix() for p in media.rglob("*") if p.is_file())
    sha = evidence[0].sha256
    assert files == [f"{sha[:2]}/{sha}.jpg", f"thumbs/{sha}.jpg"]


class Driven:
    """Webhook posts through the ASGI app, then the inbox worker and sender driven explicitly."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.app = create_app(settings, engine=engine, background=False)

    async def __aenter__(self) -> Driven:
        self.channel = TelegramChannel(settings=self.settings, engine=self.engine)
        await self.channel.initialize()
        await self.channel.setup_webhook()
        self.worker = InboxWorker(engine=self.engine, settings=self.settings)
        self.worker.add_channel(CHANNEL, self.channel.normalise, ordered_ids=True)
        self.sender = OutboxSender(
            engine=self.engine,
            channel=CHANNEL,
            transport=self.channel.transport,
            rate_per_second=500.0,
            per_chat_interval=0.0,
        )
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://hoctap")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.channel.shutdown()

    async def post(self, update: dict[str, Any], *, drive: bool = True) -> None:
        resp = await self.client.post("/webhooks/telegram", json=update, headers=HEADERS)
        assert resp.status_code == 200
        if drive:
            await self.drive()

    async def drive(self) -> None:
        await self.worker.run_once()
        await self.sender.run_once()


def test_household_registers_answers_sends_photos_and_submits_through_webhooks(
    engine, tmp_path, fake
) -> None:
    fake.add_file("jpg", jpeg())
    fake.add_file("txt", b"Day khong phai la anh.\n" * 30, path="documents/anh.jpg")
    fake.add_file("bomb", bomb(), path="documents/anh.png")
    settings = tg_settings(tmp_path, fake)

    async def story() -> None:
        async with Driven(settings, engine) as app:
            await register_and_submit(Household(fake, 501, app.post))

    asyncio.run(story())

    assert fake.webhook == {
        "url": "https://hoctap.example/webhooks/telegram",
        "secret_token": SECRET,
        "allowed_updates": ["message", "callback_query"],
    }
    assert [c["command"] for c in fake.commands] == ["batdau", "trangthai", "trogiup", "huy", "thongke"]
    assert len(fake.calls_of("answerCallbackQuery")) >= 10
    check_household_submitted(engine, settings.media_path)
    with Session(engine) as session:
        assert len(fake.sent()) == len(session.exec(select(OutboxMessage)).all())  # nothing sent twice


def test_duplicated_and_out_of_order_deliveries_are_processed_once_in_order(engine, tmp_path, fake) -> None:
    settings = tg_settings(tmp_path, fake)

    async def story() -> None:
        async with Driven(settings, engine) as app:
            start = tg.text_update(20, 601, "/start")
            help_ = tg.text_update(21, 601, "/trogiup")
            await app.post(help_, drive=False)  # arrives first, was sent second
            await app.post(start, drive=False)
            await app.post(start, drive=False)  # Telegram re-sends
            await app.drive()
            first = fake.sent_texts(601)
            await app.post(help_)  # a late redelivery after processing
            assert fake.sent_texts(601) == first

    asyncio.run(story())
    texts = fake.sent_texts(601)
    assert texts[0].startswith("Chào Anh/Chị!")  # /start (update 20) answered before /trogiup (21)
    with Session(engine) as session:
        assert [
            (r.update_id, r.status) for r in session.exec(select(InboxUpdate).order_by(InboxUpdate.id))
        ] == [
            ("21", "done"),
            ("20", "done"),
        ]
        assert len(session.exec(select(OutboxMessage)).all()) == len(texts)


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class Live:
    """The app with its real background runtime; each action waits (bounded) for the bot's answer."""

    def __init__(self, client: TestClient | None, fake: FakeTelegram) -> None:
        self.client = client
        self.fake = fake

    async def deliver(self, update: dict[str, Any]) -> None:
        before = len(self.fake.sent())
        if self.client is not None:
            resp = await asyncio.to_thread(
                self.client.post, "/webhooks/telegram", json=update, headers=HEADERS
            )
            assert resp.status_code == 200
        else:
            self.fake.push_update(update)
        await asyncio.to_thread(wait_for, lambda: len(self.fake.sent()) > before)
        await asyncio.sleep(0.15)  # a step may answer with several messages: let them all arrive


def test_background_runtime_in_webhook_mode(engine, tmp_path, fake) -> None:
    fake.add_file("jpg", jpeg())
    settings = tg_settings(tmp_path, fake)
    with TestClient(create_app(settings, engine=engine)) as client:
        wait_for(lambda: fake.webhook is not None)
        live = Live(client, fake)
        asyncio.run(register_and_submit(Household(fake, 701, live.deliver), with_refusals=False))
    assert fake.calls_of("getUpdates") == []
    check_household_submitted(engine, settings.media_path)
    with Session(engine) as session:  # the bot's @username is kept for village invite links
        cred = session.exec(select(ChannelCredential).where(ChannelCredential.channel == "telegram")).one()
        assert cred.data == {"username": tg.BOT_USERNAME}


def test_background_runtime_long_polling(engine, tmp_path, fake) -> None:
    fake.add_file("jpg", jpeg())
    settings = tg_settings(tmp_path, fake, public=False)
    with TestClient(create_app(settings, engine=engine)):
        live = Live(None, fake)
        person = Household(fake, 801, live.deliver)

        async def story() -> None:
            await person.say("/start")
            # the same update served twice (Telegram redelivers until the offset confirms it)
            update = tg.callback_update(
                900_001, 801, "role:household", message_id=person.last[0]["message_id"]
            )
            fake.push_update(update, update)
            await asyncio.to_thread(wait_for, lambda: len(fake.sent(801)) >= 2)
            person.seen = len(fake.sent(801))
            person.last = fake.sent_messages(801)[-1:]

        asyncio.run(story())
        assert fake.sent_texts(801)[1].startswith("Anh/Chị ở xã/phường nào?")
        time.sleep(0.3)
        assert len(fake.sent(801)) == 2  # processed once
    assert fake.webhook is None and fake.calls_of("deleteWebhook")
    offsets = [c.params.get("offset") for c in fake.calls_of("getUpdates")]
    assert offsets[0] is None and offsets[-1] == 900_002
    with Session(engine) as session:
        assert [r.update_id for r in session.exec(select(InboxUpdate).order_by(InboxUpdate.id))] == [
            "801000",
            "900001",
        ]
