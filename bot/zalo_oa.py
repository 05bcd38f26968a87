"""Zalo Official Account adapter (API v3): the commune's own verified OA, for production.

- Webhook ``POST /webhooks/zalo-oa`` (webhook/zalo_routes.py) is signed: ``X-ZEvent-Signature`` =
  ``mac=`` + sha256_hex(app_id + raw body + timestamp + OA secret key), ``timestamp`` taken from the JSON
  body (``signature`` below; the formula researched in shared/research/platforms.md A2).
- Events: ``user_send_text`` (typed text, or the payload of one of our ``oa.query.hide`` buttons, which
  Zalo sends back as a text from the user), ``user_send_image`` (downloaded at once), ``follow`` (treated
  as /start), ``unfollow`` (ignored), ``user_submit_info`` (a shared phone number), stickers, audio, video,
  files (unsupported). Updates are keyed by ``message.msg_id``: a redelivery is processed once.
- Sending: consultation messages ``POST {ZALO_OA_API_BASE_URL}/v3.0/oa/message/cs`` with header
  ``access_token``. Up to 5 buttons go out as ``oa.query.hide`` buttons; more become a numbered list
  (bot/zalo.py). Success only when ``error == 0`` (Zalo answers HTTP 200 on failure too).
- Tokens: the access token lives about 25 h; each refresh token works once. Both live in
  ChannelCredential("zalo_oa"). ``OATokens`` refreshes under a lock (a row lock on PostgreSQL) before
  expiry and stores the new pair in the same transaction; ZALO_OA_REFRESH_TOKEN only seeds the first
  refresh (its hash is kept, so it is never used twice; a new value in the environment is adopted).
  A failed refresh keeps the messages queued (the channel pauses) and alerts the officers.
- Error -230 (no interaction in the last 7 days): the row is marked ``unreachable`` with a reason, which
  the village leader's list and the officer digest count ("remind in person"). Other codes map to retry,
  unreachable or a configuration error (channel paused, officers alerted, messages kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.inbox import Inbound, store_update
from bot.outbox import (
    PermanentError,
    RetryAfterError,
    TransientError,
    UnreachableError,
    insert_ignore,
    utcnow,
    write_lock,
)
from bot.zalo import (
    DOWNLOAD_TIMEOUT,
    alert_once,
    background,
    load_choice_context,
    photo_inbound,
    render_text,
    split_text,
    text_event,
)
from flows.i18n import t
from flows.types import Event, Say
from models.settings import Settings
from models.tables import ChannelCredential

log = logging.getLogger("hoctap.zalo_oa")

CHANNEL = "zalo_oa"
CREDENTIAL = "zalo_oa"  # ChannelCredential.channel of the token pair
SIGNATURE_HEADER = "X-ZEvent-Signature"
PAYLOAD_PREFIX = "#hoctap:"  # our button payloads, sent back by Zalo as the user's text
MAX_BUTTONS = 5
MAX_TEXT = 2000
RATE_PER_SECOND = 1.5  # the Growth package allows 100 API requests a minute
REFRESH_MARGIN = timedelta(hours=1)  # refresh this long before the access token expires
DEFAULT_EXPIRES = 90_000  # seconds (about 25 h) when the answer does not say
REFRESH_RETRY = 300.0  # a failed refresh: messages wait, the channel tries again in 5 minutes
CONFIG_PAUSE = 1800.0
RATE_PAUSE = 60.0
KEEPALIVE_SECONDS = 1800.0

TOKEN_ERRORS = {-216, -124}  # access token invalid or expired: refresh once and retry
WINDOW_CLOSED = -230  # the person has not interacted with the OA in the last 7 days
NOT_FOLLOWER = -213
CONFIG_ERRORS = {-224}  # the OA package does not include this feature
RATE_ERRORS = {-32}
BAD_REQUEST = {-201}

USER_EVENTS = {
    "user_send_text",
    "user_send_image",
    "user_send_sticker",
    "user_send_gif",
    "user_send_audio",
    "user_send_video",
    "user_send_file",
    "user_send_location",
    "user_send_link",
    "user_send_business_card",
    "user_submit_info",
    "follow",
    "unfollow",
}
UNSUPPORTED = {
    "user_send_sticker": "sticker",
    "user_send_gif": "sticker",
    "user_send_audio": "voice",
    "user_send_video": "video",
    "user_send_file": "document",
}


# --- webhook signature and envelope ------------------------------------------------------------------------


def signature(app_id: str, body: bytes, timestamp: str, oa_secret_key: str) -> str:
    """sha256_hex(app_id + raw body + timestamp + OA secret key): what Zalo puts after ``mac=``."""
    return hashlib.sha256(app_id.encode() + body + timestamp.encode() + oa_secret_key.encode()).hexdigest()


def verify(settings: Settings, body: bytes, payload: dict[str, Any], header: str) -> bool:
    """Constant-time check of X-ZEvent-Signature (with or without the ``mac=`` prefix)."""
    secret = settings.zalo_oa_secret_key.get_secret_value()
    app_id = settings.zalo_oa_app_id
    given = header.strip()
    if given.lower().startswith("mac="):
        given = given[4:].strip()
    if not secret or not app_id or not given:
        return False
    expected = signature(app_id, body, str(payload.get("timestamp", "")), secret)
    return hmac.compare_digest(given.lower().encode(), expected.encode())


def user_of(payload: dict[str, Any]) -> str:
    """The person's id (scoped to our OA) of a user event."""
    for field in ("follower", "sender", "user"):
        value = payload.get(field)
        if isinstance(value, dict) and value.get("id"):
            return str(value["id"])
    return str(payload.get("user_id_by_app") or "")


def update_id(payload: dict[str, Any]) -> str:
    """msg_id when the event is a message; otherwise event, user and timestamp (follow, unfollow...)."""
    message = payload.get("message") if isinstance(payload.get("message"), dict) else {}
    msg_id = message.get("msg_id") or message.get("message_id")
    if msg_id:
        return str(msg_id)
    return f"{payload.get('event_name')}:{user_of(payload)}:{payload.get('timestamp', '')}"


def store_event(engine: Engine, payload: dict[str, Any]) -> bool:
    with Session(engine) as session:
        new = store_update(session, CHANNEL, update_id(payload), user_of(payload), payload)
        session.commit()
    return new


# --- rendering ---------------------------------------------------------------------------------------------


def render(say: Say) -> list[dict[str, Any]]:
    """Message bodies for /message/cs: text parts; buttons (≤ 5) as oa.query.hide on the last part."""
    if len(say.buttons) > MAX_BUTTONS:
        return [{"text": part} for part in split_text(render_text(say), MAX_TEXT)]
    text = say.text if say.text.strip() else "…"
    if say.request_contact:
        text = f"{text}\n\n{t('zalo.type_phone')}"
    messages: list[dict[str, Any]] = [{"text": part} for part in split_text(text, MAX_TEXT)]
    if say.buttons:
        messages[-1]["attachment"] = {
            "type": "template",
            "payload": {
                "buttons": [
                    {"title": b.label[:100], "type": "oa.query.hide", "payload": f"{PAYLOAD_PREFIX}{b.value}"[:1000]}
                    for b in say.buttons
                ]
            },
        }
    return messages


# --- tokens ------------------------------------------------------------------------------------------------


class RefreshFailed(Exception):
    """The OAuth server refused the refresh (or could not be reached); messages wait."""


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


class OATokens:
    """Access and refresh tokens in ChannelCredential("zalo_oa"), refreshed once at a time.

    In one process an asyncio lock serialises refreshes; across processes, the row lock (PostgreSQL) held
    during the refresh call makes the second process wait and then find the new token.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        http: httpx.Client | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.http = http or httpx.Client(timeout=20.0)
        self.now = now
        self._lock = asyncio.Lock()

    async def get(self, *, stale: str | None = None) -> str:
        """A valid access token; with ``stale`` (a token Zalo refused) a newer one is fetched."""
        async with self._lock:
            return await asyncio.to_thread(self._get, stale)

    def data(self) -> dict[str, Any]:
        with Session(self.engine) as session:
            row = session.exec(select(ChannelCredential).where(ChannelCredential.channel == CREDENTIAL)).first()
            return dict(row.data or {}) if row is not None else {}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.http.close()

    def _get(self, stale: str | None) -> str:
        with write_lock(self.engine), Session(self.engine) as session:
            query = select(ChannelCredential).where(ChannelCredential.channel == CREDENTIAL)
            if self.engine.dialect.name == "postgresql":
                query = query.with_for_update()
            row = session.exec(query).first()
            if row is None:
                insert_ignore(session, ChannelCredential, {"channel": CREDENTIAL, "data": {}, "updated_at": utcnow()},
                              conflict=["channel"])
                row = session.exec(query).first()
            assert row is not None
            data = dict(row.data or {})
            seed = self.settings.zalo_oa_refresh_token.get_secret_value()
            if seed and _sha(seed) != data.get("seed_sha"):
                # a refresh token not seen before in the environment (first start, or re-authorised)
                data = {"refresh_token": seed, "seed_sha": _sha(seed)}
            access = str(data.get("access_token") or "")
            expires = _parse_time(data.get("expires_at"))
            fresh = bool(access) and expires is not None and expires - REFRESH_MARGIN > self.now()
            if fresh and stale != access:
                session.rollback()
                return access
            refresh_token = str(data.get("refresh_token") or "")
            if not refresh_token:
                raise RefreshFailed("no refresh token: set ZALO_OA_REFRESH_TOKEN")
            try:
                answer = self._refresh(refresh_token)
            except RefreshFailed as exc:
                data["refresh_failed_at"] = self.now().isoformat()
                data["refresh_error"] = str(exc)[:200]
                row.data, row.updated_at = data, utcnow()
                session.add(row)
                session.commit()
                raise
            data.update(
                access_token=answer["access_token"],
                refresh_token=answer["refresh_token"],
                expires_at=(self.now() + timedelta(seconds=answer["expires_in"])).isoformat(),
                refreshed_at=self.now().isoformat(),
            )
            data.pop("refresh_failed_at", None)
            data.pop("refresh_error", None)
            # the new pair in the same transaction that held the lock: the old refresh token is gone
            row.data, row.updated_at = data, utcnow()
            session.add(row)
            session.commit()
            log.info("zalo_oa: access token refreshed")
            return str(answer["access_token"])

    def _refresh(self, refresh_token: str) -> dict[str, Any]:
        secret = (self.settings.zalo_oa_app_secret.get_secret_value()
                  or self.settings.zalo_oa_secret_key.get_secret_value())
        url = f"{self.settings.zalo_oa_oauth_base_url.rstrip('/')}/v4/oa/access_token"
        try:
            response = self.http.post(
                url,
                headers={"secret_key": secret},
                data={"refresh_token": refresh_token, "app_id": self.settings.zalo_oa_app_id,
                      "grant_type": "refresh_token"},
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise RefreshFailed(type(exc).__name__) from None
        if not isinstance(body, dict) or not body.get("access_token") or not body.get("refresh_token"):
            code = body.get("error") if isinstance(body, dict) else None
            raise RefreshFailed(f"refresh refused (error {code}, HTTP {response.status_code})")
        try:
            expires_in = int(body.get("expires_in") or DEFAULT_EXPIRES)
        except (TypeError, ValueError):
            expires_in = DEFAULT_EXPIRES
        return {"access_token": str(body["access_token"]), "refresh_token": str(body["refresh_token"]),
                "expires_in": expires_in}


# --- the transport -----------------------------------------------------------------------------------------


class ZaloOATransport:
    def __init__(self, channel: ZaloOAChannel) -> None:
        self.channel = channel

    async def send(self, chat_id: str, payload: dict[str, Any]) -> str | None:
        last: str | None = None
        for message in render(Say.from_json(payload)):
            data = await self._post(chat_id, message)
            if isinstance(data, dict) and data.get("message_id"):
                last = str(data["message_id"])
        return last

    async def _token(self, stale: str | None = None) -> str:
        try:
            return await self.channel.tokens.get(stale=stale)
        except RefreshFailed:
            day = utcnow().strftime("%Y-%m-%d")
            await asyncio.to_thread(alert_once, self.channel.engine, f"zalo_oa:alert:refresh:{day}",
                                    Say(t("zalo.oa_alert_refresh")))
            raise RetryAfterError(REFRESH_RETRY, "zalo_oa: token refresh failed; messages wait") from None

    async def _post(self, user_id: str, message: dict[str, Any]) -> Any:
        url = f"{self.channel.settings.zalo_oa_api_base_url.rstrip('/')}/v3.0/oa/message/cs"
        body = {"recipient": {"user_id": user_id}, "message": message}
        token = await self._token()
        for attempt in (1, 2):
            try:
                response = await self.channel.http.post(url, headers={"access_token": token}, json=body)
            except httpx.HTTPError as exc:
                raise TransientError(f"zalo_oa: {type(exc).__name__}") from None
            try:
                answer = response.json()
            except ValueError:
                answer = {}
            answer = answer if isinstance(answer, dict) else {}
            code = answer.get("error")
            code = int(code) if isinstance(code, int | str) and str(code).lstrip("-").isdigit() else None
            if response.status_code == 401 or code in TOKEN_ERRORS:
                if attempt == 1:
                    token = await self._token(stale=token)
                    continue
                raise TransientError("zalo_oa: access token refused after a refresh")
            if response.status_code == 429:
                raise RetryAfterError(RATE_PAUSE, "zalo_oa: HTTP 429")
            if response.status_code >= 500:
                raise TransientError(f"zalo_oa: HTTP {response.status_code}")
            if code == 0:
                return answer.get("data")
            await self._raise_for(code, response.status_code)
        raise TransientError("zalo_oa: unreachable")  # pragma: no cover

    async def _raise_for(self, code: int | None, status: int) -> None:
        if code == WINDOW_CLOSED:
            raise UnreachableError(f"{t('zalo.reason_window')} ({WINDOW_CLOSED})")
        if code == NOT_FOLLOWER:
            raise UnreachableError(f"{t('zalo.reason_not_follower')} ({NOT_FOLLOWER})")
        if code in RATE_ERRORS:
            raise RetryAfterError(RATE_PAUSE, f"zalo_oa: error {code}")
        if code in CONFIG_ERRORS or status == 403:
            day = utcnow().strftime("%Y-%m-%d")
            await asyncio.to_thread(alert_once, self.channel.engine, f"zalo_oa:alert:config:{code}:{day}",
                                    Say(t("zalo.oa_alert_config", code=code if code is not None else status)))
            raise RetryAfterError(CONFIG_PAUSE, f"zalo_oa: configuration error {code}")
        if code in BAD_REQUEST or 400 <= status < 500:
            raise PermanentError(f"zalo_oa: error {code} (HTTP {status})")
        raise TransientError(f"zalo_oa: error {code} (HTTP {status})")


# --- the channel -------------------------------------------------------------------------------------------


class ZaloOAChannel:
    """Normaliser, transport and token keeper of the Zalo OA channel."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        http: httpx.AsyncClient | None = None,
        tokens: OATokens | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.http = http or httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT)
        self.tokens = tokens or OATokens(settings, engine)
        self.transport = ZaloOATransport(self)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.http.aclose()
        self.tokens.close()

    async def run(self, *, on_stored: Callable[[], None] | None = None) -> None:
        """Keep the token pair alive (webhook-only channel: nothing to poll); alerts on a failed refresh."""
        while True:
            with contextlib.suppress(RetryAfterError):
                await self.transport._token()
            await asyncio.sleep(KEEPALIVE_SECONDS)

    async def normalise(self, payload: dict[str, Any]) -> Inbound:
        event_name = str(payload.get("event_name") or "")
        user_id = user_of(payload)
        if not user_id or event_name not in USER_EVENTS:
            return Inbound()
        who = {"user_id": user_id}
        message = payload.get("message") if isinstance(payload.get("message"), dict) else {}
        if event_name == "follow":
            return Inbound(chat_id=user_id, event=Event(kind="command", text="start"), **who)
        if event_name == "unfollow":
            return Inbound()
        if event_name == "user_submit_info":
            info = payload.get("info") if isinstance(payload.get("info"), dict) else {}
            phone = str(info.get("phone") or "")
            if not phone:
                return Inbound()
            return Inbound(chat_id=user_id, event=Event(kind="contact", text=phone), **who)
        if event_name == "user_send_image":
            url = ""
            for attachment in message.get("attachments") or []:
                if isinstance(attachment, dict) and isinstance(attachment.get("payload"), dict):
                    url = str(attachment["payload"].get("url") or "")
                    if url:
                        break
            if not url:
                return Inbound(chat_id=user_id, replies=(Say(t("channel.photo_download_failed")),))
            return await photo_inbound(self.http, self.settings, url, user_id, who)
        if event_name != "user_send_text":
            kind = UNSUPPORTED.get(event_name, "other")
            return Inbound(chat_id=user_id, event=Event(kind="unsupported", value=kind), **who)
        text = str(message.get("text") or "")
        offered, prompt = await asyncio.to_thread(load_choice_context, self.engine, CHANNEL, user_id, user_id)
        if text.startswith(PAYLOAD_PREFIX):
            value = text[len(PAYLOAD_PREFIX):]
            label = next((b.label for b in (offered.buttons if offered else ()) if b.value == value), "")
            return Inbound(chat_id=user_id, event=Event(kind="button", value=value, text=label), **who)
        return Inbound(chat_id=user_id, event=text_event(text, offered, prompt), **who)


def register(runtime: Any) -> ZaloOAChannel | None:
    """Add the Zalo OA channel to a bot.runtime.Runtime (before start); None when the OA is not configured.

    Registers the normaliser and transport, and ``channel.run`` (token keep-alive) as background work.
    """
    settings = runtime.settings
    if not settings.zalo_oa_enabled:
        return None
    channel = ZaloOAChannel(settings=settings, engine=runtime.engine)
    runtime.add_channel(CHANNEL, normalise=channel.normalise, transport=channel.transport,
                        rate_per_second=RATE_PER_SECOND, close=channel.aclose)
    runtime.add_background(CHANNEL, background(channel.run))
    return channel
