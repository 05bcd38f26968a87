"""`hoctap serve`: migrate, seed the demo when nothing is configured, run uvicorn with everything in it."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from models import migrate
from models.db import make_engine
from models.settings import Settings

log = logging.getLogger("hoctap")

KEEP_ALIVE_SECONDS = 65


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(settings: Settings, *, host: str, port: int, demo: bool = True) -> int:
    from webhook.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = make_engine(settings.db_url)
    migrate.upgrade(engine)
    settings.media_path.mkdir(parents=True, exist_ok=True)
    if demo and settings.demo:
        try:
            from webhook.demo import ensure_demo

            ensure_demo(engine, settings)
        except ImportError:
            pass
    base = f"http://{host}:{port}"
    channels = {
        "Telegram": settings.telegram_enabled,
        "Zalo Bot": settings.zalo_enabled,
        "Zalo OA": settings.zalo_oa_enabled,
    }
    print(f"hoctap: {base}/  (simulator {base}/simulator, review {base}/review, API docs {base}/docs)")
    for name, on in channels.items():
        print(f"  {name}: {'on' if on else 'off (no token)'}")
    # no access log: a line per webhook call is a measurable share of the request path, and URLs are not
    # what an operator needs from these logs
    # keep-alive well beyond uvicorn's 5 s: Telegram and Zalo reuse their webhook connections, and a server that
    # closes an idle one just as the platform sends on it turns a delivery into a connection error (seen in the
    # load test, tests/reliability/load.py); 65 s is what common reverse proxies use
    worker = None
    if settings.worker_processes:
        from bot.worker import WorkerProcess

        print(f"  background work: {settings.worker_processes} process(es) of its own "
              f"(WORKER_PROCESSES={settings.worker_processes})")
        worker = WorkerProcess(settings, processes=settings.worker_processes)
        # uvicorn re-raises the SIGTERM it caught once it has shut down; with the default handler that would
        # end this process before the `finally` below stops the worker gracefully
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        worker.start()
    try:
        app = create_app(settings, engine=engine, inbox_wake=worker.wake if worker is not None else None,
                         settle=True)
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False,
                    timeout_keep_alive=KEEP_ALIVE_SECONDS)
    finally:
        if worker is not None:
            worker.stop()
    return 0
