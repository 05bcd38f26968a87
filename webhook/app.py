"""The FastAPI application: webhooks, review pages, JSON API, simulator. Built by create_app()."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import Engine
from starlette.types import Receive, Scope, Send

from bot import zalo, zalo_oa
from bot.runtime import Runtime, settle_heap
from models.db import make_engine
from models.settings import Settings, get_settings
from webhook import api, review, simulator, telegram_routes, zalo_routes

STATIC_DIR = Path(__file__).parent / "static"

FastRoute = Callable[[FastAPI, Scope, Receive, Send], Awaitable[None]]
# POST routes answered by a bare ASGI handler before FastAPI's middleware stack and router: the webhooks that
# take every family's every answer at the campaign's peaks (see webhook/telegram_routes.py)
FAST_POSTS: dict[str, FastRoute] = {telegram_routes.PATH: telegram_routes.telegram_webhook}


class HoctapApp(FastAPI):
    """FastAPI, with the routes of FAST_POSTS dispatched before its middleware and routing."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            root = scope.get("root_path", "") or self.root_path
            if root and path.startswith(root):  # mounted below a prefix (uvicorn --root-path)
                path = path[len(root):]
            handler = FAST_POSTS.get(path)
            if handler is not None:
                await handler(self, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    background: bool = True,
    inbox_wake: Callable[[], None] | None = None,
    settle: bool = False,
) -> FastAPI:
    """Build the app; `background=False` runs no workers (tests drive them explicitly). With `inbox_wake`
    the workers run in another process (bot/worker.py) and stored updates call it to wake that process.
    `settle`: the process is a server's (`hoctap serve`): freeze its start-up objects once started
    (bot.runtime.settle_heap)."""
    settings = settings or get_settings()
    engine = engine or make_engine(settings.db_url)
    runtime = Runtime(settings=settings, engine=engine, external_wake=inbox_wake)
    if inbox_wake is not None:
        background = False
    zalo.register(runtime)  # Zalo Bot Platform, when ZALO_BOT_TOKEN is set
    zalo_oa.register(runtime)  # Zalo Official Account, when ZALO_OA_APP_ID and ZALO_OA_SECRET_KEY are set

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if background:
            await runtime.start()
        if settle:
            settle_heap()
        try:
            yield
        finally:
            if background:
                await runtime.stop()

    app = HoctapApp(title="hoctap", version="0.1.0", lifespan=lifespan, docs_url="/docs")
    app.state.settings = settings
    app.state.engine = engine
    app.state.runtime = runtime

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, object]:
        return {
            "ok": True,
            "channels": {
                "telegram": settings.telegram_enabled,
                "zalo": settings.zalo_enabled,
                "zalo_oa": settings.zalo_oa_enabled,
                "web": True,
            },
        }

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for module in (zalo_routes, simulator, review, api):
        app.include_router(module.router)
    return app
