"""Zalo Bot Platform: envelopes, numbered choices, the webhook route, polling, quota, errors, and a
household from "Xin chào" to a submitted self-assessment over real HTTP to the fake Zalo Bot server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot import zalo
from bot.inbox import Inbound, InboxWorker
from bot.outbox import OutboxSender, enqueue
from bot.scheduler import unreachable_report
from flows.i18n import t
from flows.types import Button, Event, Say
from models.settings import Settings, get_settings
from models.tables import (
    AuditLog,
    ChatIdentity,
    InboxUpdate,
    OutboxMessage,
    Person,
    RoleGrant,
)
from tests.fakes import zalo_server as zs
from tests.fakes.zalo_server import FakeZaloBot, Resident, check_submitted, jpeg, register_and_submit, seed
from webhook.app import create_app

SECRET = "zalo-webhook-secret-1"
HEADERS = {"X-Bot-Api-Secret-Token": SECRET}


@pytest.fixture
def fake() -> Iterator[FakeZaloBot]:
    with FakeZaloBot().running() as server:
        yield server


def zsettings(tmp_path: Path, fake: FakeZaloBot | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "zalo_bot_token": zs.BOT_TOKEN,
        "zalo_api_base_url": fake.base_url if fake else "http://127.0.0.1:9",
        "zalo_webhook_secret": SECRET,
        "public_base_url": "https://hoctap.example",
    }
    values.update(overrides)
    return get_settings(**values)


class Driven:
    """Webhook posts through the ASGI app; inbox worker and outbox sender driven explicitly."""

    def __init__(self, settings: Settings, engine: Engine, fake: FakeZaloBot) -> None:
        self.settings, self.engine, self.fake = settings, engine, fake
        self.app = create_app(settings, engine=engine, background=False)

    async def __aenter__(self) -> Driven:
        self.channel = zalo.ZaloChannel(settings=self.settings, engine=self.engine)
        self.worker = InboxWorker(engine=self.engine, settings=self.settings, backoff=lambda n: 0.0)
        self.worker.add_channel(zalo.CHANNEL, self.channel.normalise)
        self.sender = OutboxSender(engine=self.engine, channel=zalo.CHANNEL, transport=self.channel.transport,
                                   rate_per_second=500.0, per_chat_interval=0.0)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://hoctap")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.channel.aclose()

    async def post(self, body: Any, *, drive: bool = True) -> None:
        resp = await self.client.post("/webhooks/zalo", json=body, headers=HEADERS)
        assert resp.status_code == 200, resp.text
        if drive:
            await self.drive()

    async def drive(self) -> None:
        await self.worker.run_once()
        await self.sender.run_once()

    def person(self, chat_id: str) -> Resident:
        async def answer(body: Any) -> str:
            before = len(self.fake.sent_texts(chat_id))
            await self.post(body)
            return "\n".join(self.fake.sent_texts(chat_id)[before:])

        async def say(text: str) -> str:
            return await answer(zs.bot_text(chat_id, text))

        async def photo() -> str:
            return await answer(zs.bot_image(chat_id, self.fake.image_url("goc.jpg", jpeg())))

        return Resident(say, photo)


def rows(engine: Engine, model: Any) -> list[Any]:
    with Session(engine) as session:
        return list(session.exec(select(model).order_by(model.id)))


# --- pure parts --------------------------------------------------------------------------------------------


YES_NO = Say("Câu 2/10 — Nhà có tủ sách?", (Button("Có", "yes"), Button("Không", "no"), Button("Để sau", "later")))


def test_buttons_become_a_numbered_list() -> None:
    text = zalo.render_text(YES_NO)
    assert text == "Câu 2/10 — Nhà có tủ sách?\n\n1. Có\n2. Không\n3. Để sau\n\nAnh/Chị gõ 1, 2 hoặc 3."
    assert zalo.render_text(Say("Xin chào")) == "Xin chào"
    six = Say("Chọn", tuple(Button(f"Mục {n}", f"v{n}") for n in range(1, 7)))
    assert zalo.render_text(six).endswith("6. Mục 6\n\nAnh/Chị gõ một số từ 1 đến 6.")


def test_a_list_the_question_already_numbers_is_not_repeated() -> None:
    say = Say("Câu 8/10 — Góc học tập?\n1. Có cả góc học tập và tủ sách\n2. Có một trong hai\n3. Chưa có",
              (Button("Có cả góc học tập…", "opt:a"), Button("Có một trong hai", "opt:b"),
               Button("Chưa có", "opt:c"), Button("Bỏ qua", "skip")))
    text = zalo.render_text(say)
    assert text.count("Có một trong hai") == 1 and "\n\n4. Bỏ qua\n\n" in text
    assert zalo.match_offered("1", say) == say.buttons[0]
    assert zalo.match_offered("4", say) == say.buttons[3]


def test_number_questions_are_not_numbered_and_digits_stay_answers() -> None:
    say = Say(f"Câu 4/10 — Mấy người đọc sách?\n{t('assess.hint_number')}",
              (Button("« Quay lại", "back"), Button("Bỏ qua", "skip")))
    text = zalo.render_text(say)
    assert "1." not in text and text.endswith("Hoặc gõ: « Quay lại · Bỏ qua")
    assert zalo.match_offered("2", say) is None
    assert zalo.match_offered("bo qua", say) == say.buttons[1]


def test_digits_labels_and_labels_without_diacritics_map_to_the_value() -> None:
    for typed in ("1", " 1 ", "Có", "co", "CÓ"):
        assert zalo.match_offered(typed, YES_NO) == YES_NO.buttons[0], typed
    for typed in ("3", "de sau", "Để sau"):
        assert zalo.match_offered(typed, YES_NO) == YES_NO.buttons[2], typed
    assert zalo.match_offered("4", YES_NO) is None
    for odd in ("①", "²", "9" * 10_000, "٣"):
        assert zalo.match_offered(odd, YES_NO) is None
        assert zalo.choice_event(odd, YES_NO, None) == Event(kind="text", text=odd)
    assert zalo.match_offered("xin chao", YES_NO) is None


def test_choice_event_leaves_the_prompt_to_the_flows_and_maps_other_messages() -> None:
    reminder = Say("⏰ Tháng 11 rồi", (Button("Bắt đầu", "assess:start"), Button("Để sau", "later")))
    # the conversation's own question: the flows map the text themselves
    assert zalo.choice_event("1", YES_NO, YES_NO) == Event(kind="text", text="1")
    # a reminder sent after it: the digit means the reminder's button
    assert zalo.choice_event("1", reminder, YES_NO) == Event(kind="button", value="assess:start", text="Bắt đầu")
    assert zalo.choice_event("bat dau", reminder, None) == Event(kind="button", value="assess:start", text="Bắt đầu")
    assert zalo.choice_event("hello", reminder, None) == Event(kind="text", text="hello")
    assert zalo.choice_event("1", None, None) == Event(kind="text", text="1")
    assert zalo.text_event("/start v_abc") == Event(kind="command", text="start", value="v_abc")
    assert zalo.text_event("/HUY") == Event(kind="command", text="huy")


def test_every_envelope_variant_is_accepted() -> None:
    bare = zs.bot_text("u1", "co", wrap=False)
    wrapped = {"ok": True, "result": bare}
    assert zalo.extract_events(bare) == [bare]
    assert zalo.extract_events(wrapped) == [bare]
    assert zalo.extract_events({"ok": True, "result": [bare, bare]}) == [bare, bare]
    assert zalo.extract_events([wrapped]) == [bare]
    no_name = {"message": {**bare["message"], "text": None, "photo_url": "https://x/y.jpg"}}
    assert zalo.extract_events(no_name)[0]["event_name"] == "message.image.received"
    assert zalo.extract_events({"ok": True, "result": {}}) == []
    assert zalo.extract_events("nope") == []
    assert zalo.update_id(bare) == bare["message"]["message_id"]
    assert zalo.chat_key(bare) == "u1"
    no_id = {"event_name": "message.text.received", "message": {"chat": {"id": "u2"}, "text": "a"}}
    assert zalo.update_id(no_id) == zalo.update_id(dict(no_id)) and zalo.update_id(no_id).startswith("h:")


def test_long_text_is_split_at_2000_characters() -> None:
    text = ("Một câu khá dài để thử. " * 200).strip()
    parts = zalo.split_text(text)
    assert len(parts) >= 3 and all(len(p) <= 2000 for p in parts)
    assert " ".join(parts).split() == text.split()


def test_normaliser_text_photo_sticker_and_groups(engine, tmp_path, fake) -> None:
    settings = zsettings(tmp_path, fake)

    async def go() -> list[Inbound]:
        channel = zalo.ZaloChannel(settings=settings, engine=engine)
        try:
            url = fake.image_url("a.jpg", jpeg())
            bad = fake.image_url("b.jpg", b"not an image at all")
            payloads = [
                zs.bot_text("u1", "co", wrap=False),
                zalo.extract_events(zs.bot_image("u1", url, field_name="photo_url"))[0],
                zalo.extract_events(zs.bot_image("u1", bad))[0],
                zalo.extract_events(zs.bot_image("u1", f"{fake.base_url}/img/gone.jpg"))[0],
                zalo.extract_events(zs.bot_sticker("u1"))[0],
                zs.bot_text("g1", "/start", wrap=False, chat_type="GROUP"),
                zs.bot_text("g1", "hello", wrap=False, chat_type="GROUP"),
            ]
            return [await channel.normalise(p) for p in payloads]
        finally:
            await channel.aclose()

    text, photo, not_image, gone, sticker, group_cmd, group_text = asyncio.run(go())
    assert text == Inbound(chat_id="u1", event=Event(kind="text", text="co"), user_id="u1", display_name="Lan")
    assert photo.event is not None and photo.event.kind == "photo" and photo.event.photo is not None
    assert (settings.media_path / "thumbs" / f"{photo.event.photo.sha256}.jpg").is_file()
    assert not_image.replies == (Say(t("channel.photo_not_image")),) and not_image.event is None
    assert gone.replies == (Say(t("channel.photo_download_failed")),)
    assert sticker.event == Event(kind="unsupported", value="sticker")
    assert group_cmd.replies == (Say(t("channel.group_not_supported")),)
    assert group_text == Inbound()


# --- the route ---------------------------------------------------------------------------------------------


def test_route_checks_the_secret_and_stores_each_message_once(engine, tmp_path) -> None:
    app = create_app(zsettings(tmp_path), engine=engine, background=False)
    body = zs.bot_text("u7", "xin chào")
    with TestClient(app) as client:
        assert client.post("/webhooks/zalo", json=body).status_code == 401
        wrong = {"X-Bot-Api-Secret-Token": SECRET + "x"}
        assert client.post("/webhooks/zalo", json=body, headers=wrong).status_code == 401
        assert client.post("/webhooks/zalo", json=body, headers={"X-Bot-Api-Secret-Token": ""}).status_code == 401
        assert rows(engine, InboxUpdate) == []
        assert client.post("/webhooks/zalo", json=body, headers=HEADERS).json() == {"ok": True}
        assert client.post("/webhooks/zalo", json=body["result"], headers=HEADERS).status_code == 200  # bare
        assert client.post("/webhooks/zalo", json=body, headers=HEADERS).status_code == 200
    stored = rows(engine, InboxUpdate)
    assert [(r.channel, r.update_id, r.chat_key) for r in stored] == [
        ("zalo", body["result"]["message"]["message_id"], "u7")
    ]


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe", b'"text"', b"42"])
def test_route_answers_400_to_malformed_bodies(engine, tmp_path, body: bytes) -> None:
    app = create_app(zsettings(tmp_path), engine=engine, background=False)
    with TestClient(app) as client:
        assert client.post("/webhooks/zalo", content=body, headers=HEADERS).status_code == 400
        # JSON without any message: accepted, nothing stored (no retry storm)
        assert client.post("/webhooks/zalo", json={"ok": True}, headers=HEADERS).status_code == 200
    assert rows(engine, InboxUpdate) == []


def test_route_is_404_when_zalo_is_off(engine, tmp_path) -> None:
    app = create_app(zsettings(tmp_path, zalo_bot_token=""), engine=engine, background=False)
    with TestClient(app) as client:
        assert client.post("/webhooks/zalo", json=zs.bot_text("u", "a"), headers=HEADERS).status_code == 404


def test_derived_webhook_secret_fits_zalo_rules(tmp_path) -> None:
    derived = zalo.webhook_secret(zsettings(tmp_path, zalo_webhook_secret=""))
    assert 8 <= len(derived) <= 256 and derived.isalnum()
    assert zalo.webhook_secret(zsettings(tmp_path, zalo_webhook_secret="", zalo_bot_token="")) == ""


# --- end to end ----------------------------------------------------------------------------------------------


def test_household_registers_answers_by_digits_and_words_sends_a_photo_and_submits(engine, tmp_path, fake) -> None:
    seed(engine)
    settings = zsettings(tmp_path, fake)

    async def story() -> Resident:
        async with Driven(settings, engine, fake) as app:
            await app.channel.setup_webhook()
            person = app.person("7f3a9c")
            await register_and_submit(person)
            return person

    person = asyncio.run(story())
    assert fake.webhook is not None and fake.webhook["url"] == "https://hoctap.example/webhooks/zalo"
    assert fake.webhook["secret_token"] == SECRET
    assert person.digits >= 5 and person.words >= 5
    hello = person.transcript[0][1]
    assert "1. Chủ hộ gia đình\n2. Trưởng dòng họ" in hello
    check_submitted(engine)
    outbox = rows(engine, OutboxMessage)
    assert {r.status for r in outbox} == {"sent"}
    assert len(fake.sent_texts()) == len(outbox)  # nothing sent twice, nothing split
    assert all(len(text) <= 2000 for text in fake.sent_texts())
    assert zalo.UsageMeter(engine, settings).usage()["messages"] == len(outbox)
    assert fake.images.fetched == ["goc.jpg"]


def test_a_duplicated_webhook_delivery_is_processed_once(engine, tmp_path, fake) -> None:
    settings = zsettings(tmp_path, fake)
    body = zs.bot_text("dup1", "Xin chào")

    async def story() -> None:
        async with Driven(settings, engine, fake) as app:
            await app.post(body, drive=False)
            await app.post(body, drive=False)
            await app.drive()
            await app.post(body)

    asyncio.run(story())
    assert len(fake.sent_texts("dup1")) == 1
    assert [r.status for r in rows(engine, InboxUpdate)] == ["done"]


@pytest.mark.parametrize("as_list", [True, False])
def test_polling_stores_repeated_get_updates_once(engine, tmp_path, fake, as_list: bool) -> None:
    fake.updates_as_list = as_list
    settings = zsettings(tmp_path, fake, public_base_url="")
    first = zs.bot_text("p1", "Xin chào")
    fake.push(first if not as_list else first["result"], *([] if not as_list else [zs.bot_text("p2", "hi")["result"]]))

    async def story() -> int:
        channel = zalo.ZaloChannel(settings=settings, engine=engine)
        woken: list[int] = []
        try:
            await channel.poll(on_stored=lambda: woken.append(1), long_poll_seconds=1, max_rounds=4)
            worker = InboxWorker(engine=engine, settings=settings)
            worker.add_channel(zalo.CHANNEL, channel.normalise)
            await worker.run_once()
            sender = OutboxSender(engine=engine, channel=zalo.CHANNEL, transport=channel.transport,
                                  rate_per_second=500.0, per_chat_interval=0.0)
            await sender.run_once()
            # the same updates keep coming back: still nothing new
            await channel.poll(on_stored=lambda: woken.append(1), long_poll_seconds=1, max_rounds=2)
            await worker.run_once()
            await sender.run_once()
        finally:
            await channel.aclose()
        return len(woken)

    woken = asyncio.run(story())
    assert len(fake.calls_of("getUpdates")) == 6 and fake.calls_of("deleteWebhook")
    stored = rows(engine, InboxUpdate)
    assert len(stored) == (2 if as_list else 1) and {r.status for r in stored} == {"done"}
    assert woken == 1
    assert len(fake.sent_texts("p1")) == 1


def test_polling_survives_an_empty_long_poll(engine, tmp_path, fake) -> None:
    settings = zsettings(tmp_path, fake, public_base_url="")

    async def story() -> None:
        channel = zalo.ZaloChannel(settings=settings, engine=engine)
        try:
            await channel.poll(on_stored=lambda: None, long_poll_seconds=1, max_rounds=2)
        finally:
            await channel.aclose()

    asyncio.run(story())
    assert [c.status for c in fake.calls_of("getUpdates")] == [408, 408]
    assert rows(engine, InboxUpdate) == []


# --- sending: quota, limits, errors ------------------------------------------------------------------------


def _officer(engine: Engine, chat_id: str = "officer-tg") -> int:
    with Session(engine) as session:
        person = Person(name="Cán bộ Hà", commune_code=None)
        session.add(person)
        session.flush()
        session.add(RoleGrant(person_id=person.id or 0, role="officer", status="granted"))
        session.add(ChatIdentity(channel="telegram", user_id=chat_id, chat_id=chat_id, person_id=person.id))
        session.commit()
        return person.id or 0


def _household_person(engine: Engine, chat_id: str, name: str) -> int:
    with Session(engine) as session:
        from bot.uow import ensure_commune

        ensure_commune(session, 10999)
        person = Person(name=name, commune_code=10999)
        session.add(person)
        session.flush()
        session.add(RoleGrant(person_id=person.id or 0, role="household", status="granted", commune_code=10999))
        session.add(ChatIdentity(channel="zalo", user_id=chat_id, chat_id=chat_id, person_id=person.id))
        session.commit()
        return person.id or 0


def _queue(engine: Engine, chat_id: str, n: int, person_id: int | None = None) -> None:
    with Session(engine) as session:
        for i in range(n):
            enqueue(session, channel="zalo", chat_id=chat_id, message=Say(f"Nhắc việc {i}"),
                    idempotency_key=f"t:{chat_id}:{i}", person_id=person_id, priority=10)
        session.commit()


def _send_all(settings: Settings, engine: Engine) -> None:
    async def go() -> None:
        channel = zalo.ZaloChannel(settings=settings, engine=engine)
        try:
            sender = OutboxSender(engine=engine, channel=zalo.CHANNEL, transport=channel.transport,
                                  rate_per_second=500.0, per_chat_interval=0.0)
            await sender.run_once()
        finally:
            await channel.aclose()

    asyncio.run(go())


def test_monthly_quota_warns_officers_and_marks_what_cannot_be_sent(engine, tmp_path, fake) -> None:
    settings = zsettings(tmp_path, fake, zalo_monthly_message_limit=20, zalo_user_limit=2)
    _officer(engine)
    lan = _household_person(engine, "lan", "Trần Thị Lan")
    _household_person(engine, "minh", "Lê Văn Minh")
    _queue(engine, "lan", 22, lan)
    _send_all(settings, engine)
    assert len(fake.sent_texts("lan")) == 20
    outbox = [r for r in rows(engine, OutboxMessage) if r.channel == "zalo"]
    assert [r.status for r in outbox].count("sent") == 20
    unsent = [r for r in outbox if r.status != "sent"]
    assert [r.status for r in unsent] == ["unreachable", "unreachable"]  # marked, not dropped
    assert all(t("zalo.reason_quota") in (r.last_error or "") for r in unsent)
    alerts = [Say.from_json(r.payload).text for r in rows(engine, OutboxMessage) if r.channel == "telegram"]
    assert any("14/20" in a and "(70%)" in a for a in alerts), alerts
    assert any("17/20" in a and "(85%)" in a for a in alerts)
    assert any("19/20" in a and "(95%)" in a for a in alerts)
    assert any("hết 20 tin" in a for a in alerts)
    assert any("2/2 người dùng (100%)" in a for a in alerts)
    assert len(alerts) == len(set(alerts))  # each warning once
    with Session(engine) as session:
        report = unreachable_report(session)
    assert [(u.name, u.reason) for u in report] == [("Trần Thị Lan", "blocked")]  # the leader reminds in person
    # more sends in the same month: no duplicate warnings
    _queue(engine, "minh", 1)
    _send_all(settings, engine)
    assert len([r for r in rows(engine, OutboxMessage) if r.channel == "telegram"]) == len(alerts)


def test_quota_counter_starts_again_each_month(engine, tmp_path) -> None:
    from datetime import UTC, datetime

    settings = zsettings(tmp_path, zalo_monthly_message_limit=3)
    clock = [datetime(2026, 11, 30, 16, 0, tzinfo=UTC)]  # 23:00 in Vietnam, still November
    meter = zalo.UsageMeter(engine, settings, now=lambda: clock[0])
    assert meter.reserve(3) and not meter.reserve(1)
    clock[0] = datetime(2026, 11, 30, 17, 30, tzinfo=UTC)  # 00:30 on 1 December in Vietnam
    assert meter.reserve(1)
    assert meter.usage() == {"month": "2026-12", "messages": 1, "warned": [], "users_warned": []}


def test_429_is_retried_later_then_counted_as_the_quota_running_out(engine, tmp_path, fake) -> None:
    settings = zsettings(tmp_path, fake)
    _queue(engine, "q1", 1)
    fake.fail_next(429, 1, "Quota exceeded")
    _send_all(settings, engine)
    row = rows(engine, OutboxMessage)[0]
    assert row.status == "queued" and row.not_before is not None  # retried later, not lost
    assert fake.sent_texts() == []

    async def go() -> None:
        channel = zalo.ZaloChannel(settings=settings, engine=engine)
        try:
            for _ in range(zalo.QUOTA_429_STREAK):
                fake.fail_next(429, 1, "Quota exceeded")
                with pytest.raises(Exception) as caught:
                    await channel.transport.send("q2", Say("Nhắc").to_json())
            assert type(caught.value).__name__ == "UnreachableError"
        finally:
            await channel.aclose()

    asyncio.run(go())
    usage = zalo.UsageMeter(engine, settings).usage()
    assert usage["messages"] == settings.zalo_monthly_message_limit and 100 in usage["warned"]


def test_errors_map_to_outbox_outcomes(engine, tmp_path, fake) -> None:
    settings = zsettings(tmp_path, fake)
    _officer(engine)
    fake.forbid("blocked")
    _queue(engine, "blocked", 1)
    _send_all(settings, engine)
    assert rows(engine, OutboxMessage)[0].status == "unreachable"

    async def go() -> dict[int, str]:
        channel = zalo.ZaloChannel(settings=settings, engine=engine)
        out = {}
        try:
            for code in (401, 408, 500, 400):
                fake.fail_next(code)
                try:
                    await channel.transport.send("x", Say("a").to_json())
                except Exception as exc:  # noqa: BLE001
                    out[code] = type(exc).__name__
        finally:
            await channel.aclose()
        return out

    assert asyncio.run(go()) == {401: "RetryAfterError", 408: "TransientError", 500: "TransientError",
                                 400: "PermanentError"}
    with Session(engine) as session:
        alerts = session.exec(select(AuditLog).where(AuditLog.action == "channel.alert")).all()
    assert any(a.target.startswith("zalo:alert:token:") for a in alerts)
    # nothing reserved for the failed sends stays counted
    assert zalo.UsageMeter(engine, settings).usage()["messages"] == 0


def test_no_token_or_text_in_logs(engine, tmp_path, fake, caplog) -> None:
    settings = zsettings(tmp_path, fake, zalo_api_base_url="http://127.0.0.1:9")
    caplog.set_level("DEBUG")
    _queue(engine, "lan", 1)
    _send_all(settings, engine)
    assert zs.BOT_TOKEN not in caplog.text and "Nhắc việc" not in caplog.text
    assert zs.BOT_TOKEN not in (rows(engine, OutboxMessage)[0].last_error or "")


def test_register_adds_the_channel_only_with_a_token(engine, tmp_path) -> None:
    from bot.runtime import Runtime

    runtime = Runtime(settings=zsettings(tmp_path), engine=engine)
    channel = zalo.register(runtime)
    assert channel is not None and "zalo" in runtime.extra
    asyncio.run(channel.aclose())
    off = Runtime(settings=zsettings(tmp_path, zalo_bot_token=""), engine=engine)
    assert zalo.register(off) is None and off.extra == {}


@pytest.mark.parametrize("parts", [("outbox",), ("inbox",), ("inbox", "outbox")])
def test_the_runtime_closes_the_channel_whichever_parts_it_ran(engine, tmp_path, parts) -> None:
    """A worker process of the "outbox" part (WORKER_PROCESSES=2) sends through the channel's transport
    without running its background work; its stop() closes the channel's HTTP clients all the same."""
    from bot.runtime import Runtime

    runtime = Runtime(settings=zsettings(tmp_path, zalo_api_base_url="http://127.0.0.1:9"), engine=engine)
    channel = zalo.register(runtime)
    assert channel is not None

    async def go() -> None:
        await runtime.start(parts)
        await asyncio.sleep(0.05)
        assert not channel.http.is_closed and not channel.client.http.is_closed
        await runtime.stop()

    asyncio.run(go())
    assert channel.http.is_closed and channel.client.http.is_closed


# --- the real background runtime ---------------------------------------------------------------------------


def _wait_for(predicate: Any, timeout: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_background_runtime_webhook_mode(engine, tmp_path, fake) -> None:
    settings = zsettings(tmp_path, fake)
    app = create_app(settings, engine=engine)
    assert "zalo" in app.state.runtime.extra  # registered by create_app
    with TestClient(app) as client:
        _wait_for(lambda: fake.webhook is not None)
        resp = client.post("/webhooks/zalo", json=zs.bot_text("live1", "Xin chào"), headers=HEADERS)
        assert resp.status_code == 200
        _wait_for(lambda: len(fake.sent_texts("live1")) >= 1)
    assert "1. Chủ hộ gia đình" in fake.sent_texts("live1")[0]
    assert fake.calls_of("getUpdates") == []


def test_background_runtime_polling_mode(engine, tmp_path, fake) -> None:
    settings = zsettings(tmp_path, fake, public_base_url="")
    event = zs.bot_text("live2", "Xin chào")["result"]
    fake.push(event)
    app = create_app(settings, engine=engine)
    with TestClient(app):
        _wait_for(lambda: len(fake.sent_texts("live2")) >= 1)
        _wait_for(lambda: len(fake.calls_of("getUpdates")) >= 4)  # the same update served again and again
    assert len(fake.sent_texts("live2")) == 1
    assert len(rows(engine, InboxUpdate)) == 1
