"""A recorded stream of Telegram updates for N simulated families, and what each prefix of it must leave.

``record_template()`` drives ONE household through the real stack in-process (webhook → inbox → flows →
outbox → FakeTelegram, on a throwaway SQLite file), answering by the buttons the bot shows: invite link,
role, name, household size, phone (contact card), consent, registration, then the whole self-assessment
with evidence photos and the final submission. Each update it sent becomes a template step; after each
step it notes what the database and the chat must hold (the "expectation" of that prefix).

``family_stream()`` turns the template into family n's updates (its own chat id, name, phone number and
photos); ``allocate()`` splits an update budget between families (every family registers; the budget left
lets some of them go on to answer, send photos and submit), as a real campaign looks.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from bot.inbox import InboxWorker
from bot.outbox import OutboxSender
from bot.telegram import CHANNEL, TelegramChannel
from bot.uow import ensure_commune
from models.db import make_engine
from models.settings import get_settings
from models.tables import Assessment, Conversation, Evidence, Person, Registration, Village
from tests.fakes import telegram_server as tg
from tests.fakes.telegram_server import FakeTelegram
from webhook.app import create_app

COMMUNE = 10999  # Xã Gia Lộc, Hải Phòng
VILLAGE_CODE = "dong01"
SECRET = "harness-webhook-secret"
TEMPLATE_NAME = "Phan Thị Mẫu"  # in no catalog text, so replacing it only touches the name
TEMPLATE_PHONE = "84912345678"
SURNAMES = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi", "Đỗ", "Hồ"]
MIDDLES = ["Văn", "Thị", "Hữu", "Đức", "Minh", "Thanh", "Ngọc", "Quang", "Xuân", "Thu"]
GIVEN = ["An", "Bình", "Chi", "Dũng", "Giang", "Hà", "Khánh", "Lan", "Mai", "Nam", "Oanh", "Phúc", "Quân",
         "Sơn", "Tâm", "Uyên", "Vinh", "Xuyến", "Yến", "Hải"]
REGISTRATION_STEPS = 7  # invite, role, name, members, phone, consent, register


@dataclass
class Expect:
    """What the database and the chat hold after a prefix of one family's stream."""

    replies: int  # messages the bot sent to the chat (replies only, reminders not counted)
    person: bool
    registered: bool
    answers: dict[str, Any]
    status: str | None
    photos: int  # evidence rows
    step: str


@dataclass
class TemplateStep:
    kind: str  # text | callback | contact | photo
    value: str = ""  # text, callback data; for photos the photo's number in the family's stream


@dataclass
class Template:
    steps: list[TemplateStep]
    expects: list[Expect]  # expects[k] = after steps[:k+1]
    texts: list[str]  # every reply text in order (with TEMPLATE_NAME inside)
    photo_count: int = 0


@dataclass
class FamilyUpdate:
    update_id: int
    body: dict[str, Any]


@dataclass
class Family:
    n: int
    chat_id: int
    name: str
    phone: str
    updates: list[FamilyUpdate] = field(default_factory=list)
    photos: dict[str, bytes] = field(default_factory=dict)  # file_id → JPEG bytes


def family_name(n: int) -> str:
    return f"{SURNAMES[n % 10]} {MIDDLES[(n // 10) % 10]} {GIVEN[(n // 100) % 20]}"


def family_phone(n: int) -> str:
    """A different Vietnamese mobile number per family, as Telegram shares it (no plus sign)."""
    return f"849{n:08d}"


def chat_id_of(n: int) -> int:
    return 700_000_000 + n


def photo_bytes(n: int, k: int) -> bytes:
    """A small JPEG unique to (family, photo), with an EXIF date."""
    image = Image.new("RGB", (96, 72), (n % 251, (n // 251) % 251, (37 * k + 11) % 251))
    image.putpixel((k % 96, 0), (255, 255, 255))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2026:10:20 08:15:00"
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=80)
    return out.getvalue()


def photo_sha(n: int, k: int) -> str:
    return hashlib.sha256(photo_bytes(n, k)).hexdigest()


def seed_village(engine: Engine) -> None:
    """The commune and an active village with an invite code: families join by the invite link."""
    with Session(engine) as session:
        ensure_commune(session, COMMUNE)
        if session.exec(select(Village).where(Village.invite_code == VILLAGE_CODE)).first() is None:
            session.add(Village(commune_code=COMMUNE, name="Thôn Đông", invite_code=VILLAGE_CODE, status="active"))
        session.commit()


def snapshot(engine: Engine, chat_id: int, replies: int) -> Expect:
    with Session(engine) as session:
        person = session.exec(select(Person)).first()
        registered = session.exec(select(Registration).where(Registration.status == "registered")).first()
        assessment = session.exec(select(Assessment)).first()
        photos = len(session.exec(select(Evidence)).all())
        conversation = session.exec(select(Conversation)).first()
        return Expect(
            replies=replies,
            person=person is not None,
            registered=registered is not None,
            answers=dict(assessment.answers or {}) if assessment else {},
            status=assessment.status if assessment else None,
            photos=photos,
            step=str((conversation.state or {}).get("step", "idle")) if conversation else "idle",
        )


def record_template(workdir: Path | None = None) -> Template:
    """Drive one household through the real stack and record its updates and expectations."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp, FakeTelegram().running() as fake:
        return asyncio.run(_record(Path(tmp), fake))


async def _record(tmp: Path, fake: FakeTelegram) -> Template:
    settings = get_settings(
        data_dir=tmp, telegram_bot_token=fake.token, telegram_api_base_url=fake.base_url,
        telegram_webhook_secret=SECRET, public_base_url="https://hoctap.example",
        per_chat_interval_seconds=0.0, telegram_rate_per_second=1000.0,
    )
    engine = make_engine(settings.db_url)
    SQLModel.metadata.create_all(engine)
    seed_village(engine)
    chat = chat_id_of(0)
    channel = TelegramChannel(settings=settings, engine=engine)
    await channel.initialize()
    worker = InboxWorker(engine=engine, settings=settings)
    worker.add_channel(CHANNEL, channel.normalise, ordered_ids=True)
    sender = OutboxSender(engine=engine, channel=CHANNEL, transport=channel.transport,
                          rate_per_second=1000.0, per_chat_interval=0.0)
    app = create_app(settings, engine=engine, background=False)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hoctap")
    steps: list[TemplateStep] = []
    expects: list[Expect] = []
    ids = itertools.count(1)
    photos = 0

    async def send(step: TemplateStep) -> list[dict[str, Any]]:
        nonlocal photos
        uid = next(ids)
        if step.kind == "text":
            body = tg.text_update(uid, chat, step.value)
        elif step.kind == "callback":
            body = tg.callback_update(uid, chat, step.value)
        elif step.kind == "contact":
            body = tg.contact_update(uid, chat, step.value)
        else:
            file_id = f"f0_{photos}"
            fake.add_file(file_id, photo_bytes(0, photos))
            step = TemplateStep("photo", str(photos))
            photos += 1
            body = tg.photo_update(uid, chat, file_id)
        before = len(fake.sent_messages(chat))
        resp = await client.post("/webhooks/telegram", json=body, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
        assert resp.status_code == 200
        await worker.run_once()
        await sender.run_once()
        new = fake.sent_messages(chat)[before:]
        steps.append(step)
        expects.append(snapshot(engine, chat, len(fake.sent_messages(chat))))
        return new

    def buttons(messages: list[dict[str, Any]]) -> dict[str, str]:
        for message in reversed(messages):
            rows = (message.get("reply_markup") or {}).get("inline_keyboard")
            if rows:
                return {b["text"]: b["callback_data"] for row in rows for b in row}
        return {}

    try:
        last = await send(TemplateStep("text", f"/start v_{VILLAGE_CODE}"))
        last = await send(TemplateStep("callback", buttons(last)["Chủ hộ gia đình"]))
        last = await send(TemplateStep("text", TEMPLATE_NAME))
        last = await send(TemplateStep("text", "4"))
        last = await send(TemplateStep("contact", TEMPLATE_PHONE))
        last = await send(TemplateStep("callback", buttons(last)["Đồng ý"]))
        last = await send(TemplateStep("callback", buttons(last)["Đăng ký"]))
        assert len(steps) == REGISTRATION_STEPS and expects[-1].registered, "registration did not complete"
        assert "Tự đánh giá" in buttons(last)
        # typed, not pressed: the button's value names this family's household id
        last = await send(TemplateStep("text", "Tự đánh giá"))
        for _ in range(80):
            labels = buttons(last)
            text = last[-1]["text"] if last else ""
            if "Gửi Hội Khuyến học" in labels:
                last = await send(TemplateStep("callback", labels["Gửi Hội Khuyến học"]))
                break
            if text.startswith("📷") and "Xong" not in labels:
                last = await send(TemplateStep("photo"))
                continue
            if "Xong" in labels:
                last = await send(TemplateStep("callback", labels["Xong"]))
                continue
            choice = next((p for p in ("Có", "100%") if p in labels), None) or next(
                label for label in labels if label.startswith("Có")
            )
            last = await send(TemplateStep("callback", labels[choice]))
        assert expects[-1].status == "submitted", "the recorded assessment was not submitted"
        texts = [m["text"] for m in fake.sent_messages(chat)]
    finally:
        await client.aclose()
        await channel.shutdown()
        engine.dispose()
    return Template(steps=steps, expects=expects, texts=texts, photo_count=photos)


def allocate(template: Template, *, families: int, updates: int, seed: int) -> list[int]:
    """How many template steps each family sends: all register, the rest of the budget goes further."""
    import random

    full = len(template.steps)
    base = min(REGISTRATION_STEPS, full, max(1, updates // max(families, 1)))
    lengths = [base] * families
    left = updates - base * families
    order = list(range(families))
    random.Random(seed).shuffle(order)
    for n in order:
        if left <= 0:
            break
        extra = min(full - lengths[n], left)
        lengths[n] += extra
        left -= extra
    return lengths


def family_stream(template: Template, n: int, length: int, *, families: int, base_id: int = 1) -> Family:
    """Family n's first ``length`` updates; update ids are global and increase along each family's stream."""
    family = Family(n=n, chat_id=chat_id_of(n), name=family_name(n), phone=family_phone(n))
    for k, step in enumerate(template.steps[:length]):
        uid = base_id + k * families + n
        if step.kind == "text":
            body = tg.text_update(uid, family.chat_id, step.value.replace(TEMPLATE_NAME, family.name))
        elif step.kind == "callback":
            body = tg.callback_update(uid, family.chat_id, step.value)
        elif step.kind == "contact":
            body = tg.contact_update(uid, family.chat_id, family.phone)
        else:
            photo = int(step.value)
            file_id = f"f{n}_{photo}_{secrets.token_hex(3)}"
            family.photos[file_id] = photo_bytes(n, photo)
            body = tg.photo_update(uid, family.chat_id, file_id)
        body["message" if "message" in body else "callback_query"]["from"]["first_name"] = family.name.split()[-1]
        family.updates.append(FamilyUpdate(uid, body))
    return family
