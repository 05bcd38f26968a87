"""POST /webhooks/zalo (Zalo Bot Platform) and POST /webhooks/zalo-oa (Zalo Official Account).

Both only verify, store the raw event in the inbox and answer 200 at once (Zalo OA wants an answer within
2 s and retries otherwise); the inbox worker processes it. A wrong or missing secret or signature is
refused before anything is stored; a body that is not JSON gets 400, never 5xx.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from bot import zalo, zalo_oa
from bot.inbox import hold_back
from webhook.telegram_routes import parse_update

log = logging.getLogger("hoctap.webhook.zalo")

router = APIRouter()

BOT_SECRET_HEADER = "X-Bot-Api-Secret-Token"
MAX_BODY = 1_000_000


def _error(status: int, error: str) -> Response:
    return JSONResponse({"ok": False, "error": error}, status_code=status)


def _json(body: bytes) -> Any:
    """The body as JSON, or None: syntax errors, too deep nesting, NaN/Infinity, lone surrogates (the same
    rules as the Telegram route: only what UTF-8 text and a JSON column can hold)."""
    return parse_update(body)


def _wake(request: Request) -> None:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.wake_inbox()


@router.post("/webhooks/zalo", tags=["webhooks"], include_in_schema=False)
async def zalo_bot_webhook(request: Request) -> Response:
    settings = request.app.state.settings
    if not settings.zalo_enabled:
        return _error(404, "zalo is off")
    expected = zalo.webhook_secret(settings)
    given = request.headers.get(BOT_SECRET_HEADER, "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return _error(401, "bad secret")
    body = await request.body()
    if len(body) > MAX_BODY:
        return _error(413, "too large")
    payload = _json(body)
    if not isinstance(payload, dict | list):
        return _error(400, "not JSON")
    events = zalo.extract_events(payload)
    new = await run_in_threadpool(zalo.store_events, request.app.state.engine, events) if events else 0
    if new:
        _wake(request)
        await hold_back(request.app.state.engine)  # stored; the answer waits while work is queued
    return JSONResponse({"ok": True})


@router.post("/webhooks/zalo-oa", tags=["webhooks"], include_in_schema=False)
async def zalo_oa_webhook(request: Request) -> Response:
    settings = request.app.state.settings
    if not settings.zalo_oa_enabled:
        return _error(404, "zalo oa is off")
    header = request.headers.get(zalo_oa.SIGNATURE_HEADER, "")
    if not header:
        return _error(401, "no signature")
    body = await request.body()
    if len(body) > MAX_BODY:
        return _error(413, "too large")
    payload = _json(body)
    if not isinstance(payload, dict):
        return _error(400, "not JSON")
    if not zalo_oa.verify(settings, body, payload, header):
        log.warning("zalo_oa: signature mismatch (event %s)", str(payload.get("event_name", ""))[:40])
        return _error(401, "bad signature")
    if str(payload.get("app_id", settings.zalo_oa_app_id)) != settings.zalo_oa_app_id:
        return _error(403, "another app")
    if payload.get("event_name") not in zalo_oa.USER_EVENTS or not zalo_oa.user_of(payload):
        return JSONResponse({"ok": True})  # seen, delivered, sent by the OA...: nothing to do
    new = await run_in_threadpool(zalo_oa.store_event, request.app.state.engine, payload)
    if new:
        _wake(request)
        await hold_back(request.app.state.engine)  # stored; the answer waits while work is queued
    return JSONResponse({"ok": True})
