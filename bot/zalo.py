"""Zalo Bot Platform adapter (the free "Bot …" accounts): our own small httpx client, no SDK.

The API is Telegram-like: ``{ZALO_API_BASE_URL}/bot{token}/{method}``, answers ``{ok, result}`` or
``{ok: false, error_code, description}``. What differs, and what this module does about it:

- No buttons at all. ``render_text`` turns a Say's buttons into a short numbered list ("1. Có\\n2. Không");
  ``choice_event`` maps what the person types back ("1", the label, the label without diacritics) to the
  button value, using the last message we sent to that chat (read from the outbox, so no new table).
  When that message is the conversation's own prompt, the text goes to the flows unchanged: they map
  "1"/"co" themselves and know where a typed number is an answer (a number question), not a button.
  Prompts that ask for a number are rendered with "Hoặc gõ: …" instead of numbers, for the same reason.
- Events come in several envelopes (``{ok, result: {...}}``, the bare event, a list from getUpdates; the
  photo in ``photo`` or ``photo_url``): ``extract_events`` accepts them all.
- getUpdates has no offset: the same updates come back on every poll. The inbox's unique
  (channel, update id = message_id) key stores each once.
- Photos arrive as URLs on Zalo's servers: downloaded at once and validated by bot/media.py.
- The free plan allows 3,000 messages a month and 50 users per bot: ``UsageMeter`` counts sends per month
  (Asia/Ho_Chi_Minh), warns officers at 70/85/95 % and when the quota is used up; a message that cannot be
  sent is marked ``unreachable`` (with the reason), which the village leader's list shows as "remind in
  person". Nothing is dropped silently.

Parts shared with the Zalo OA adapter (bot/zalo_oa.py) live here: numbered choices, photo download,
officer alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from bot.inbox import Inbound, store_update
from bot.media import TOO_BIG, store_photo
from bot.outbox import (
    PermanentError,
    RetryAfterError,
    TransientError,
    UnreachableError,
    enqueue,
    insert_ignore,
    utcnow,
    write_lock,
)
from flows import answers
from flows.i18n import t
from flows.types import Button, Event, Say
from models.settings import Settings
from models.tables import (
    AuditLog,
    ChannelCredential,
    ChatIdentity,
    Conversation,
    OutboxMessage,
    RoleGrant,
)

log = logging.getLogger("hoctap.zalo")

CHANNEL = "zalo"
USAGE_KEY = "zalo:usage"  # ChannelCredential.channel of the monthly usage counter
MAX_TEXT = 2000
RATE_PER_SECOND = 5.0  # no per-second limit is documented; stay gentle
WARN_PERCENTS = (70, 85, 95)
QUOTA_429_STREAK = 3  # this many 429 "Quota exceeded" in a row: the month's quota is gone
RETRY_AFTER_429 = 60.0
CONFIG_PAUSE = 600.0  # token rejected: keep the messages, try again in 10 minutes
POLL_IDLE = 1.0  # getUpdates answers at once with the same old updates: do not hammer it
ALERT_PRIORITY = 1
DOWNLOAD_TIMEOUT = 20.0
COMMAND = re.compile(r"^/([A-Za-z_]\w*)(?:@\S+)?(?:\s+(.*))?$", re.S)

# catalog messages whose prompt takes a typed number as the answer: their buttons are not numbered
# (plus every "assess.hint_*": the hints of number and share questions)
NUMERIC_PROMPTS = ("leader.add_members", "signup.ask_members", "signup.ask_phone")
UNSUPPORTED_EVENTS = {
    "message.sticker.received": "sticker",
    "message.voice.received": "voice",
    "message.unsupported.received": "other",
    "message.link.received": "other",
    "message.file.received": "document",
    "message.video.received": "video",
}


# --- numbered choices (shared with Zalo OA) ----------------------------------------------------------------


def _fragments(key: str) -> list[str]:
    """The fixed parts of a catalog message (between its placeholders), longest first."""
    from flows.i18n import catalog

    parts = re.split(r"\{[^}]*\}", catalog()[key])
    return sorted((p.strip() for p in parts if len(p.strip()) >= 8), key=len, reverse=True)


@functools.lru_cache(maxsize=1)
def _numeric_markers() -> tuple[str, ...]:
    from flows.i18n import catalog

    keys = [*NUMERIC_PROMPTS, *(key for key in catalog() if key.startswith("assess.hint_"))]
    return tuple(frags[0] for key in keys if key in catalog() and (frags := _fragments(key)))


def is_numeric_prompt(say: Say) -> bool:
    """The question takes a typed number (a count, a share, a phone): digits are answers, not buttons."""
    return any(marker in say.text for marker in _numeric_markers())


_NUMBERED_LINE = re.compile(r"^\s*(\d{1,2})[.)]\s+(.+)$")


def _already_numbered(text: str, buttons: Sequence[Button]) -> int:
    """How many leading buttons the text already lists as "1. …", "2. …" (the flows do it for long labels)."""
    lines = [_NUMBERED_LINE.match(line) for line in text.splitlines()]
    listed = {int(m.group(1)): m.group(2) for m in lines if m}
    count = 0
    for n, button in enumerate(buttons, 1):
        label = button.label.rstrip("…").strip()
        if n in listed and label and answers.fold(listed[n]).startswith(answers.fold(label)):
            count = n
        else:
            break
    return count


def _digits_hint(n: int) -> str:
    if n == 1:
        return t("zalo.pick_one")
    if n <= 4:
        return t("zalo.pick_few", digits=", ".join(str(i) for i in range(1, n)), last=n)
    return t("zalo.pick_range", last=n)


def render_text(say: Say) -> str:
    """A Say as plain text: the buttons become a numbered list (or "Hoặc gõ: …" on number questions)."""
    text = say.text if say.text.strip() else "…"
    extra: list[str] = []
    if say.request_contact:
        extra.append(t("zalo.type_phone"))
    if say.buttons:
        if is_numeric_prompt(say):
            extra.append(t("zalo.or_type", labels=" · ".join(b.label for b in say.buttons)))
        else:
            skip = _already_numbered(text, say.buttons)
            lines = [f"{n}. {b.label}" for n, b in enumerate(say.buttons, 1) if n > skip]
            if lines:
                extra.append("\n".join(lines))
            extra.append(_digits_hint(len(say.buttons)))
    return "\n\n".join([text, *extra]) if extra else text


def match_offered(text: str, offered: Say) -> Button | None:
    """The button of ``offered`` that a typed text means: its number, its label, the label without
    diacritics (or a prefix of one label only). On number questions a number is an answer, not a button."""
    folded = answers.fold(text)
    if not folded or not offered.buttons:
        return None
    if is_numeric_prompt(offered) and re.match(r"^\d", folded):
        return None
    if folded.isdigit() and (not folded.isascii() or len(folded) > 3):
        return None  # "①", "²" or ten thousand digits: not a menu number (and int() would refuse them)
    value = answers.match_button(text, offered.buttons)
    return next((b for b in offered.buttons if b.value == value), None) if value is not None else None


def choice_event(text: str, offered: Say | None, prompt: Say | None) -> Event:
    """Typed text → Event. ``offered``: the last message the person saw; ``prompt``: the flows' question.

    Same buttons as the prompt: the text goes to the flows as it is (they map "1", "co" and labels, and know
    number questions). Another message (a reminder, a notice): we map the digit or label to its button.
    """
    if offered is None or not offered.buttons:
        return Event(kind="text", text=text)
    if prompt is not None and prompt.buttons == offered.buttons:
        return Event(kind="text", text=text)
    button = match_offered(text, offered)
    if button is None:
        return Event(kind="text", text=text)
    return Event(kind="button", value=button.value, text=button.label)


def text_event(text: str, offered: Say | None = None, prompt: Say | None = None) -> Event:
    """A typed message: "/huy" and "/start abc" are commands; anything else goes through ``choice_event``."""
    stripped = text.strip()
    match = COMMAND.match(stripped)
    if match:
        return Event(kind="command", text=match.group(1).lower(), value=(match.group(2) or "").strip())
    return choice_event(text, offered, prompt)


def load_choice_context(engine: Engine, channel: str, chat_id: str, user_id: str) -> tuple[Say | None, Say | None]:
    """(the last message sent to this chat, the conversation's current prompt), from the database."""
    with Session(engine) as session:
        row = session.exec(
            select(OutboxMessage)
            .where(
                OutboxMessage.channel == channel,
                OutboxMessage.chat_id == chat_id,
                OutboxMessage.status == "sent",
            )
            .order_by(col(OutboxMessage.sent_at).desc(), col(OutboxMessage.id).desc())
            .limit(1)
        ).first()
        offered = Say.from_json(row.payload) if row is not None else None
        identity = session.exec(
            select(ChatIdentity).where(ChatIdentity.channel == channel, ChatIdentity.user_id == user_id)
        ).first()
        prompt = None
        if identity is not None:
            conversation = session.exec(
                select(Conversation).where(Conversation.identity_id == identity.id)
            ).first()
            data = (conversation.state or {}).get("data") if conversation is not None else None
            if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
                prompt = Say.from_json(data["prompt"])
    return offered, prompt


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Split at paragraph, line, then word boundaries so that each part has at most ``limit`` characters."""
    text = text if text.strip() else "…"
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = limit
        for sep in ("\n\n", "\n", " "):
            at = window.rfind(sep)
            if at > limit // 2:
                cut = at + len(sep)
                break
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n")
    parts.append(rest)
    return [p for p in parts if p.strip()] or ["…"]


# --- photos (shared with Zalo OA) ---------------------------------------------------------------------------


class DownloadError(Exception):
    """The photo URL answered 4xx (expired, gone): ask the person to send it again."""


async def download(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes | None:
    """The bytes at ``url``; None when larger than ``max_bytes``. 4xx → DownloadError; network/5xx raise
    httpx errors (the inbox retries the update with backoff)."""
    if not url.lower().startswith(("http://", "https://")):
        raise DownloadError("not an http URL")
    async with client.stream("GET", url, timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as response:
        if 400 <= response.status_code < 500:
            raise DownloadError(f"HTTP {response.status_code}")
        response.raise_for_status()
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            return None
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data.extend(chunk)
            if len(data) > max_bytes:
                return None
    return bytes(data)


async def photo_inbound(
    client: httpx.AsyncClient, settings: Settings, url: str, chat_id: str, who: dict[str, str]
) -> Inbound:
    """Download, validate and store a photo: an Event for the flows, or the channel's polite refusal."""
    try:
        data = await download(client, url, settings.photo_max_bytes)
    except DownloadError:
        return Inbound(chat_id=chat_id, replies=(Say(t("channel.photo_download_failed")),))
    if data is None:
        return Inbound(chat_id=chat_id, replies=(Say(t(TOO_BIG)),))
    stored = await asyncio.to_thread(
        store_photo,
        data,
        media_dir=settings.media_path,
        max_bytes=settings.photo_max_bytes,
        max_pixels=settings.photo_max_pixels,
    )
    if isinstance(stored, str):
        return Inbound(chat_id=chat_id, replies=(Say(t(stored)),))
    return Inbound(chat_id=chat_id, event=Event(kind="photo", photo=stored.ref), **who)


# --- officer alerts (shared with Zalo OA) ------------------------------------------------------------------


def alert_officers(session: Session, *, key: str, say: Say, now: datetime | None = None) -> int:
    """Queue ``say`` for every granted officer on each of their chats, once per ``key``; does not commit.

    Also writes an audit row, so the alert is on record even when no officer has a chat. Returns rows queued.
    """
    now = now or utcnow()
    officer_ids = session.exec(
        select(RoleGrant.person_id).where(RoleGrant.role == "officer", RoleGrant.status == "granted").distinct()
    ).all()
    queued = 0
    if officer_ids:
        identities = session.exec(
            select(ChatIdentity).where(col(ChatIdentity.person_id).in_(list(officer_ids)))
        ).all()
        for identity in identities:
            queued += enqueue(
                session,
                channel=identity.channel,
                chat_id=identity.chat_id,
                message=say,
                idempotency_key=f"{key}:{identity.id}",
                priority=ALERT_PRIORITY,
                person_id=identity.person_id,
            )
    seen = session.exec(select(AuditLog.id).where(AuditLog.action == "channel.alert", AuditLog.target == key)).first()
    if seen is None:
        session.add(AuditLog(at=now, actor="system", action="channel.alert", target=key,
                             detail={"officer_chats": queued}))
        log.warning("alert %s: queued for %s officer chats", key, queued)
    return queued


def alert_once(engine: Engine, key: str, say: Say) -> None:
    """alert_officers in its own transaction (from a transport)."""
    with write_lock(engine), Session(engine) as session:
        alert_officers(session, key=key, say=say)
        session.commit()


# --- monthly usage (free plan limits) ----------------------------------------------------------------------


class UsageMeter:
    """Counts the messages sent per month (in ChannelCredential ``zalo:usage``) against the plan limits."""

    def __init__(self, engine: Engine, settings: Settings, *, now: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.settings = settings
        self.now = now
        self.tz = ZoneInfo(settings.timezone)

    def month(self) -> str:
        return self.now().astimezone(self.tz).strftime("%Y-%m")

    def _row(self, session: Session) -> ChannelCredential:
        query = select(ChannelCredential).where(ChannelCredential.channel == USAGE_KEY)
        if self.engine.dialect.name == "postgresql":
            query = query.with_for_update()
        row = session.exec(query).first()
        if row is None:
            insert_ignore(session, ChannelCredential, {"channel": USAGE_KEY, "data": {}, "updated_at": utcnow()},
                          conflict=["channel"])
            row = session.exec(query).first()
        assert row is not None
        return row

    def reserve(self, count: int) -> bool:
        """Take ``count`` messages from this month's quota; False (nothing taken) when it is used up."""
        limit = self.settings.zalo_monthly_message_limit
        with write_lock(self.engine), Session(self.engine) as session:
            row = self._row(session)
            month = self.month()
            data = dict(row.data or {})
            if data.get("month") != month:
                data = {"month": month, "messages": 0, "warned": [], "users_warned": data.get("users_warned", [])}
            used = int(data.get("messages", 0))
            if limit > 0 and used + count > limit:
                self._warn(session, data, "messages", used, limit, [100])
                row.data, row.updated_at = data, utcnow()
                session.add(row)
                session.commit()
                return False
            used += count
            data["messages"] = used
            if limit > 0:
                crossed = [pct for pct in WARN_PERCENTS if used * 100 >= pct * limit]
                self._warn(session, data, "messages", used, limit, crossed)
            users = session.exec(
                select(func.count()).select_from(ChatIdentity).where(ChatIdentity.channel == CHANNEL)
            ).one()
            user_limit = self.settings.zalo_user_limit
            if user_limit > 0:
                crossed = [pct for pct in (*WARN_PERCENTS, 100) if users * 100 >= pct * user_limit]
                self._warn(session, data, "users", users, user_limit, crossed)
            row.data, row.updated_at = data, utcnow()
            session.add(row)
            session.commit()
            return True

    def release(self, count: int) -> None:
        """Give back messages reserved but not sent."""
        with write_lock(self.engine), Session(self.engine) as session:
            row = self._row(session)
            data = dict(row.data or {})
            if data.get("month") == self.month() and not data.get("exhausted"):
                data["messages"] = max(0, int(data.get("messages", 0)) - count)
                row.data = data
                session.add(row)
            session.commit()

    def exhaust(self) -> None:
        """The platform says the quota is gone (429s in a row): count the month as used up."""
        limit = self.settings.zalo_monthly_message_limit
        with write_lock(self.engine), Session(self.engine) as session:
            row = self._row(session)
            data = dict(row.data or {})
            if data.get("month") != self.month():
                data = {"month": self.month(), "warned": [], "users_warned": data.get("users_warned", [])}
            data["messages"] = max(int(data.get("messages", 0)), limit)
            data["exhausted"] = True
            self._warn(session, data, "messages", data["messages"], limit, [100])
            row.data = data
            session.add(row)
            session.commit()

    def usage(self) -> dict[str, Any]:
        with Session(self.engine) as session:
            row = session.exec(select(ChannelCredential).where(ChannelCredential.channel == USAGE_KEY)).first()
            data = dict(row.data or {}) if row is not None else {}
        if data.get("month") != self.month():
            return {"month": self.month(), "messages": 0}
        return data

    def _warn(
        self, session: Session, data: dict[str, Any], kind: str, used: int, limit: int, crossed: list[int]
    ) -> None:
        """One alert for the highest threshold crossed and not yet announced (once per month for messages)."""
        field = "warned" if kind == "messages" else "users_warned"
        done = list(data.get(field) or [])
        new = [pct for pct in crossed if pct not in done]
        if not new:
            return
        data[field] = sorted({*done, *new})
        pct = max(new)
        shown = min(100, used * 100 // max(limit, 1))
        if kind == "messages":
            key = "zalo.alert_quota_exhausted" if pct >= 100 else "zalo.alert_quota_messages"
            say = Say(t(key, used=answers.format_int(used), limit=answers.format_int(limit), pct=shown,
                        month=data.get("month", "")))
            alert_key = f"zalo:alert:messages:{data.get('month')}:{pct}"
        else:
            say = Say(t("zalo.alert_quota_users", users=used, limit=limit, pct=shown))
            alert_key = f"zalo:alert:users:{pct}"
        alert_officers(session, key=alert_key, say=say)


# --- envelopes ---------------------------------------------------------------------------------------------


def extract_events(body: Any) -> list[dict[str, Any]]:
    """Every message event in a webhook body or getUpdates answer, whatever the envelope:
    ``{ok, result: {event_name, message}}``, ``{event_name, message}``, ``{message}``, or lists of them."""
    if isinstance(body, list):
        return [event for item in body for event in extract_events(item)]
    if not isinstance(body, dict):
        return []
    if "result" in body and "message" not in body:
        return extract_events(body["result"])
    message = body.get("message")
    if not isinstance(message, dict):
        return []
    event = {"event_name": str(body.get("event_name") or _guess_event(message)), "message": message}
    return [event]


def _guess_event(message: dict[str, Any]) -> str:
    if message.get("photo") or message.get("photo_url"):
        return "message.image.received"
    if message.get("sticker"):
        return "message.sticker.received"
    if isinstance(message.get("text"), str):
        return "message.text.received"
    return "message.unsupported.received"


def update_id(event: dict[str, Any]) -> str:
    """The inbox key of one event: Zalo's message_id, or a hash of the event when it has none."""
    message = event.get("message") or {}
    mid = message.get("message_id")
    if isinstance(mid, str | int) and str(mid):
        return str(mid)
    digest = hashlib.sha256(json.dumps(event, sort_keys=True).encode()).hexdigest()
    return f"h:{digest[:40]}"


def chat_key(event: dict[str, Any]) -> str:
    message = event.get("message") or {}
    chat = message.get("chat") if isinstance(message.get("chat"), dict) else {}
    sender = message.get("from") if isinstance(message.get("from"), dict) else {}
    return str(chat.get("id") or sender.get("id") or "")


def storable(event: dict[str, Any]) -> bool:
    """Plain JSON that UTF-8 text and a JSON column can hold (no NaN, no lone surrogates)."""
    try:
        json.dumps(event, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):
        return False
    return True


def store_events(engine: Engine, events: list[dict[str, Any]]) -> int:
    """Store events in the inbox (duplicates and unstorable ones skipped) in one commit; returns how many
    were new."""
    new = 0
    with Session(engine) as session:
        for event in events:
            if not storable(event):
                log.warning("zalo: an event that cannot be stored was skipped")
                continue
            new += store_update(session, CHANNEL, update_id(event), chat_key(event), event)
        session.commit()
    return new


def webhook_secret(settings: Settings) -> str:
    """ZALO_WEBHOOK_SECRET, or one derived from the token when unset (8–256 characters)."""
    configured = settings.zalo_webhook_secret.get_secret_value()
    if configured:
        return configured
    token = settings.zalo_bot_token.get_secret_value()
    if not token:
        return ""
    return hmac.new(token.encode(), b"hoctap-zalo-webhook", hashlib.sha256).hexdigest()


# --- the client --------------------------------------------------------------------------------------------


class ZaloApiError(Exception):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(f"zalo error {code}: {description[:200]}")
        self.code = code
        self.description = description


class ZaloBotClient:
    """``{base}/bot{token}/{method}`` over httpx; the token never reaches a log line."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self.base = settings.zalo_api_base_url.rstrip("/")
        self._token = settings.zalo_bot_token.get_secret_value()
        self.http = client or httpx.AsyncClient(timeout=httpx.Timeout(15.0, read=45.0))

    async def call(self, method: str, params: dict[str, Any] | None = None, *, read_timeout: float | None = None) -> Any:
        """The ``result`` of a method; ZaloApiError for {ok: false} or a non-2xx answer; httpx errors as is."""
        url = f"{self.base}/bot{self._token}/{method}"
        try:
            response = await self.http.post(url, json=params or {}, timeout=read_timeout or httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as exc:
            # httpx messages can contain the URL, hence the token: re-raise without it
            raise TransientError(f"{method}: {type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code >= 300 or body.get("ok") is False or "ok" not in body:
            code = int(body.get("error_code") or response.status_code)
            if code == 200:
                code = 500  # 200 without ok: not the answer we know
            raise ZaloApiError(code, str(body.get("description") or response.reason_phrase))
        return body.get("result")

    async def aclose(self) -> None:
        await self.http.aclose()


class ZaloTransport:
    """The outbox transport: sendMessage (numbered choices, ≤ 2000 characters a part), quota, errors."""

    def __init__(self, channel: ZaloChannel) -> None:
        self.channel = channel
        self._streak_429 = 0

    async def send(self, chat_id: str, payload: dict[str, Any]) -> str | None:
        parts = split_text(render_text(Say.from_json(payload)))
        meter = self.channel.meter
        if not await asyncio.to_thread(meter.reserve, len(parts)):
            raise UnreachableError(t("zalo.reason_quota"))
        last: str | None = None
        sent = 0
        try:
            for part in parts:
                result = await self._send_one(chat_id, part)
                sent += 1
                if isinstance(result, dict) and result.get("message_id"):
                    last = str(result["message_id"])
        finally:
            if sent < len(parts):
                await asyncio.to_thread(meter.release, len(parts) - sent)
        return last

    async def _send_one(self, chat_id: str, text: str) -> Any:
        try:
            result = await self.channel.client.call("sendMessage", {"chat_id": chat_id, "text": text})
        except ZaloApiError as exc:
            await self._raise_for(exc)
            raise  # pragma: no cover - _raise_for always raises
        self._streak_429 = 0
        return result

    async def _raise_for(self, exc: ZaloApiError) -> None:
        code = exc.code
        if code == 429:
            self._streak_429 += 1
            if self._streak_429 >= QUOTA_429_STREAK:
                await asyncio.to_thread(self.channel.meter.exhaust)
                raise UnreachableError(t("zalo.reason_quota")) from None
            raise RetryAfterError(RETRY_AFTER_429, "zalo 429 quota exceeded") from None
        self._streak_429 = 0
        if code == 401:
            day = utcnow().strftime("%Y-%m-%d")
            await asyncio.to_thread(alert_once, self.channel.engine, f"zalo:alert:token:{day}",
                                    Say(t("zalo.alert_config")))
            raise RetryAfterError(CONFIG_PAUSE, "zalo 401: the bot token was rejected") from None
        if code == 403:
            raise UnreachableError(t("zalo.reason_blocked")) from None
        if code == 408 or code >= 500:
            raise TransientError(f"zalo {code}") from None
        raise PermanentError(f"zalo {code}") from None


# --- the channel -------------------------------------------------------------------------------------------


class ZaloChannel:
    """Everything the runtime needs for the Zalo Bot Platform: normaliser, transport, webhook or polling."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        client: ZaloBotClient | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.client = client or ZaloBotClient(settings)
        self.http = http or httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT)  # photo downloads
        self.meter = UsageMeter(engine, settings)
        self.transport = ZaloTransport(self)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()
        with contextlib.suppress(Exception):
            await self.http.aclose()

    # -- setup

    async def setup_webhook(self) -> None:
        await self.client.call("getMe")
        await self.client.call(
            "setWebhook",
            {"url": f"{self.settings.public_base_url}/webhooks/zalo", "secret_token": webhook_secret(self.settings)},
        )
        log.info("zalo: webhook set")

    async def run(self, *, on_stored: Callable[[], None]) -> None:
        """Webhook setup when PUBLIC_BASE_URL is set, otherwise polling; retried while Zalo is unreachable."""
        delay = 1.0
        while True:
            try:
                if self.settings.public_base_url:
                    await self.setup_webhook()
                    return
                await self.poll(on_stored=on_stored)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying; never log the token
                log.warning("zalo: setup failed (%s); retrying in %.0fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 300.0)

    async def poll(self, *, on_stored: Callable[[], None], long_poll_seconds: int = 30,
                   max_rounds: int | None = None) -> None:
        """getUpdates into the inbox. No offset exists: known updates come back and are skipped by the inbox."""
        with contextlib.suppress(ZaloApiError):
            await self.client.call("deleteWebhook")
        log.info("zalo: polling")
        failures = 0
        rounds = 0
        while max_rounds is None or rounds < max_rounds:
            rounds += 1
            try:
                result = await self.client.call(
                    "getUpdates", {"timeout": str(long_poll_seconds)}, read_timeout=long_poll_seconds + 15.0
                )
            except ZaloApiError as exc:
                if exc.code == 408:  # an empty long poll
                    continue
                if exc.code == 401:
                    log.error("zalo: the bot token was rejected; polling stops")
                    return
                failures += 1
                await asyncio.sleep(min(2.0**failures, 60.0))
                continue
            except TransientError:
                failures += 1
                await asyncio.sleep(min(2.0**failures, 60.0))
                continue
            failures = 0
            events = extract_events(result)
            new = await asyncio.to_thread(store_events, self.engine, events) if events else 0
            if new:
                on_stored()
            else:
                await asyncio.sleep(POLL_IDLE)

    # -- normalising

    async def normalise(self, payload: dict[str, Any]) -> Inbound:
        """A stored event → Inbound: text (numbered choices mapped back), photo, or unsupported."""
        event_name = str(payload.get("event_name") or "")
        message = payload.get("message") if isinstance(payload.get("message"), dict) else {}
        chat = message.get("chat") if isinstance(message.get("chat"), dict) else {}
        sender = message.get("from") if isinstance(message.get("from"), dict) else {}
        chat_id = str(chat.get("id") or sender.get("id") or "")
        if not chat_id or sender.get("is_bot"):
            return Inbound()
        user_id = str(sender.get("id") or chat_id)
        who = {"user_id": user_id, "display_name": str(sender.get("display_name") or "")[:100]}
        text = message.get("text")
        if str(chat.get("chat_type") or "PRIVATE").upper() != "PRIVATE":
            if isinstance(text, str) and text.strip().startswith("/"):
                return Inbound(chat_id=chat_id, replies=(Say(t("channel.group_not_supported")),))
            return Inbound()
        photo = message.get("photo") or message.get("photo_url")
        if event_name == "message.image.received" or (photo and event_name != "message.text.received"):
            if not isinstance(photo, str) or not photo:
                return Inbound(chat_id=chat_id, replies=(Say(t("channel.photo_download_failed")),))
            return await photo_inbound(self.http, self.settings, photo, chat_id, who)
        if event_name in UNSUPPORTED_EVENTS or not isinstance(text, str):
            kind = UNSUPPORTED_EVENTS.get(event_name, "other")
            return Inbound(chat_id=chat_id, event=Event(kind="unsupported", value=kind), **who)
        offered, prompt = await asyncio.to_thread(load_choice_context, self.engine, CHANNEL, chat_id, user_id)
        return Inbound(chat_id=chat_id, event=text_event(text, offered, prompt), **who)


def register(runtime: Any) -> ZaloChannel | None:
    """Add the Zalo Bot channel to a bot.runtime.Runtime (before start); None when ZALO_BOT_TOKEN is unset.

    Registers the normaliser and transport, and ``channel.run`` (webhook setup or polling) as background work.
    """
    settings = runtime.settings
    if not settings.zalo_enabled:
        return None
    channel = ZaloChannel(settings=settings, engine=runtime.engine)
    runtime.add_channel(CHANNEL, normalise=channel.normalise, transport=channel.transport,
                        rate_per_second=RATE_PER_SECOND, close=channel.aclose)
    runtime.add_background(CHANNEL, background(lambda: channel.run(on_stored=runtime.wake_inbox)))
    return channel


def background(run: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A background coroutine for Runtime.add_background: ``run()`` (webhook setup, or polling until the
    runtime stops), then stay until the runtime stops. The runtime closes the channel at the end of its
    stop(), after the sender and the inbox worker finished what was in flight (``add_channel(close=…)``)."""

    async def task() -> None:
        await run()
        await asyncio.Event().wait()

    return task
