"""A fake Telegram Bot API server: a real HTTP server on 127.0.0.1 that PTB talks to through base_url.

Speaks ``/bot{token}/{method}`` (getMe, sendMessage, answerCallbackQuery, getFile, setWebhook,
deleteWebhook, setMyCommands, getUpdates) and ``/file/bot{token}/{path}``; records every call; can answer
429 with retry_after (and notes any sendMessage that ignores it), 403 for chosen chats, or fail N times.

    with FakeTelegram().running() as fake:
        settings = get_settings(telegram_api_base_url=fake.base_url, telegram_bot_token=fake.token, ...)

Also: builders for real update JSON (``text_update``, ``callback_update``, ``photo_update``...).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.livehttp import live_server

TOKEN = "123456:TEST-fake-token_abcdefghijklmnopqrstuvwxyz"
BOT_ID = 123456
BOT_USERNAME = "hoctap_test_bot"
JSON_PARAMS = {"reply_markup", "allowed_updates", "commands", "offset", "timeout", "limit", "show_alert"}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    status: int = 200
    result: Any = None


@dataclass
class FakeTelegram:
    token: str = TOKEN
    long_poll_cap: float = 1.0  # getUpdates waits at most this long for new updates
    ban_grace: float = 0.25  # calls in flight when a 429 is given are not counted as ignoring it
    calls: list[Call] = field(default_factory=list)
    violations: list[Call] = field(default_factory=list)  # sendMessage during a retry_after ban
    bans: list[tuple[float, float]] = field(default_factory=list)  # (429 given at, retry_after ends at)
    base_url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._updates: list[dict[str, Any]] = []
        self._files: dict[str, tuple[str, bytes]] = {}
        self._forbidden: set[str] = set()
        self._failures: dict[str, list[int]] = {}
        self._rate_limits: list[float] = []  # retry_after for the next sendMessage calls
        self._storm: tuple[int, float, int] | None = None  # every k-th call, retry_after, times left
        self._ban: tuple[float, float] | None = None  # (given at, until)
        self._message_ids = itertools.count(1000)
        self._send_count = 0
        self.webhook: dict[str, Any] | None = None
        self.commands: list[dict[str, Any]] = []

    # -- control

    @contextmanager
    def running(self) -> Iterator[FakeTelegram]:
        app = Starlette(
            routes=[
                Route("/bot{token}/{method}", self._api, methods=["GET", "POST"]),
                Route("/file/bot{token}/{path:path}", self._file, methods=["GET"]),
            ]
        )
        with live_server(app) as url:
            self.base_url = url
            yield self

    def push_update(self, *updates: dict[str, Any]) -> None:
        """Queue updates for getUpdates."""
        with self._lock:
            self._updates.extend(updates)

    def add_file(self, file_id: str, data: bytes, *, path: str | None = None) -> str:
        with self._lock:
            self._files[file_id] = (path or f"photos/{file_id}.jpg", data)
        return file_id

    def forbid(self, chat_id: int | str) -> None:
        """sendMessage to this chat answers 403 (the user blocked the bot)."""
        with self._lock:
            self._forbidden.add(str(chat_id))

    def fail_next(self, method: str, times: int, status: int = 500) -> None:
        """The next ``times`` calls of ``method`` answer ``status``."""
        with self._lock:
            self._failures.setdefault(method, []).extend([status] * times)

    def rate_limit_next(self, *retry_after: float) -> None:
        """The next sendMessage calls answer 429 with these retry_after values, one each."""
        with self._lock:
            self._rate_limits.extend(retry_after)

    def rate_limit_storm(self, *, every: int, retry_after: float, times: int) -> None:
        """Every ``every``-th sendMessage answers 429, ``times`` times in all."""
        with self._lock:
            self._storm = (every, retry_after, times)

    # -- reading the record

    def calls_of(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def sent(self, chat_id: int | str | None = None) -> list[dict[str, Any]]:
        """Params of every sendMessage that succeeded, in order."""
        return [
            c.params
            for c in self.calls_of("sendMessage")
            if c.status == 200 and (chat_id is None or str(c.params.get("chat_id")) == str(chat_id))
        ]

    def sent_messages(self, chat_id: int | str | None = None) -> list[dict[str, Any]]:
        """The Message objects returned for every successful sendMessage (with message_id)."""
        return [
            c.result
            for c in self.calls_of("sendMessage")
            if c.status == 200 and (chat_id is None or str(c.params.get("chat_id")) == str(chat_id))
        ]

    def sent_texts(self, chat_id: int | str | None = None) -> list[str]:
        return [str(p.get("text", "")) for p in self.sent(chat_id)]

    # -- the server

    async def _file(self, request: Request) -> Response:
        if request.path_params["token"] != self.token:
            return Response(status_code=404)
        path = request.path_params["path"]
        with self._lock:
            self.calls.append(Call("file", {"path": path}, time.monotonic()))
            for stored_path, data in self._files.values():
                if stored_path == path:
                    return Response(data, media_type="application/octet-stream")
        return Response(status_code=404)

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        params = await _params(request)
        now = time.monotonic()
        if request.path_params["token"] != self.token:
            return _error(401, "Unauthorized")
        call = Call(method, params, now)
        with self._lock:
            self.calls.append(call)
            status_override = (
                self._failures.get(method, [None]).pop(0) if self._failures.get(method) else None
            )
        if status_override is not None:
            call.status = status_override
            return _error(status_override, "Internal Server Error")
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            call.status = 404
            return _error(404, "Not Found: method not found")
        response = await handler(call)
        call.status = response.status_code
        return response

    async def _m_getMe(self, call: Call) -> Response:
        return _ok(
            {
                "id": BOT_ID,
                "is_bot": True,
                "first_name": "Học tập",
                "username": BOT_USERNAME,
                "can_join_groups": False,
                "can_read_all_group_messages": False,
                "supports_inline_queries": False,
            }
        )

    async def _m_sendMessage(self, call: Call) -> Response:
        chat_id = str(call.params.get("chat_id"))
        with self._lock:
            if self._ban is not None and call.at < self._ban[1]:
                if call.at - self._ban[0] > self.ban_grace:
                    self.violations.append(call)
                return _retry_after(max(1, round(self._ban[1] - call.at)))
            self._send_count += 1
            retry_after: float | None = None
            if self._rate_limits:
                retry_after = self._rate_limits.pop(0)
            elif self._storm is not None:
                every, value, left = self._storm
                if left > 0 and self._send_count % every == 0:
                    retry_after = value
                    self._storm = (every, value, left - 1)
            if retry_after is not None:
                self._ban = (call.at, call.at + retry_after)
                self.bans.append(self._ban)
                return _retry_after(retry_after)
            if chat_id in self._forbidden:
                return _error(403, "Forbidden: bot was blocked by the user")
            message_id = next(self._message_ids)
        result: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": int(chat_id), "type": "private", "first_name": "Người dùng"},
            "text": call.params.get("text", ""),
        }
        markup = call.params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            result["reply_markup"] = markup
        call.result = result
        return _ok(result)

    async def _m_answerCallbackQuery(self, call: Call) -> Response:
        return _ok(True)

    async def _m_getFile(self, call: Call) -> Response:
        file_id = str(call.params.get("file_id"))
        with self._lock:
            stored = self._files.get(file_id)
        if stored is None:
            return _error(400, "Bad Request: invalid file_id")
        path, data = stored
        return _ok(
            {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(data), "file_path": path}
        )

    async def _m_setWebhook(self, call: Call) -> Response:
        self.webhook = dict(call.params)
        return _ok(True)

    async def _m_deleteWebhook(self, call: Call) -> Response:
        self.webhook = None
        return _ok(True)

    async def _m_setMyCommands(self, call: Call) -> Response:
        self.commands = list(call.params.get("commands") or [])
        return _ok(True)

    async def _m_getUpdates(self, call: Call) -> Response:
        offset = call.params.get("offset")
        wait = min(float(call.params.get("timeout") or 0), self.long_poll_cap)
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                if offset is not None:
                    # confirmed: Telegram forgets them
                    self._updates = [u for u in self._updates if u["update_id"] >= int(offset)]
                ready = list(self._updates)
            if ready or time.monotonic() >= deadline:
                return _ok(ready)
            await asyncio.sleep(0.02)


async def _params(request: Request) -> dict[str, Any]:
    body = await request.body()
    raw: dict[str, Any] = dict(request.query_params)
    ctype = request.headers.get("content-type", "")
    if body and ctype.startswith("application/json"):
        raw.update(json.loads(body))
        return raw
    if body:
        raw.update(dict(parse_qsl(body.decode(), keep_blank_values=True)))
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in JSON_PARAMS and isinstance(value, str):
            try:
                out[key] = json.loads(value)
                continue
            except ValueError:
                pass
        out[key] = value
    return out


def _ok(result: Any) -> Response:
    return JSONResponse({"ok": True, "result": result})


def _error(code: int, description: str) -> Response:
    return JSONResponse({"ok": False, "error_code": code, "description": description}, status_code=code)


def _retry_after(seconds: float) -> Response:
    value = int(seconds) if float(seconds).is_integer() else seconds
    return JSONResponse(
        {
            "ok": False,
            "error_code": 429,
            "description": f"Too Many Requests: retry after {value}",
            "parameters": {"retry_after": value},
        },
        status_code=429,
    )


# --- real update JSON -------------------------------------------------------------------------------------

_msg_ids = itertools.count(1)


def user(user_id: int, first_name: str = "Lan") -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "vi"}


def _message(chat_id: int, *, chat_type: str = "private", **fields: Any) -> dict[str, Any]:
    chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
    if chat_type == "private":
        chat["first_name"] = "Lan"
    else:
        chat["title"] = "Nhóm thôn"
    sender = fields.pop("from_id", chat_id if chat_type == "private" else 777)
    return {
        "message_id": next(_msg_ids),
        "date": int(time.time()),
        "chat": chat,
        "from": user(sender),
        **fields,
    }


def text_update(
    update_id: int, chat_id: int, text: str, *, chat_type: str = "private", **extra: Any
) -> dict[str, Any]:
    message = _message(chat_id, chat_type=chat_type, text=text, **extra)
    if text.startswith("/"):
        command = text.split(" ", 1)[0]
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
    return {"update_id": update_id, "message": message}


def edited_update(update_id: int, chat_id: int, text: str) -> dict[str, Any]:
    message = _message(chat_id, text=text, edit_date=int(time.time()))
    return {"update_id": update_id, "edited_message": message}


def callback_update(
    update_id: int,
    chat_id: int,
    data: str,
    *,
    message_id: int = 1,
    buttons: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """A button press on the bot's message ``message_id`` (whose keyboard had ``buttons``: label, data)."""
    bot_message: dict[str, Any] = {
        "message_id": message_id,
        "date": int(time.time()),
        "chat": {"id": chat_id, "type": "private", "first_name": "Lan"},
        "from": {"id": BOT_ID, "is_bot": True, "first_name": "Học tập", "username": BOT_USERNAME},
        "text": "…",
    }
    if buttons:
        bot_message["reply_markup"] = {
            "inline_keyboard": [[{"text": label, "callback_data": value}] for label, value in buttons]
        }
    return {
        "update_id": update_id,
        "callback_query": {
            "id": f"cq{update_id}",
            "from": user(chat_id),
            "chat_instance": f"ci{chat_id}",
            "message": bot_message,
            "data": data,
        },
    }


def photo_update(
    update_id: int,
    chat_id: int,
    file_id: str,
    *,
    width: int = 1280,
    height: int = 960,
    file_size: int | None = None,
) -> dict[str, Any]:
    """A photo as Telegram sends it: several sizes, the largest last (ours is the only downloadable one)."""
    sizes = [
        {
            "file_id": f"{file_id}_s",
            "file_unique_id": f"{file_id}_us",
            "width": 90,
            "height": 68,
            "file_size": 1200,
        },
        {"file_id": file_id, "file_unique_id": f"{file_id}_u", "width": width, "height": height},
    ]
    if file_size is not None:
        sizes[1]["file_size"] = file_size
    return {"update_id": update_id, "message": _message(chat_id, photo=sizes)}


def document_update(
    update_id: int,
    chat_id: int,
    file_id: str,
    *,
    file_name: str,
    mime_type: str,
    file_size: int | None = None,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "file_id": file_id,
        "file_unique_id": f"{file_id}_u",
        "file_name": file_name,
        "mime_type": mime_type,
    }
    if file_size is not None:
        document["file_size"] = file_size
    return {"update_id": update_id, "message": _message(chat_id, document=document)}


def contact_update(update_id: int, chat_id: int, phone: str, *, user_id: int | None = None) -> dict[str, Any]:
    contact = {"phone_number": phone, "first_name": "Lan", "user_id": chat_id if user_id is None else user_id}
    return {"update_id": update_id, "message": _message(chat_id, contact=contact)}


def sticker_update(update_id: int, chat_id: int) -> dict[str, Any]:
    sticker = {
        "file_id": "stk1",
        "file_unique_id": "stku1",
        "type": "regular",
        "width": 512,
        "height": 512,
        "is_animated": False,
        "is_video": False,
    }
    return {"update_id": update_id, "message": _message(chat_id, sticker=sticker)}


def voice_update(update_id: int, chat_id: int) -> dict[str, Any]:
    voice = {"file_id": "v1", "file_unique_id": "vu1", "duration": 3}
    return {"update_id": update_id, "message": _message(chat_id, voice=voice)}
