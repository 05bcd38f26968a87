"""Telegram normaliser (real update JSON through PTB against the fake server) and the webhook route."""

from __future__ import annotations

import asyncio
import copy
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


def test_route_reads_a_streamed_body_and_stops_past_the_limit(engine, tmp_path) -> None:
    """The route is a bare ASGI handler (webhook/app.py FAST_POSTS): a body that arrives in several chunks is
    read whole; one that grows past MAX_BODY without announcing its length is refused with 413."""
    from webhook.telegram_routes import MAX_BODY

    app = create_app(tg_settings(tmp_path), engine=engine, background=False)
    good = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-Token_1"}
    body = tg.text_update(7, 502, "chia nhỏ")
    raw = json.dumps(body).encode()
    with TestClient(app) as client:
        chunks = iter([raw[:10], raw[10:25], raw[25:]])
        assert client.post("/webhooks/telegram", content=chunks, headers=good).json() == {"ok": True}
        huge = iter([b'{"update_id": 8, "x": "', *(b"a" * 65536 for _ in range(MAX_BODY // 65536 + 1)), b'"}'])
        resp = client.post("/webhooks/telegram", content=huge, headers=good)
        assert resp.status_code == 413
        assert resp.json() == {"ok": False, "error": "too large"}
    assert [(r.update_id, r.payload) for r in inbox_rows(engine)] == [("7", body)]


def test_route_under_a_root_path_and_other_methods(engine, tmp_path) -> None:
    app = create_app(tg_settings(tmp_path), engine=engine, background=False)
    good = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-Token_1"}
    with TestClient(app, root_path="/hoctap") as client:  # as behind a proxy with uvicorn --root-path
        assert client.post("/webhooks/telegram", json=tg.text_update(9, 503, "a"), headers=good).status_code == 200
    with TestClient(app) as client:
        assert client.get("/webhooks/telegram", headers=good).status_code in (404, 405)
    assert [r.update_id for r in inbox_rows(engine)] == ["9"]


def test_route_answers_500_when_the_update_cannot_be_stored(tmp_path, caplog) -> None:
    """A database that refuses the insert (here: one without our tables) is a 5xx, so Telegram sends the update
    again later; the log names the error's type, never the message."""
    from models.db import make_engine

    bare = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    app = create_app(tg_settings(tmp_path), engine=bare, background=False)
    good = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-Token_1"}
    with caplog.at_level("DEBUG"), TestClient(app) as client:
        resp = client.post("/webhooks/telegram", json=tg.text_update(10, 504, "bí mật 0912345678"), headers=good)
    assert resp.status_code == 500
    assert "could not store the update (OperationalError)" in caplog.text
    assert "0912345678" not in caplog.text and "bí mật" not in caplog.text


# --- the common shapes without PTB's objects: the same Inbound as through PTB --------------------------------

_names = st.one_of(st.just("Lan"), st.just(""), st.text(max_size=12))
_users = st.fixed_dictionaries(
    {"id": st.integers(min_value=1, max_value=2**40), "is_bot": st.booleans(), "first_name": _names},
    optional={"last_name": _names, "language_code": st.just("vi"), "username": st.text(max_size=8)},
)
_chat_types = st.sampled_from(["private", "private", "group", "supergroup", "channel"])
_texts = st.one_of(st.text(max_size=30), st.sampled_from(
    ["co", "có", "70%", "/start v_abc", "/HUY@hoctap_test_bot", "/ x", "a\x00b\x07c", "\tdòng\nhai", ""]))
_datas = st.one_of(st.text(max_size=20), st.sampled_from(["yes", "no", "#" + "0" * 32, "opt:khong"]))
_odd = st.sampled_from([None, 0, -1, "", "x", True, [], {}, [[]], 2**31])


def _message_of(draw: st.DrawFn, chat_type: str, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "message_id": draw(st.integers(min_value=1, max_value=2**31)),
        "date": draw(st.sampled_from([0, 1_765_000_000])),
        "chat": {"id": draw(st.integers(min_value=-(2**40), max_value=2**40)), "type": chat_type},
        **fields,
    }
    if draw(st.booleans()):
        message["from"] = draw(_users)
    return message


def _field_paths(node: Any, prefix: list[Any]) -> list[list[Any]]:
    out: list[list[Any]] = []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        if isinstance(node, dict):
            out.append([*prefix, key])
        out += _field_paths(child, [*prefix, key])
    return out


@st.composite
def common_updates(draw: st.DrawFn) -> dict[str, Any]:
    """Text messages and button presses as Telegram sends them, then maybe a field or two made odd."""
    if draw(st.booleans()):
        message = _message_of(draw, draw(_chat_types), text=draw(_texts))
        message["date"] = max(message["date"], 1)
        update: dict[str, Any] = {"update_id": 1, "message": message}
    else:
        query: dict[str, Any] = {"id": draw(st.text(min_size=1, max_size=8)), "from": draw(_users),
                                 "chat_instance": "ci1", "data": draw(_datas)}
        if draw(st.integers(min_value=0, max_value=4)):
            buttons = draw(st.lists(st.lists(st.fixed_dictionaries(
                {"text": _texts}, optional={"callback_data": _datas, "url": st.just("https://t.me/x")}),
                min_size=1, max_size=3), max_size=3))
            fields = {"text": "…"} | ({"reply_markup": {"inline_keyboard": buttons}} if buttons else {})
            query["message"] = _message_of(draw, draw(_chat_types), **fields)
        update = {"update_id": 1, "callback_query": query}
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        # one field anywhere replaced or removed
        paths = _field_paths(update, [])
        paths = [p for p in paths if p != ["update_id"]]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = update
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(_odd)
    return update


def test_common_shapes_read_without_ptb_equal_the_ptb_path(engine, tmp_path, fake) -> None:
    """bot.telegram reads text messages and button presses straight from the JSON; for every update the
    readers accept and PTB can build, PTB's path gives the same Inbound, and both answer the button's spinner
    alike; everything else goes through PTB."""
    from bot import telegram as tgmod

    class Recording(set):  # type: ignore[type-arg]
        """The channel's set of answerCallbackQuery tasks, remembering every task put in it."""

        def __init__(self) -> None:
            super().__init__()
            self.added: list[asyncio.Task[bool]] = []

        def add(self, task: Any) -> None:
            self.added.append(task)
            super().add(task)

    loop = asyncio.new_event_loop()
    channel = TelegramChannel(settings=tg_settings(tmp_path, fake), engine=engine)
    loop.run_until_complete(channel.initialize())
    channel._answers = recorded = Recording()
    seen = {"fast": 0, "ptb only": 0, "lenient": 0, "n": 0}

    async def both(update: dict[str, Any]) -> None:
        seen["n"] += 1
        query = update.get("callback_query")
        if isinstance(query, dict) and isinstance(query.get("id"), str):
            query["id"] = f"{seen['n']}:{query['id']}"  # this example's answers, not a late one of the last
        fast = tgmod._plain_text(update) is not None or tgmod._plain_callback(update) is not None
        before = len(fake.calls_of("answerCallbackQuery"))
        n0 = len(recorded.added)
        try:
            expected: Inbound | str = await channel.normalise_ptb(copy.deepcopy(update))
        except Exception as exc:  # noqa: BLE001 - PTB refuses the shape: so must the fast readers
            expected = type(exc).__name__
        if not fast:
            seen["ptb only"] += 1
            await asyncio.gather(*recorded.added[n0:])
            return
        seen["fast"] += 1
        n1 = len(recorded.added)
        got = await channel.normalise(copy.deepcopy(update))
        tasks = recorded.added[n0:]
        # one spinner answer per path for a button press, none for a text
        spinners = 1 if "callback_query" in update else 0
        assert len(recorded.added) - n1 == spinners, update
        if not isinstance(expected, str):
            assert n1 - n0 == spinners, update
        # ... and each answer that Telegram (the fake) said ok to reached it with this press's id (an answer
        # may fail on a busy machine: the spinner then stops by itself, and the channel only counts it)
        ok = sum(await asyncio.gather(*tasks))
        for _ in range(100):  # the fake may record a call just after answering it
            answered = [c.params["callback_query_id"] for c in fake.calls_of("answerCallbackQuery")[before:]]
            if len(answered) >= ok:
                break
            await asyncio.sleep(0.01)
        assert ok <= len(answered) <= len(tasks) and set(answered) <= {query["id"] if spinners else None}, update
        if isinstance(expected, str):
            # PTB refused a field the readers do not read (the message's own sender, say): Telegram sends no
            # such update, and the readers take what they need of it
            seen["lenient"] += 1
            return
        assert got == expected, update

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(update=common_updates())
    def check(update: dict[str, Any]) -> None:
        loop.run_until_complete(both(update))

    try:
        check()
    finally:
        loop.run_until_complete(channel.shutdown())
        loop.close()
    assert seen["fast"] - seen["lenient"] >= 100 and seen["ptb only"] >= 20, seen
