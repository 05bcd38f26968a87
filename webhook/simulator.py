"""The home page and the browser chat simulator: the same flows and unit of work as Telegram and Zalo, as channel "web".

A web chat is identified by a ``chat_id`` chosen by the browser (kept in the URL and sessionStorage), or by a
seeded demo persona's chat id. Every message the browser sends carries a ``client_msg_id``: a resend of the
same id is stored once (InboxUpdate, unique per channel + update id) and processed once.
Bot messages are OutboxMessage rows of channel "web"; the browser reads them (and marks them sent), so
messages queued by others — a reminder, an officer's decision — reach the simulator too.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from sqlalchemy import func, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from bot.media import store_photo
from bot.outbox import enqueue, write_lock
from flows.i18n import CatalogError, t
from flows.types import Event, Say
from models.tables import ChatIdentity, Commune, InboxUpdate, OutboxMessage, Province, Village
from webhook.demo import DEMO_PASSWORD, DEMO_USERNAME, PERSONAS, demo_commune

router = APIRouter()
TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")

CHANNEL = "web"
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_TEXT = 2000


def _now(request: Request) -> datetime:
    clock = getattr(request.app.state, "clock", None)
    return clock() if clock else datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they are UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _check_id(value: str, what: str) -> str:
    if not _ID_RE.match(value):
        raise HTTPException(422, f"{what} must be 1–64 letters, digits, '-' or '_'")
    return value


# ---------------------------------------------------------------------------------------------- schemas


class ButtonOut(BaseModel):
    label: str
    value: str


class MessageOut(BaseModel):
    id: int
    text: str
    buttons: list[ButtonOut] = Field(default_factory=list)
    request_contact: bool = False
    at: str


class SendIn(BaseModel):
    chat_id: str
    kind: Literal["text", "button", "command", "contact"] = "text"
    text: str = Field(default="", max_length=_MAX_TEXT)
    value: str = Field(default="", max_length=_MAX_TEXT)
    client_msg_id: str
    after: int | None = Field(default=None, description="the last bot message id the browser has; None = only the replies")


class Reply(BaseModel):
    messages: list[MessageOut]
    last_id: int
    duplicate: bool = False
    refused: str | None = None


class HistoryItem(BaseModel):
    side: Literal["user", "bot"]
    id: int
    text: str
    buttons: list[ButtonOut] = Field(default_factory=list)
    request_contact: bool = False
    photo: bool = False
    at: str


class History(BaseModel):
    items: list[HistoryItem]
    last_id: int


class PersonaOut(BaseModel):
    chat_id: str
    label: str
    role: str


# ---------------------------------------------------------------------------------------------- events


def to_event(kind: str, text: str, value: str) -> Event:
    """The flows Event for what the browser sent; typed "/start v_abc" becomes a command, as on Telegram."""
    text = text.strip()
    if kind == "text" and text.startswith("/"):
        kind, value = "command", ""
    if kind == "command":
        command, _, payload = text.lstrip("/").partition(" ")
        command = command.split("@", 1)[0].lower()
        return Event(kind="command", text=command, value=(value or payload).strip())
    if kind == "button":
        return Event(kind="button", text=text, value=value)
    if kind == "contact":
        return Event(kind="contact", text=text or value)
    return Event(kind="text", text=text)


def _message(row: OutboxMessage) -> MessageOut:
    say = Say.from_json(row.payload)
    return MessageOut(
        id=row.id or 0,
        text=say.text,
        buttons=[ButtonOut(label=b.label, value=b.value) for b in say.buttons],
        request_contact=say.request_contact,
        at=(_utc(row.created_at) or datetime.now(UTC)).isoformat(),
    )


def _deliver(session: Session, chat_id: str, *, after: int | None, ids: list[int] | None, now: datetime) -> list[MessageOut]:
    """Bot messages for this web chat (after an id, or exactly ``ids``), marked sent. Does not commit."""
    stmt = select(OutboxMessage).where(OutboxMessage.channel == CHANNEL, OutboxMessage.chat_id == chat_id)
    if ids is not None:
        stmt = stmt.where(col(OutboxMessage.id).in_(ids or [-1]))
    else:
        stmt = stmt.where(col(OutboxMessage.id) > (after or 0), col(OutboxMessage.not_before) <= now)
    rows = list(session.exec(stmt.order_by(col(OutboxMessage.id))).all())
    for row in rows:
        if row.status in ("queued", "sending"):
            row.status, row.sent_at, row.attempts = "sent", now, row.attempts + 1
            session.add(row)
    return [_message(row) for row in rows]


def _max_id(session: Session, chat_id: str) -> int:
    stmt = select(func.max(OutboxMessage.id)).where(OutboxMessage.channel == CHANNEL, OutboxMessage.chat_id == chat_id)
    return int(session.exec(stmt).one() or 0)


def _process(request: Request, *, chat_id: str, client_msg_id: str, event: Event | None, payload: dict[str, Any],
             after: int | None, refusal: str | None = None) -> Reply:
    """Store the update once, run it through the unit of work, commit, and answer with the bot's messages."""
    from bot.uow import process_event  # imported late: it loads the whole flow engine
    engine = request.app.state.engine
    settings = request.app.state.settings
    now = _now(request)
    update_id = f"{chat_id}:{client_msg_id}"
    base = f"web:{chat_id}:{client_msg_id}"
    duplicate = False
    with write_lock(engine), Session(engine, expire_on_commit=False) as session:
        inbox = session.exec(
            select(InboxUpdate).where(InboxUpdate.channel == CHANNEL, InboxUpdate.update_id == update_id)
        ).first()
        if inbox is not None:
            duplicate = True
        else:
            if engine.dialect.name == "postgresql":
                # one message of a chat at a time, across tabs and processes (as the inbox worker does)
                session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"inbox:web:{chat_id}"})
            before = _max_id(session, chat_id)
            inbox = InboxUpdate(channel=CHANNEL, update_id=update_id, chat_key=chat_id, payload=payload,
                                status="processing", attempts=1, received_at=now)
            session.add(inbox)
            try:
                session.flush()
            except IntegrityError:  # the same message from another tab, at the same instant
                session.rollback()
                duplicate = True
            else:
                if refusal is not None:  # answered by the channel itself, as Telegram's adapter does
                    enqueue(session, channel=CHANNEL, chat_id=chat_id, message=Say(refusal),
                            idempotency_key=f"{base}:refused", not_before=now)
                    inbox.status = "ignored"
                else:
                    assert event is not None
                    process_event(session, channel=CHANNEL, chat_id=chat_id, event=event, now=now,
                                  settings=settings, idempotency_base=base)
                    inbox.status = "done"
                session.flush()
                replies = list(session.exec(
                    select(OutboxMessage.id).where(OutboxMessage.channel == CHANNEL, OutboxMessage.chat_id == chat_id,
                                                   col(OutboxMessage.id) > before)
                ).all())
                inbox.payload = {**payload, "after": before, "replies": replies}
                inbox.processed_at = now
                session.add(inbox)
                session.commit()
        if duplicate:
            inbox = session.exec(
                select(InboxUpdate).where(InboxUpdate.channel == CHANNEL, InboxUpdate.update_id == update_id)
            ).first()
        replies = [int(i) for i in (inbox.payload.get("replies") or [])] if inbox is not None else []
        messages = _deliver(session, chat_id, after=after, ids=None if after is not None else replies, now=now)
        last_id = max([after or 0, *(m.id for m in messages)])
        session.commit()
    return Reply(messages=messages, last_id=last_id, duplicate=duplicate, refused=refusal)


# ---------------------------------------------------------------------------------------------- API


@router.post("/simulator/api/send", response_model=Reply, tags=["simulator"])
def send(body: SendIn, request: Request) -> Reply:
    """Send text, a button press, a command or a contact as the web chat ``chat_id``; returns the bot's messages."""
    chat_id = _check_id(body.chat_id, "chat_id")
    client_msg_id = _check_id(body.client_msg_id, "client_msg_id")
    if body.kind in ("text", "command", "contact") and not (body.text.strip() or body.value.strip()):
        raise HTTPException(422, "empty message")
    event = to_event(body.kind, body.text, body.value)
    payload = {"kind": body.kind, "text": body.text, "value": body.value}
    return _process(request, chat_id=chat_id, client_msg_id=client_msg_id, event=event, payload=payload,
                    after=body.after)


@router.post("/simulator/api/photo", response_model=Reply, tags=["simulator"])
async def photo(
    request: Request,
    chat_id: str = Form(...),
    client_msg_id: str = Form(...),
    after: int | None = Form(default=None),
    file: UploadFile = File(...),
) -> Reply:
    """Upload a photo: checked and stored like a Telegram photo; a refused photo gets the channel's refusal."""
    _check_id(chat_id, "chat_id")
    _check_id(client_msg_id, "client_msg_id")
    settings = request.app.state.settings
    data = await file.read(settings.photo_max_bytes + 1)
    await file.close()

    def work() -> Reply:
        stored = store_photo(data, media_dir=settings.media_path, max_bytes=settings.photo_max_bytes,
                             max_pixels=settings.photo_max_pixels)
        if isinstance(stored, str):
            try:
                refusal = t(stored)
            except CatalogError:
                refusal = t("simulator.photo_refused")
            return _process(request, chat_id=chat_id, client_msg_id=client_msg_id, event=None,
                            payload={"kind": "photo", "refused": stored}, after=after, refusal=refusal)
        event = Event(kind="photo", photo=stored.ref)
        return _process(request, chat_id=chat_id, client_msg_id=client_msg_id, event=event,
                        payload={"kind": "photo", "sha256": stored.ref.sha256}, after=after)

    return await run_in_threadpool(work)


@router.get("/simulator/api/messages", response_model=Reply, tags=["simulator"])
def messages(request: Request, chat_id: str = Query(...), after: int = Query(0, ge=0)) -> Reply:
    """Bot messages for a web chat after an id (replies, reminders, officers' decisions); marks them sent."""
    _check_id(chat_id, "chat_id")
    engine = request.app.state.engine
    with write_lock(engine), Session(engine, expire_on_commit=False) as session:
        found = _deliver(session, chat_id, after=after, ids=None, now=_now(request))
        session.commit()
    return Reply(messages=found, last_id=max([after, *(m.id for m in found)]))


@router.get("/simulator/api/history", response_model=History, tags=["simulator"])
def history(request: Request, chat_id: str = Query(...)) -> History:
    """The whole conversation of a web chat, both sides, for a page reload."""
    _check_id(chat_id, "chat_id")
    engine = request.app.state.engine
    now = _now(request)
    with write_lock(engine), Session(engine, expire_on_commit=False) as session:
        bot = _deliver(session, chat_id, after=0, ids=None, now=now)
        session.commit()
        inbox = session.exec(
            select(InboxUpdate).where(InboxUpdate.channel == CHANNEL, InboxUpdate.chat_key == chat_id)
            .order_by(col(InboxUpdate.id))
        ).all()
    # a person's message goes after every bot message that existed when it was processed ("after" in its
    # payload), so the order is right even when clocks tie
    items: list[tuple[float, int, HistoryItem]] = []
    for row in inbox:
        p = row.payload or {}
        is_photo = p.get("kind") == "photo"
        text = "📷" if is_photo else str(p.get("text") or p.get("value") or "")
        at = (_utc(row.received_at) or now).isoformat()
        position = float(p.get("after") or 0) + 0.5
        items.append((position, row.id or 0, HistoryItem(side="user", id=row.id or 0, text=text, photo=is_photo, at=at)))
    for m in bot:
        items.append((float(m.id), 0, HistoryItem(side="bot", id=m.id, text=m.text, buttons=m.buttons,
                                                  request_contact=m.request_contact, at=m.at)))
    items.sort(key=lambda item: item[:2])
    return History(items=[item[2] for item in items], last_id=max([0, *(m.id for m in bot)]))


@router.get("/simulator/api/personas", response_model=list[PersonaOut], tags=["simulator"])
def personas(request: Request) -> list[PersonaOut]:
    """The seeded demo people the simulator can speak as (empty without the demo)."""
    return _personas(request)


def _personas(request: Request) -> list[PersonaOut]:
    with Session(request.app.state.engine) as session:
        seeded = set(session.exec(
            select(ChatIdentity.user_id).where(
                ChatIdentity.channel == CHANNEL, col(ChatIdentity.user_id).in_([p.chat_id for p in PERSONAS]))
        ).all())
    return [PersonaOut(chat_id=p.chat_id, label=p.label, role=p.role) for p in PERSONAS if p.chat_id in seeded]


# ---------------------------------------------------------------------------------------------- pages


def _demo(request: Request) -> Commune | None:
    with Session(request.app.state.engine) as session:
        return demo_commune(session)


def _province_short(request: Request, commune: Commune | None) -> str:
    """ "Hải Phòng" for the demo commune's province (from the Province row, no list scan)."""
    if commune is None:
        return ""
    from flows.communes import province_short

    with Session(request.app.state.engine) as session:
        province = session.get(Province, commune.province_code)
    return province_short(province.name) if province else ""


@router.get("/simulator", response_class=HTMLResponse, include_in_schema=False)
def simulator_page(request: Request) -> HTMLResponse:
    demo = _demo(request)
    return TEMPLATES.TemplateResponse(request, "simulator/index.html", {
        "demo": demo,
        "demo_province": _province_short(request, demo),
        "personas": _personas(request),
        "new_chat_id": "web-" + secrets.token_hex(6),
    })


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def home(request: Request) -> HTMLResponse:
    settings = request.app.state.settings
    demo = _demo(request)
    channels = [
        ("Telegram", settings.telegram_enabled),
        ("Zalo Bot", settings.zalo_enabled),
        ("Zalo OA", settings.zalo_oa_enabled),
        ("Trình mô phỏng (web)", True),
    ]
    return TEMPLATES.TemplateResponse(request, "home.html", {
        "demo": demo if settings.demo else None,
        "demo_province": _province_short(request, demo),
        "demo_username": DEMO_USERNAME,
        "demo_password": DEMO_PASSWORD,
        "channels": channels,
        "invite_codes": _invite_codes(request, demo),
    })


def _invite_codes(request: Request, demo: Commune | None) -> list[tuple[str, str]]:
    if demo is None:
        return []
    with Session(request.app.state.engine) as session:
        rows = session.exec(
            select(Village).where(Village.commune_code == demo.code, Village.status == "active").order_by(col(Village.id))
        ).all()
    return [(v.name, v.invite_code) for v in rows]
