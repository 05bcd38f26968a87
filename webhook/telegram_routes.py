"""POST /webhooks/telegram: check the secret, store the raw update in the inbox, answer 200 at once.

Processing happens in the inbox worker, never here: Telegram waits for our answer before sending the same
chat's next update, and re-sends on anything but 2xx, so this route only verifies, stores and commits.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from typing import Any

from starlette.types import Receive, Scope, Send

from bot.inbox import hold_back, inbox_writer
from bot.telegram import CHANNEL, chat_key, webhook_secret

log = logging.getLogger("hoctap.webhook.telegram")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
SECRET_HEADER_RAW = SECRET_HEADER.lower().encode()  # ASGI header names are lower-case bytes
OK_BODY = b'{"ok":true}'  # what JSONResponse({"ok": True}) renders, without rendering it per update
MAX_BODY = 1_000_000  # updates are a few kB; anything this large is not from Telegram


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: PostgreSQL's json type refuses them


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf, which PostgreSQL would refuse at commit
        raise ValueError("number out of range")
    return value


def parse_update(body: bytes) -> Any:
    """The body as JSON, or None for anything we could not store as is.

    Beyond plain syntax errors: nesting so deep that the parser recurses out (RecursionError, a 500
    otherwise), NaN/Infinity and overflowing floats, and lone UTF-16 surrogates ("\\ud800"), which are
    valid JSON escapes but not text that UTF-8 (and so PostgreSQL and our logs) can hold.
    """
    try:
        value = json.loads(body, parse_constant=_reject_constant, parse_float=_finite)
        # in a UTF-8 body a lone surrogate can only come from a "\\u" escape or from surrogate bytes (lead
        # byte 0xED, which json.loads lets through): without either, the text is encodable and the (costly)
        # check by re-encoding the whole update is skipped (UTF-16/32 bodies are always checked)
        if b"\\u" in body or b"\xed" in body or json.detect_encoding(body) != "utf-8":
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):
        return None
    return value


PATH = "/webhooks/telegram"
_JSON = [(b"content-type", b"application/json")]


def _error(error: str) -> bytes:
    return json.dumps({"ok": False, "error": error}, separators=(",", ":")).encode()


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


TOO_LARGE = b"\x00too large"  # a sentinel, compared by identity


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, None when the client went away, ``TOO_LARGE`` past MAX_BODY (stops reading)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return TOO_LARGE
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def telegram_webhook(app: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """POST /webhooks/telegram as a bare ASGI handler, answered before FastAPI's middleware and routing.

    This route takes every update of every family at the campaign's peaks; under FastAPI's stack (nine
    layers of middleware, the router, dependency solving, a Request and a Response object) the framework cost
    about twice what the route itself does (bench/inbound.py, py-spy; docs/performance.md). Nothing here
    needs the framework: one header, the body, one JSON answer. webhook/app.py (HoctapApp) dispatches here.
    """
    state = app.state
    settings = state.settings
    if not settings.telegram_enabled:
        await _answer(send, 404, _error("telegram is off"))
        return
    expected = webhook_secret(settings)
    given = b""
    for name, value in scope["headers"]:
        if name == SECRET_HEADER_RAW:
            given = value
            break
    # constant time, and never accept an empty secret
    if not expected or not hmac.compare_digest(given, expected.encode()):
        await _answer(send, 401, _error("bad secret"))
        return
    body = await _read_body(receive)
    if body is None:
        return  # the client is gone: nothing stored, Telegram sends it again
    if body is TOO_LARGE:
        await _answer(send, 413, _error("too large"))
        return
    update = parse_update(body)
    if update is None:
        await _answer(send, 400, _error("not JSON"))
        return
    if not isinstance(update, dict) or type(update.get("update_id")) is not int:
        await _answer(send, 400, _error("no update_id"))
        return
    # committed before we answer (Telegram does not send it again after a 200); concurrent calls share the
    # INSERT and the commit
    writer = inbox_writer(state.engine)
    try:
        new = await writer.submit((CHANNEL, update["update_id"], chat_key(update), update))
    except Exception as exc:  # noqa: BLE001 - the database is down or refused: Telegram retries on a 5xx
        log.warning("telegram webhook: could not store the update (%s)", type(exc).__name__)
        await _answer(send, 500, _error("not stored"))
        return
    if new:
        state.runtime.wake_inbox()
    await hold_back(state.engine)  # stored; the answer waits while work is queued (bot.inbox.Backpressure)
    await _answer(send, 200, OK_BODY)
