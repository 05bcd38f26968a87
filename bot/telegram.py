"""Telegram adapter: python-telegram-bot's ``Bot`` as a plain client, with our own routing.

We do not use PTB's ``Application``: conversation state lives in our database (shared with Zalo and the
simulator, safe across restarts and processes), updates go through our inbox, and replies through our
outbox, so PTB's dispatcher, persistence and ConversationHandler would only duplicate that. PTB gives us
the types (``Update.de_json``), the HTTP client and the error classes for everything but sendMessage, which
the outbox sends at up to ~1,000 calls/s on a lean path of its own (``TelegramTransport``, aiohttp).

- ``normalise``: raw update → ``Inbound`` (an Event for the flows, or the channel's own polite answer)
- ``render``: Say → sendMessage keyword arguments
- ``TelegramTransport``: the outbox transport (sendMessage as JSON on aiohttp; answers → outbox errors)
- ``setup_webhook`` / ``poll``: webhook when PUBLIC_BASE_URL is set, otherwise long polling

Outcomes that never reach the flows:
- edited messages, channel posts, service messages (joins, pins...): ignored (status "ignored");
- group chats: a command gets one polite "talk to me in private" answer, anything else is ignored;
- a contact card of someone else: a polite answer asking for one's own number;
- a photo (or an image sent as a file) that fails validation: the refusal message from bot/media.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from telegram import (
    Bot,
    BotCommand,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    Message,
    ReplyKeyboardMarkup,
    TelegramObject,
    Update,
)
from telegram.error import (
    BadRequest,
    Conflict,
    InvalidToken,
    NetworkError,
    TelegramError,
    TimedOut,
)
from telegram.request import HTTPXRequest
from yarl import URL

from bot.inbox import Inbound, store_update
from bot.media import TOO_BIG, store_photo
from bot.outbox import MAX_IN_FLIGHT, PermanentError, RetryAfterError, TransientError, UnreachableError
from flows.i18n import t
from flows.types import Button, Event, Say
from models import jsonio
from models.settings import Settings
from models.tables import ChannelCredential, OutboxMessage

log = logging.getLogger("hoctap.telegram")

CHANNEL = "telegram"
ALLOWED_UPDATES = ["message", "callback_query"]
COMMANDS = ("batdau", "trangthai", "trogiup", "huy", "thongke")
MAX_TEXT = 4096  # UTF-16 code units, as Telegram counts them
MAX_CALLBACK_BYTES = 64
HASH_PREFIX = "#"
DOWNLOAD_LIMIT = 20_000_000  # the Bot API serves files up to 20 MB
UNSUPPORTED_KINDS = (
    "sticker",
    "voice",
    "video_note",
    "video",
    "audio",
    "animation",
    "document",
    "location",
    "venue",
    "poll",
    "dice",
    "game",
    "story",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


# --- configuration --------------------------------------------------------------------------------------


def quiet_ptb_logs() -> None:
    """Keep python-telegram-bot's DEBUG records out of every log, whatever the root level.

    At DEBUG, PTB logs the Bot API URL (it holds the token), every call's parameters (message texts,
    names, the webhook secret) and every answer (the updates people sent). Nghị định 13/2023: none of that
    may reach a log file, even when an operator turns on DEBUG to chase something else.
    """
    for name in ("telegram", "telegram.Bot", "telegram.request", "telegram.ext"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO or logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


class _BotRequest(HTTPXRequest):
    """PTB's httpx request object for the Bot's calls, which also closes what was tied to the Bot.

    Bot.shutdown() shuts its request objects down; the TelegramTransport of a Bot made here registers its
    aiohttp session's close, so whoever shuts the Bot down (TelegramChannel.shutdown, a test, a script)
    closes the transport's connections too.
    """

    __slots__ = ("on_shutdown",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []

    async def shutdown(self) -> None:
        for close in self.on_shutdown:
            with contextlib.suppress(Exception):
                await close()
        await super().shutdown()


def make_bot(settings: Settings, *, poll_timeout: int = 25) -> Bot:
    """A Bot against settings.telegram_api_base_url (the public API, a local Bot API server or a fake)."""
    quiet_ptb_logs()
    # PTB 22 warns (PTBDeprecationWarning) whenever a duration such as RetryAfter.retry_after is read as
    # an int; opting into its timedelta mode silences that and is what PTB 23 will do anyway.
    os.environ.setdefault("PTB_TIMEDELTA", "true")
    base = settings.telegram_api_base_url
    return Bot(
        settings.telegram_bot_token.get_secret_value(),
        base_url=f"{base}/bot",
        base_file_url=f"{base}/file/bot",
        request=_BotRequest(connection_pool_size=64, read_timeout=10.0, media_write_timeout=30.0),
        get_updates_request=HTTPXRequest(connection_pool_size=2, read_timeout=poll_timeout + 10.0),
    )


def webhook_secret(settings: Settings) -> str:
    """TELEGRAM_WEBHOOK_SECRET, or one derived from the token when unset (only A-Z a-z 0-9 _ - allowed)."""
    configured = settings.telegram_webhook_secret.get_secret_value()
    if configured:
        return configured
    token = settings.telegram_bot_token.get_secret_value()
    if not token:
        return ""
    return hmac.new(token.encode(), b"hoctap-telegram-webhook", hashlib.sha256).hexdigest()


def chat_key(payload: dict[str, Any]) -> str:
    """The per-chat ordering key of a raw update, without parsing it fully ("" when there is none)."""
    for field in ("message", "edited_message", "channel_post", "edited_channel_post"):
        chat = (payload.get(field) or {}).get("chat") if isinstance(payload.get(field), dict) else None
        if isinstance(chat, dict) and "id" in chat:
            return str(chat["id"])
    query = payload.get("callback_query")
    if isinstance(query, dict):
        chat = (query.get("message") or {}).get("chat") if isinstance(query.get("message"), dict) else None
        if isinstance(chat, dict) and "id" in chat:
            return str(chat["id"])
        sender = query.get("from")
        if isinstance(sender, dict) and "id" in sender:
            return str(sender["id"])
    return ""


# --- rendering ------------------------------------------------------------------------------------------


def callback_data(value: str) -> str:
    """A button value as callback_data (≤ 64 bytes): short values as they are, long ones as a hash."""
    if len(value.encode()) <= MAX_CALLBACK_BYTES and not value.startswith(HASH_PREFIX):
        return value
    return HASH_PREFIX + hashlib.sha256(value.encode()).hexdigest()[:32]


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Split at paragraph, line, then word boundaries so that each part fits Telegram's limit."""
    text = text if text.strip() else "…"
    parts: list[str] = []
    rest = text
    while _utf16_len(rest) > limit:
        # the longest prefix that fits (binary search: emoji count twice in UTF-16)
        low, high = 1, len(rest)
        while low < high:
            mid = (low + high + 1) // 2
            if _utf16_len(rest[:mid]) <= limit:
                low = mid
            else:
                high = mid - 1
        cut = low
        window = rest[:cut]
        for sep in ("\n\n", "\n", " "):
            at = window.rfind(sep)
            if at > cut // 2:
                cut = at + len(sep)
                break
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n")
    parts.append(rest)
    return [p for p in parts if p] or ["…"]


def _layout(buttons: list[InlineKeyboardButton]) -> list[list[InlineKeyboardButton]]:
    """Short answers ("Có", "Không") side by side, three at most; longer labels one per row."""
    if buttons and all(len(b.text) <= 10 for b in buttons) and len(buttons) <= 3:
        return [buttons]
    return [[b] for b in buttons]


def render(say: Say) -> list[dict[str, Any]]:
    """sendMessage keyword arguments (without chat_id) for one Say; buttons go with the last part."""
    chunks = split_text(say.text)
    markup = _markup(say.buttons, say.request_contact)
    messages: list[dict[str, Any]] = [{"text": chunk} for chunk in chunks]
    if markup is not None:
        messages[-1]["reply_markup"] = markup
    return messages


@functools.lru_cache(maxsize=1024)
def _markup(
    buttons: tuple[Button, ...], request_contact: bool
) -> InlineKeyboardMarkup | ReplyKeyboardMarkup | None:
    """The keyboard of a Say; memoised: PTB objects are immutable, and the flows use a few keyboards over and
    over (building one costs ~0.1 ms, a tenth of a message's budget at 1,000 messages/s)."""
    if request_contact:
        rows = [[KeyboardButton(t("channel.share_phone"), request_contact=True)]]
        rows += [[KeyboardButton(b.label)] for b in buttons]  # pressing one sends its label as text
        return ReplyKeyboardMarkup(rows, one_time_keyboard=True, resize_keyboard=True)
    if buttons:
        return InlineKeyboardMarkup(
            _layout([InlineKeyboardButton(b.label, callback_data=callback_data(b.value)) for b in buttons])
        )
    return None


# --- the transport --------------------------------------------------------------------------------------

SEND_CONNECTIONS = MAX_IN_FLIGHT  # the sender's calls in flight at most (8 at platform rates: see OutboxSender)
SEND_CONNECT_TIMEOUT = 5.0  # seconds: TCP (and TLS) connect, and the wait for a free pooled connection
SEND_READ_TIMEOUT = 10.0  # seconds between bytes of the answer, as make_bot's read_timeout
UNREACHABLE_400 = ("chat not found", "user is deactivated")


_WIRE: dict[int, tuple[TelegramObject, dict[str, Any]]] = {}  # id → (the object, kept alive; its to_dict())


def _wire_value(value: Any) -> Any:
    """A sendMessage argument as PTB puts it on the wire: Telegram objects as their to_dict().

    Markups come from _markup's cache, so the same few objects serve every message: their dicts are kept
    (by identity, the object held so that its id is not reused; PTB's equality ignores some fields) and
    only ever read (encoded as JSON).
    """
    if not isinstance(value, TelegramObject):
        return value
    cached = _WIRE.get(id(value))
    if cached is not None and cached[0] is value:
        return cached[1]
    if len(_WIRE) >= 2048:
        _WIRE.clear()
    wire = value.to_dict()
    _WIRE[id(value)] = (value, wire)
    return wire


def send_message_body(chat_id: str | int, kwargs: dict[str, Any]) -> bytes:
    """The JSON body of one sendMessage call, from render()'s keyword arguments.

    The same parameters as ``Bot.send_message(chat_id=int(chat_id), **kwargs)`` sends (PTB posts them as a
    form with nested objects JSON-encoded; the Bot API takes the same names as a JSON object); None values
    are left out as PTB does.
    """
    body: dict[str, Any] = {"chat_id": int(chat_id)}
    for key, value in kwargs.items():
        if value is not None:
            body[key] = _wire_value(value)
    return jsonio.dumps_bytes(body)


def _env_proxy(url: str) -> str | None:
    """HTTPS_PROXY / HTTP_PROXY / NO_PROXY for ``url``, as httpx (hence PTB) honours them; read once."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class TelegramTransport:
    """Sends outbox payloads with sendMessage over a lean HTTP path; the outbox's error classes out.

    Only sendMessage goes this way (python-telegram-bot keeps getMe, getFile, webhooks, polling): the body is
    built from render()'s arguments exactly as PTB would send them, POSTed as JSON on a keep-alive aiohttp
    session sized to the sender's calls in flight, and the Bot API's answer is read for ``ok``,
    ``result.message_id``, ``error_code``, ``description`` and ``parameters.retry_after``. Through PTB
    (``Bot.send_message`` → httpx) a message cost about 3 ms of CPU here, more than the 1 ms a message may
    cost at 1,000 messages/s; see docs/performance.md for the measurements behind aiohttp.

    The URL (hence the token) comes from the Bot (``bot.base_url``, built by make_bot from
    TELEGRAM_API_BASE_URL and the token) and never reaches a log line or an error message: errors carry the
    Bot API's description or an exception class name, never the URL or the text.

    The session is opened on the first send, in the running event loop, and closed by ``aclose()``, which
    TelegramChannel.shutdown calls, as does ``bot.shutdown()`` for a Bot made by make_bot. A Say longer than 4096 characters goes out as several messages: a
    retry after a failure in the middle sends the first parts again (rare: our messages are short).
    """

    def __init__(
        self,
        bot: Bot,
        *,
        connections: int = SEND_CONNECTIONS,
        connect_timeout: float = SEND_CONNECT_TIMEOUT,
        read_timeout: float = SEND_READ_TIMEOUT,
    ) -> None:
        self.bot = bot
        self.connections = connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None
        self._url: URL | None = None
        self._answer_url: URL | None = None
        self._proxy: str | None = None
        if isinstance(bot.request, _BotRequest):
            bot.request.on_shutdown.append(self.aclose)  # bot.shutdown() closes the session too

    def _open(self) -> aiohttp.ClientSession:
        url = f"{self.bot.base_url}/sendMessage"  # holds the token: never logged
        self._url = URL(url, encoded=True)
        self._answer_url = URL(f"{self.bot.base_url}/answerCallbackQuery", encoded=True)
        self._proxy = _env_proxy(url)
        connector = aiohttp.TCPConnector(
            limit=self.connections, limit_per_host=self.connections, keepalive_timeout=30.0, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.connect_timeout, sock_connect=self.connect_timeout,
                sock_read=self.read_timeout,
            ),
            headers={"Content-Type": "application/json"},
            raise_for_status=False,
            auto_decompress=True,
        )
        return self._session

    @property
    def closed(self) -> bool:
        """True when no HTTP session is open (before the first send, and after aclose())."""
        return self._session is None or self._session.closed

    async def aclose(self) -> None:
        """Close the HTTP session (and its keep-alive connections); the next send opens a new one."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def send(self, chat_id: str, payload: dict[str, Any]) -> str | None:
        session = self._session
        if session is None or session.closed:
            session = self._open()
        last: str | None = None
        for kwargs in render(Say.from_json(payload)):
            last = await self._send_message(session, send_message_body(chat_id, kwargs))
        return last

    async def answer_callback(self, query_id: str) -> bool:
        """answerCallbackQuery (stops the button's spinner) on the same lean path; True when Telegram said ok.

        Through PTB (``CallbackQuery.answer`` → httpx) this cost about as much CPU as the whole flow step of
        the button press it answered. Failures are only counted: a query answered late (after a restart) is
        "too old", and the spinner stops by itself."""
        session = self._session
        if session is None or session.closed:
            session = self._open()
        body = jsonio.dumps_bytes({"callback_query_id": query_id})
        try:
            async with session.post(self._answer_url, data=body, proxy=self._proxy) as response:  # type: ignore[arg-type]
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
        try:
            return status < 300 and jsonio.loads(raw).get("ok") is True
        except (ValueError, AttributeError):
            return False

    async def _send_message(self, session: aiohttp.ClientSession, body: bytes) -> str | None:
        try:
            async with session.post(self._url, data=body, proxy=self._proxy) as response:  # type: ignore[arg-type]
                status = response.status
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # the class name only: some of these exceptions' texts hold the URL, hence the token
            raise TransientError(type(exc).__name__) from None
        return parse_send_answer(status, raw)


def parse_send_answer(status: int, raw: bytes) -> str | None:
    """The message_id of a sendMessage answer, or the outbox error its ``error_code`` stands for."""
    try:
        answer = jsonio.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):  # a proxy's or a load balancer's page: go by the HTTP status
        if status < 300:
            raise TransientError(f"HTTP {status}: not a Bot API answer")
        answer = {}
    if answer.get("ok") is True and status < 300:
        result = answer.get("result")
        message_id = result.get("message_id") if isinstance(result, dict) else None
        return None if message_id is None else str(message_id)
    code = answer.get("error_code")
    code = code if isinstance(code, int) else status
    description = str(answer.get("description") or f"HTTP {code}")
    if code == 429:
        parameters = answer.get("parameters")
        retry_after = parameters.get("retry_after") if isinstance(parameters, dict) else None
        seconds = float(retry_after) if isinstance(retry_after, int | float) else 1.0
        raise RetryAfterError(seconds)
    if code == 403:
        raise UnreachableError(description)
    if code == 400:
        lowered = description.lower()
        if any(reason in lowered for reason in UNREACHABLE_400):
            raise UnreachableError(description)
        raise PermanentError(description)
    if code in (401, 404):
        raise TransientError("InvalidToken")  # PTB's name for it: a wrong token or base URL
    raise TransientError(f"HTTP {code}")  # 5xx, 409..., and ok: false with any other code


# --- the channel ----------------------------------------------------------------------------------------


class TelegramChannel:
    """Everything Telegram-specific the runtime needs: normaliser, transport, webhook setup, polling."""

    def __init__(self, *, settings: Settings, engine: Engine, bot: Bot | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.bot = bot or make_bot(settings)
        self.transport = TelegramTransport(self.bot)
        self._answers: set[asyncio.Task[bool]] = set()  # answerCallbackQuery calls under way

    async def initialize(self) -> None:
        """Open the HTTP clients and check the token (getMe); remember the bot's username for invite links."""
        await self.bot.initialize()
        if self.bot.username:
            await asyncio.to_thread(self._remember_username, self.bot.username)

    def _remember_username(self, username: str) -> None:
        with Session(self.engine) as session:
            row = session.exec(select(ChannelCredential).where(ChannelCredential.channel == CHANNEL)).first()
            data = dict(row.data) if row else {}
            if data.get("username") == username:
                return
            data["username"] = username
            if row is None:
                row = ChannelCredential(channel=CHANNEL, data=data)
            row.data = data
            session.add(row)
            session.commit()

    async def shutdown(self) -> None:
        if self._answers:  # the spinners of the last button presses: a few round trips, bounded
            await asyncio.wait(set(self._answers), timeout=5.0)
        with contextlib.suppress(Exception):
            await self.transport.aclose()
        with contextlib.suppress(Exception):
            await self.bot.shutdown()

    # -- setup

    async def set_commands(self) -> None:
        await self.bot.set_my_commands([BotCommand(name, t(f"channel.cmd_{name}")) for name in COMMANDS])

    async def setup_webhook(self) -> None:
        """setWebhook to PUBLIC_BASE_URL/webhooks/telegram with the secret token, and the command menu."""
        await self.bot.set_webhook(
            url=f"{self.settings.public_base_url}/webhooks/telegram",
            secret_token=webhook_secret(self.settings),
            allowed_updates=ALLOWED_UPDATES,
        )
        await self.set_commands()
        log.info("telegram: webhook set")

    async def poll(self, *, on_stored: Callable[[], None], long_poll_seconds: int = 25) -> None:
        """Long polling into the same inbox as the webhook; runs until cancelled."""
        await self.bot.delete_webhook(drop_pending_updates=False)
        await self.set_commands()
        log.info("telegram: long polling")
        offset: int | None = None
        failures = 0
        while True:
            try:
                updates = await self.bot.get_updates(
                    offset=offset,
                    timeout=long_poll_seconds,
                    allowed_updates=ALLOWED_UPDATES,
                    read_timeout=long_poll_seconds + 10.0,
                )
            except TimedOut:
                continue
            except InvalidToken:
                log.error("telegram: the bot token was rejected; polling stops")
                return
            except (Conflict, NetworkError, TelegramError) as exc:
                failures += 1
                delay = min(2.0**failures, 60.0)
                log.warning("telegram: getUpdates failed (%s); retrying in %.0fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            if not updates:
                continue
            # stored as JSON, the same shape as a webhook body (PTB keeps unknown fields in api_kwargs)
            raw = [update.to_dict() for update in updates]
            await asyncio.to_thread(self._store_many, raw)
            # confirming by offset only after the commit: a crash before it redelivers, the inbox dedups
            offset = max(u["update_id"] for u in raw) + 1
            on_stored()

    def _store_many(self, updates: list[dict[str, Any]]) -> None:
        with Session(self.engine) as session:
            for update in updates:
                store_update(session, CHANNEL, update["update_id"], chat_key(update), update)
            session.commit()

    # -- normalising

    async def normalise(self, payload: dict[str, Any]) -> Inbound:
        """Raw update → Inbound (see the module docstring for what is ignored or answered here).

        The two shapes nearly every update has — a text message in a private chat, a button press — are read
        straight from the JSON (``_plain_text``, ``_plain_callback``); building python-telegram-bot's objects
        for them cost more than the flow step they feed (py-spy, docs/performance.md). Anything else, or
        anything those readers are not sure of, goes through PTB as before; both give the same Inbound
        (tests/test_telegram_adapter.py, hypothesis)."""
        text = _plain_text(payload)
        if text is not None:
            return text
        query = _plain_callback(payload)
        if query is not None:
            return await self._callback(query)
        return await self.normalise_ptb(payload)

    async def normalise_ptb(self, payload: dict[str, Any]) -> Inbound:
        """``normalise`` through python-telegram-bot's objects, for every shape."""
        update = Update.de_json(payload, self.bot)
        if update.callback_query is not None:
            return await self._callback(_Query.of(update.callback_query))
        message = update.message
        if message is None:
            return Inbound()  # edited messages, channel posts...: not ours to answer
        chat_id = str(message.chat.id)
        sender = message.from_user
        who = {"user_id": str(sender.id), "display_name": clean(sender.full_name)} if sender else {}
        if message.chat.type != "private":
            if message.text and message.text.startswith("/"):
                return Inbound(chat_id=chat_id, replies=(Say(t("channel.group_not_supported")),))
            return Inbound()
        if message.text is not None:
            return Inbound(chat_id=chat_id, event=_text_event(clean(message.text)), **who)
        if message.photo:
            largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
            return await self._photo(chat_id, largest.file_id, largest.file_size, who)
        document = message.document
        if (
            document is not None
            and message.animation is None
            and _looks_like_image(document.mime_type, document.file_name)
        ):
            return await self._photo(chat_id, document.file_id, document.file_size, who)
        if message.contact is not None:
            if message.contact.user_id is None or sender is None or message.contact.user_id != sender.id:
                return Inbound(
                    chat_id=chat_id, replies=(Say(t("channel.contact_not_own"), request_contact=True),)
                )
            return Inbound(
                chat_id=chat_id, event=Event(kind="contact", text=clean(message.contact.phone_number)), **who
            )
        for kind in UNSUPPORTED_KINDS:
            if getattr(message, kind, None):
                return Inbound(chat_id=chat_id, event=Event(kind="unsupported", value=kind), **who)
        return Inbound()  # service messages

    async def _callback(self, query: _Query) -> Inbound:
        # stop the spinner, alongside the processing rather than before it (the reply need not wait for this
        # round trip); a query answered late (after a restart) is "too old": nothing to do about it
        answer = asyncio.create_task(self.transport.answer_callback(query.id))
        self._answers.add(answer)
        answer.add_done_callback(self._answers.discard)
        if query.chat_type is not None and query.chat_type != "private":
            return Inbound()
        chat_id = query.chat_id
        who = {"user_id": query.user_id, "display_name": clean(query.full_name)}
        data = clean(query.data)
        label = ""
        for button_data, button_text in query.buttons:
            if button_data == data:
                label = clean(button_text)
        value = data
        if data.startswith(HASH_PREFIX):
            resolved = await asyncio.to_thread(self._resolve_hash, chat_id, query.message_id, data)
            if resolved is None:
                # cannot tell which value it was: the label still works as a typed answer
                return Inbound(chat_id=chat_id, event=Event(kind="text", text=label), **who)
            value = resolved
        return Inbound(chat_id=chat_id, event=Event(kind="button", value=value, text=label), **who)

    def _resolve_hash(self, chat_id: str, message_id: int | None, data: str) -> str | None:
        """Find the long button value behind a hashed callback_data in the outbox row that carried it."""
        with Session(self.engine) as session:
            query = select(OutboxMessage).where(
                OutboxMessage.channel == CHANNEL, OutboxMessage.chat_id == chat_id
            )
            rows: list[OutboxMessage] = []
            if message_id is not None:
                rows = list(session.exec(query.where(OutboxMessage.platform_message_id == str(message_id))))
            rows += list(session.exec(query.order_by(col(OutboxMessage.id).desc()).limit(50)))
        for row in rows:
            for button in row.payload.get("buttons", ()):
                value = str(button.get("value", ""))
                if callback_data(value) == data:
                    return value
        return None

    async def _photo(self, chat_id: str, file_id: str, file_size: int | None, who: dict[str, str]) -> Inbound:
        limit = min(self.settings.photo_max_bytes, DOWNLOAD_LIMIT)
        if file_size is not None and file_size > limit:
            return Inbound(chat_id=chat_id, replies=(Say(t(TOO_BIG)),))
        try:
            file = await self.bot.get_file(file_id)
            data = bytes(await file.download_as_bytearray())
        except BadRequest as exc:
            if "too big" in exc.message.lower():
                return Inbound(chat_id=chat_id, replies=(Say(t(TOO_BIG)),))
            raise
        # network errors propagate: the inbox retries the row with backoff (file links last ≥ 1 h)
        stored = await asyncio.to_thread(
            store_photo,
            data,
            media_dir=self.settings.media_path,
            max_bytes=self.settings.photo_max_bytes,
            max_pixels=self.settings.photo_max_pixels,
        )
        if isinstance(stored, str):
            return Inbound(chat_id=chat_id, replies=(Say(t(stored)),))
        return Inbound(chat_id=chat_id, event=Event(kind="photo", photo=stored.ref), **who)


_CONTROLS = {c: None for c in range(32) if c not in (9, 10)} | {127: None}


def clean(text: str | None) -> str:
    """Text as the flows and the database may hold it: no NUL or other control characters.

    PostgreSQL refuses NUL in text columns (the whole unit of work would fail, and the update with it);
    other C0 controls have no business in a name or an answer either. Tab and newline are kept.
    """
    return (text or "").translate(_CONTROLS)


def _text_event(text: str) -> Event:
    """Text → Event: "/start v_abc" is command start with payload v_abc, "/huy@hoctap_bot" command huy."""
    if text.startswith("/") and len(text) > 1 and not text[1].isspace():
        head, _, rest = text[1:].partition(" ")
        command = head.split("@", 1)[0].lower()
        return Event(kind="command", text=command, value=rest.strip())
    return Event(kind="text", text=text)


def _looks_like_image(mime_type: str | None, file_name: str | None) -> bool:
    if mime_type and mime_type.lower().startswith("image/"):
        return True
    return bool(file_name and file_name.lower().endswith(IMAGE_SUFFIXES))


# -- the common shapes, read without python-telegram-bot's objects (see TelegramChannel.normalise)


@dataclass(frozen=True)
class _Query:
    """What ``_callback`` reads of a button press."""

    id: str
    chat_id: str  # the message's chat, or the presser when the message is not there
    chat_type: str | None  # None: no message
    message_id: int | None
    user_id: str
    full_name: str | None
    data: str | None
    buttons: tuple[tuple[str | None, str], ...]  # (callback_data, text) of the message's inline keyboard

    @classmethod
    def of(cls, query: CallbackQuery) -> _Query:
        message = query.message
        buttons: tuple[tuple[str | None, str], ...] = ()
        if isinstance(message, Message) and isinstance(message.reply_markup, InlineKeyboardMarkup):
            buttons = tuple((b.callback_data if isinstance(b.callback_data, str) else None, b.text)
                            for row in message.reply_markup.inline_keyboard for b in row)
        return cls(
            id=query.id,
            chat_id=str(message.chat.id) if message is not None else str(query.from_user.id),
            chat_type=message.chat.type if message is not None else None,
            message_id=message.message_id if message is not None else None,
            user_id=str(query.from_user.id),
            full_name=query.from_user.full_name,
            data=query.data,
            buttons=buttons,
        )


def _int(value: Any) -> bool:
    return type(value) is int  # not bool, which JSON's true would give


def _user(value: Any) -> tuple[str, str | None] | None:
    """(id, full name as PTB's User.full_name gives it) of a well-formed user object; None otherwise."""
    if not isinstance(value, dict) or not _int(value.get("id")) or value.get("is_bot") not in (True, False):
        return None
    first, last = value.get("first_name"), value.get("last_name")
    if not isinstance(first, str) or not (last is None or isinstance(last, str)):
        return None
    if not first:
        return str(value["id"]), None
    return str(value["id"]), f"{first} {last}" if last else first


def _chat(message: Any) -> tuple[int, str] | None:
    """(chat id, chat type) of a well-formed message object (its id and date included); None otherwise."""
    if not isinstance(message, dict) or not _int(message.get("message_id")) or not _int(message.get("date")):
        return None
    chat = message.get("chat")
    if not isinstance(chat, dict) or not _int(chat.get("id")) or not isinstance(chat.get("type"), str):
        return None
    return chat["id"], chat["type"]


def _plain_text(payload: dict[str, Any]) -> Inbound | None:
    """A text message in a private chat, as PTB would normalise it; None for any other shape."""
    if "callback_query" in payload:
        return None
    message = payload.get("message")
    chat = _chat(message)
    if chat is None or chat[1] != "private" or not isinstance(message.get("text"), str):
        return None
    who: dict[str, str] = {}
    if "from" in message:
        sender = _user(message["from"])
        if sender is None:
            return None
        who = {"user_id": sender[0], "display_name": clean(sender[1])}
    return Inbound(chat_id=str(chat[0]), event=_text_event(clean(message["text"])), **who)


def _plain_callback(payload: dict[str, Any]) -> _Query | None:
    """A button press with a well-formed message (or none), read as ``_Query.of`` would; None otherwise."""
    query = payload.get("callback_query")
    if not isinstance(query, dict) or not isinstance(query.get("id"), str):
        return None
    if not isinstance(query.get("chat_instance"), str) or not isinstance(query.get("data"), str):
        return None
    sender = _user(query.get("from"))
    if sender is None:
        return None
    message = query.get("message")
    if message is None:
        if "message" in query:
            return None
        return _Query(query["id"], sender[0], None, None, sender[0], sender[1], query["data"], ())
    chat = _chat(message)
    if chat is None:
        return None
    buttons: list[tuple[str | None, str]] = []
    if "reply_markup" in message:
        markup = message["reply_markup"]
        rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
        if not isinstance(rows, list):
            return None
        for row in rows:
            if not isinstance(row, list):
                return None
            for button in row:
                if not isinstance(button, dict) or not isinstance(button.get("text"), str):
                    return None
                data = button.get("callback_data")
                if not (data is None or isinstance(data, str)):
                    return None
                buttons.append((data, button["text"]))
    return _Query(query["id"], str(chat[0]), chat[1], message["message_id"], sender[0], sender[1],
                  query["data"], tuple(buttons))
