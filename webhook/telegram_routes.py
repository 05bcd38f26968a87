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

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from bot.inbox import inbox_writer
from bot.telegram import CHANNEL, chat_key, webhook_secret

log = logging.getLogger("hoctap.webhook.telegram")

router = APIRouter()

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
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


@router.post("/webhooks/telegram", tags=["webhooks"], include_in_schema=False)
async def telegram_webhook(request: Request) -> Response:
    settings = request.app.state.settings
    if not settings.telegram_enabled:
        return JSONResponse({"ok": False, "error": "telegram is off"}, status_code=404)
    expected = webhook_secret(settings)
    given = request.headers.get(SECRET_HEADER, "")
    # constant time, and never accept an empty secret
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return JSONResponse({"ok": False, "error": "bad secret"}, status_code=401)
    body = await request.body()
    if len(body) > MAX_BODY:
        return JSONResponse({"ok": False, "error": "too large"}, status_code=413)
    update = parse_update(body)
    if update is None:
        return JSONResponse({"ok": False, "error": "not JSON"}, status_code=400)
    if not isinstance(update, dict) or type(update.get("update_id")) is not int:
        return JSONResponse({"ok": False, "error": "no update_id"}, status_code=400)
    # committed before we answer (Telegram does not send it again after a 200); concurrent calls share the
    # INSERT and the commit
    writer = inbox_writer(request.app.state.engine)
    new = await writer.submit((CHANNEL, update["update_id"], chat_key(update), update))
    if new:
        request.app.state.runtime.wake_inbox()
    return Response(OK_BODY, media_type="application/json")
