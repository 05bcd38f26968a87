"""Telegram normaliser (real update JSON through PTB against the fake server) and the webhook route."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.inbox import Inbound
from bot.outbox import enqueue
from bot.telegram import TelegramChannel, callback_data, chat_key, split_text, webhook_secret
from flows.i18n import t
from flows.types import Button, Event, Say
from models.settings import Settings, get_settings
from models.tables import InboxUpdate, OutboxMessage
from tests.fakes import telegram_server as tg
from tests.fakes.telegram_server import FakeTelegram
from webhook.app import create_app


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    with FakeTelegram().running() as server:
        yield server


def tg_settings(tmp_path: Path, fake: FakeTelegram | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "telegram_bot_token": tg.TOKEN,
        "telegram_api_base_url": fake.base_url if fake else "http://127.0.0.1:9",
        "telegram_webhook_secret": "s3cret-Token_1",
        "public_base_url": "https://hoctap.example",
    }
    values.update(overrides)
    return get_settings(**values)


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 90, 200)).save(out, "JPEG")
    return out.getvalue()


def normalise(settings: Settings, engine: Engine, payload: dict[str, Any]) -> Inbound:
    async def go() -> Inbound:
        channel = TelegramChannel(settings=settings, engine=engine)
        await channel.initialize()
        try:
            return await channel.normalise(payload)
        finally:
            await channel.shutdown()

    return asyncio.run(go())


# --- normaliser -------------------------------------------------------------------------------------------


def test_text_commands_and_deep_links(engine, tmp_path, fake) -> None:
    s = tg_settings(tmp_path, fake)
    assert normalise(s, engine, tg.text_update(1, 501, "co")) == Inbound(
        chat_id="501", event=Event(kind="text", text="co"), user_id="501", display_name="Lan"
    )
    assert normalise(s, engine, tg.text_update(2, 501, "/start v_abc12")).event == Event(
        kind="command", text="start", value="v_abc12"
    )
    assert normalise(s, engine, tg.text_update(3, 501, "/HUY@hoctap_test_bot")).event == Event(
        kind="command", text="huy"
    )


def test_button_press_is_answered_and_carries_value_and_label(engine, tmp_path, fake) -> None:
    update = tg.callback_update(4, 501, "yes", buttons=[("Có", "yes"), ("Không", "no")])
    inbound = normalise(tg_settings(tmp_path, fake), engine, update)
    assert inbound.event == Event(kind="button", value="yes", text="Có")
    assert [c.params["callback_query_id"] for c in fake.calls_of("answerCallbackQuery")] == ["cq4"]


def test_long_button_values_travel_as_a_hash_and_come_back_whole(engine, tmp_path, fake) -> None:
    long_value = "go:assess:gia_dinh:household:" + "9" * 70
    with Session(engine) as session:
        enqueue(
            session,
            channel="telegram",
            chat_id="501",
            idempotency_key="q",
            message=Say("Câu 1", buttons=(Button("Để sau", long_value),)),
        )
        row = session.exec(select(OutboxMessage)).one()
        row.status, row.platform_message_id = "sent", "77"
        session.add(row)
        session.commit()
    data = callback_data(long_value)
    update = tg.callback_update(5, 501, data, message_id=77, buttons=[("Để sau", data)])
    assert normalise(tg_settings(tmp_path, fake), engine, update).event == Event(
        kind="button", value=long_value, text="Để sau"
    )
    # unknown hash: the label still works as typed text
    unknown = tg.callback_update(6, 501, "#" + "0" * 32, message_id=78, buttons=[("Xong", "#" + "0" * 32)])
    assert normalise(tg_settings(tmp_path, fake), engine, unknown).event == Event(kind="text", text="Xong")


def test_photo_is_downloaded_validated_and_stored(engine, tmp_path, fake) -> None:
    fake.add_file("ph1", jpeg())
    inbound = normalise(tg_settings(tmp_path, fake), engine, tg.photo_update(7, 501, "ph1"))
    assert inbound.event is not None and inbound.event.kind == "photo" and inbound.event.photo is not None
    sha = inbound.event.photo.sha256
    assert (tmp_path / "media" / sha[:2] / f"{sha}.jpg").read_bytes() == jpeg()
    assert (tmp_path / "media" / "thumbs" / f"{sha}.jpg").is_file()
    assert [c.params["file_id"] for c in fake.calls_of("getFile")] == ["ph1"]  # the largest size only


def test_text_file_renamed_jpg_is_refused_in_vietnamese(engine, tmp_path, fake) -> None:
    fake.add_file("doc1", b"khong phai anh\n" * 20, path="documents/anh.jpg")
    update = tg.document_update(8, 501, "doc1", file_name="anh.jpg", mime_type="image/jpeg")
    inbound = normalise(tg_settings(tmp_path, fake), engine, update)
    assert inbound == Inbound(chat_id="501", replies=(Say(t("channel.photo_not_image")),))
    assert not (tmp_path / "media").exists()


def test_photo_too_big_is_refused_without_downloading(engine, tmp_path, fake) -> None:
    update = tg.photo_update(9, 501, "big", file_size=30_000_000)
    inbound = normalise(tg_settings(tmp_path, fake), engine, update)
    assert inbound.replies == (Say(t("channel.photo_too_big")),)
    assert fake.calls_of("getFile") == []


def test_other_kinds(engine, tmp_path, fake) -> None:
    s = tg_settings(tmp_path, fake)
    assert normalise(s, engine, tg.sticker_update(10, 501)).event == Event(
        kind="unsupported", value="sticker"
    )
    assert normalise(s, engine, tg.voice_update(11, 501)).event == Event(kind="unsupported", value="voice")
    pdf = tg.document_update(12, 501, "d2", file_name="bao_cao.pdf", mime_type="application/pdf")
    assert normalise(s, engine, pdf).event == Event(kind="unsupported", value="document")
    assert normalise(s, engine, tg.contact_update(13, 501, "84912345678")).event == Event(
        kind="contact", text="84912345678"
    )
    someone_else = normalise(s, engine, tg.contact_update(14, 501, "84900000000", user_id=999))
    assert someone_else.event is None
    assert someone_else.replies[0].text == t("channel.contact_not_own")
    assert someone_else.replies[0].request_contact is True


def test_edited_messages_and_group_chats(engine, tmp_path, fake) -> None:
    s = tg_settings(tmp_path, fake)
    assert normalise(s, engine, tg.edited_update(15, 501, "sửa")) == Inbound()
    assert normalise(s, engine, tg.text_update(16, -100, "chào cả nhà", chat_type="group")) == Inbound()
    assert normalise(s, engine, tg.text_update(17, -100, "/start", chat_type="supergroup")) == Inbound(
        chat_id="-100", replies=(Say(t("channel.group_not_supported")),)
    )


def test_chat_key_and_split_text() -> None:
    assert chat_key(tg.text_update(1, 501, "a")) == "501"
    assert chat_key(tg.callback_update(2, 502, "x")) == "502"
    assert chat_key({"update_id": 3}) == ""
    emoji = "✅📷" * 3000  # 📷 counts twice in UTF-16
    parts = split_text(emoji)
    assert "".join(parts) == emoji
    assert all(len(p.encode("utf-16-le")) // 2 <= 4096 for p in parts)


def test_webhook_secret_is_derived_from_the_token_when_unset(tmp_path) -> None:
    derived = webhook_secret(tg_settings(tmp_path, telegram_webhook_secret=""))
    assert len(derived) == 64 and derived.isalnum()
    assert webhook_secret(tg_settings(tmp_path)) == "s3cret-Token_1"


# --- the route --------------------------------------------------------------------------------------------


def inbox_rows(engine: Engine) -> list[InboxUpdate]:
    with Session(engine) as session:
        return list(session.exec(select(InboxUpdate)))


def test_route_checks_the_secret_and_stores_each_update_once(engine, tmp_path) -> None:
    app = create_app(tg_settings(tmp_path), engine=engine, background=False)
    update = tg.text_update(100, 501, "xin chào")
    good = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-Token_1"}
    with TestClient(app) as client:
        assert client.post("/webhooks/telegram", json=update).status_code == 401
        wrong = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-Token_2"}
        assert client.post("/webhooks/telegram", json=update, headers=wrong).status_code == 401
        assert inbox_rows(engine) == []

        assert client.post("/webhooks/telegram", json=update, headers=good).json() == {"ok": True}
        assert client.post("/webhooks/telegram", json=update, headers=good).status_code == 200
    rows = inbox_rows(engine)
    assert [(r.channel, r.update_id, r.chat_key, r.status) for r in rows] == [
        ("telegram", "100", "501", "pending")
    ]
    assert rows[0].payload == update


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"message": {}}', b'{"update_id": "12"}', b'{"update_id": true}', b"\xff\xfe"],
)
def test_route_rejects_malformed_bodies_with_400(engine, tmp_path, body: bytes) -> None:
    app = create_app(tg_settings(tmp_path), engine=engine, background=False)
    with TestClient(app) as client:
        resp = client.post(
            "/webhooks/telegram", content=body, headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-Token_1"}
        )
    assert resp.status_code == 400
    assert inbox_rows(engine) == []


def test_route_is_404_when_telegram_is_off(engine, tmp_path) -> None:
    app = create_app(tg_settings(tmp_path, telegram_bot_token=""), engine=engine, background=False)
    with TestClient(app) as client:
        resp = client.post(
            "/webhooks/telegram",
            json={"update_id": 1},
            headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-Token_1"},
        )
    assert resp.status_code == 404
    assert inbox_rows(engine) == []
