"""The FakeTelegram of the tests (tests/fakes/telegram_server.py) as a process of its own, for benchmarks.

    python bench/tgfake.py --port 8081 [--rate-limit 30] [--per-chat 1.0]

Same Bot API handlers; it records only (method, chat_id, monotonic time, status) of each call (not the
params, to stay small over long runs) and answers ``GET /_bench/stats`` with them (``GET /_bench/count``: how many), ``POST /_bench/reset``
to forget. ``--rate-limit R``: like Telegram, sendMessage beyond R per second (sliding 1 s window) answers
429 with retry_after; ``--per-chat S``: a second message to one chat within S seconds answers 429 too.
Monotonic times are comparable across processes on Linux (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes import telegram_server as tgs  # noqa: E402
from tests.fakes.telegram_server import Call, FakeTelegram  # noqa: E402


class _Record(list):  # type: ignore[type-arg]
    """Stands in for FakeTelegram.calls: keeps the Call objects only until their status is known."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, float, Any]] = []

    def append(self, call: Call) -> None:  # type: ignore[override]
        self.rows.append((call.method, str(call.params.get("chat_id", "")), call.at, call))

    def export(self) -> list[list[Any]]:
        out = []
        for method, chat, at, call in self.rows:
            out.append([method, chat, at, call.status if isinstance(call, Call) else call])
        return out


class BenchFake(FakeTelegram):
    def __init__(self, rate_limit: float = 0.0, per_chat: float = 0.0) -> None:
        super().__init__()
        self.calls = _Record()  # type: ignore[assignment]
        self.rate_limit = rate_limit
        self.per_chat = per_chat
        self._window: collections.deque[float] = collections.deque()
        self._last_chat: dict[str, float] = {}
        self.limited = 0
        self.refusals: list[dict[str, Any]] = []

    async def _m_sendMessage(self, call: Call) -> Response:
        if self.rate_limit or self.per_chat:
            chat = str(call.params.get("chat_id"))
            now = call.at
            window = self._window
            while window and window[0] <= now - 1.0:
                window.popleft()
            last = self._last_chat.get(chat)
            over_rate = bool(self.rate_limit and len(window) >= self.rate_limit)
            if over_rate or (self.per_chat and last is not None and now - last < self.per_chat):
                self.limited += 1
                # why and when, for the report: the window's first accepted call and this one's lateness
                self.refusals.append({"at": now, "why": "rate" if over_rate else "chat",
                                      "window_first": window[0] if window else None,
                                      "chat_gap": None if last is None else now - last})
                return tgs._retry_after(1)
            window.append(now)
            self._last_chat[chat] = now
        return await super()._m_sendMessage(call)

    def stats(self) -> dict[str, Any]:
        rows = self.calls.export()  # type: ignore[attr-defined]
        self.calls.rows = [(m, c, a, s) for m, c, a, s in rows]  # type: ignore[attr-defined]
        return {"calls": rows, "limited": self.limited, "refusals": self.refusals}


def lean(port: int) -> None:
    """``--lean``: a raw asyncio HTTP/1.1 server that answers getMe and sendMessage (always OK) and nothing
    else; no framework, so that it is not the bottleneck of a throughput run (the Starlette fake above tops
    out at a few hundred calls/s on a loaded 2-core machine). Same /_bench/stats, /_bench/count and /_bench/reset."""
    import asyncio
    import itertools
    import json
    import re

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    rows: list[list[Any]] = []
    ids = itertools.count(1000)
    chat_re = re.compile(rb"chat_id(?:=|\"\s*:\s*\"?)(-?\d+)")
    me = json.dumps({"ok": True, "result": {"id": tgs.BOT_ID, "is_bot": True, "first_name": "Học tập",
                                            "username": tgs.BOT_USERNAME}}).encode()

    def reply(body: bytes, status: str = "200 OK") -> bytes:
        return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                .encode() + body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, _, headers = head.partition(b"\r\n")
                length = 0
                for h in headers.split(b"\r\n"):
                    if h[:15].lower() == b"content-length:":
                        length = int(h[15:])
                body = await reader.readexactly(length) if length else b""
                path = line.split(b" ")[1]
                now = time.monotonic()
                if path.endswith(b"/sendMessage"):
                    m = chat_re.search(body)
                    chat = m.group(1).decode() if m else "0"
                    rows.append(["sendMessage", chat, now, 200])
                    writer.write(reply(json.dumps({"ok": True, "result": {
                        "message_id": next(ids), "date": int(time.time()),
                        "chat": {"id": int(chat), "type": "private", "first_name": "Lan"}, "text": "…"}}).encode()))
                elif path.endswith(b"/getMe"):
                    writer.write(reply(me))
                elif path.startswith(b"/_bench/count"):
                    writer.write(reply(json.dumps({"calls": len(rows)}).encode()))
                elif path.startswith(b"/_bench/stats"):
                    writer.write(reply(json.dumps({"calls": rows, "limited": 0}).encode()))
                elif path.startswith(b"/_bench/reset"):
                    rows.clear()
                    writer.write(reply(b'{"ok": true}'))
                elif path.startswith(b"/bot"):
                    method = path.rsplit(b"/", 1)[-1].decode()
                    rows.append([method, "", now, 200])
                    writer.write(reply(b'{"ok": true, "result": true}'))
                else:
                    writer.write(reply(b'{"ok": false}', "404 Not Found"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def run() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate-limit", type=float, default=0.0)
    parser.add_argument("--per-chat", type=float, default=0.0)
    parser.add_argument("--lean", action="store_true", help="raw asyncio server, no limits (throughput runs)")
    args = parser.parse_args()
    if args.lean:
        lean(args.port)
        return 0
    fake = BenchFake(args.rate_limit, args.per_chat)

    async def stats(_request: Request) -> Response:
        return JSONResponse(fake.stats())

    async def count(_request: Request) -> Response:
        return JSONResponse({"calls": len(fake.calls.rows)})  # type: ignore[attr-defined]

    async def reset(_request: Request) -> Response:
        fake.calls.rows = []  # type: ignore[attr-defined]
        fake.limited = 0
        fake.refusals = []
        return JSONResponse({"ok": True, "at": time.monotonic()})

    app = Starlette(routes=[
        Route("/_bench/stats", stats, methods=["GET"]),
        Route("/_bench/count", count, methods=["GET"]),
        Route("/_bench/reset", reset, methods=["POST"]),
        Route("/bot{token}/{method}", fake._api, methods=["GET", "POST"]),
        Route("/file/bot{token}/{path:path}", fake._file, methods=["GET"]),
    ])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
