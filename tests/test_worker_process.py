"""WORKER_PROCESS=true: `hoctap serve` as a real process whose inbox worker, senders and scheduler run in a
child (bot/worker.py). Real python-telegram-bot traffic against the fake Bot API on 127.0.0.1.

Checked: an update posted to the web process is answered by the worker process; a worker that dies is
started again and goes on; the worker dies with a SIGKILLed parent (never two workers after a restart);
SIGTERM stops both; and the crash harness, short, with the kills hitting the web process.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.fakes import telegram_server as tg
from tests.fakes.telegram_server import FakeTelegram
from tests.livehttp import free_port
from tests.reliability.crash_harness import HEADERS, Config, Server, run, server_env


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _workers(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if "worker" in " ".join(c.cmdline())]


@pytest.fixture
def split_server(db_url: str, tmp_path: Path) -> Iterator[tuple[Server, FakeTelegram]]:
    with FakeTelegram().running() as fake:
        cfg = Config(database_url=db_url, workdir=tmp_path, worker_process=True)
        server = Server(env=server_env(cfg, fake, db_url), cwd=tmp_path, port=free_port(), log=tmp_path / "serve.log")
        server.start()
        try:
            server.wait_ready()
            yield server, fake
        finally:
            server.stop()


def _say(server: Server, update_id: int, chat_id: int, text: str) -> None:
    resp = httpx.post(f"{server.url}/webhooks/telegram", json=tg.text_update(update_id, chat_id, text), headers=HEADERS,
                      timeout=10)
    assert resp.status_code == 200, resp.text


def test_the_worker_process_answers_restarts_and_dies_with_its_parent(split_server) -> None:  # type: ignore[no-untyped-def]
    server, fake = split_server
    assert server.proc is not None
    worker = _wait(lambda: _workers(server.proc.pid), 60, "the worker process")[0]
    _wait(lambda: fake.webhook, 60, "setWebhook from the worker")

    _say(server, 1, 501, "/start")
    _wait(lambda: fake.sent_texts(501), 60, "the reply to /start")

    # a worker that dies is started again, and the update posted meanwhile is answered
    worker.kill()
    worker.wait(10)
    _say(server, 2, 502, "/start")
    again = _wait(lambda: _workers(server.proc.pid), 60, "a new worker process")[0]
    assert again.pid != worker.pid
    _wait(lambda: fake.sent_texts(502), 60, "the reply posted while the worker was down")
    assert len(_workers(server.proc.pid)) == 1

    # SIGKILL of the web process takes the worker with it: a restarted serve never finds an old worker
    server.kill()
    _gone, alive = psutil.wait_procs([again], timeout=10)
    assert not alive, "the worker outlived its parent"


def test_sigterm_stops_both_processes(split_server) -> None:  # type: ignore[no-untyped-def]
    server, fake = split_server
    assert server.proc is not None
    worker = _wait(lambda: _workers(server.proc.pid), 60, "the worker process")[0]
    _wait(lambda: fake.webhook, 60, "setWebhook from the worker (it is running)")
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    _gone, alive = psutil.wait_procs([worker], timeout=10)
    assert not alive
    log = server.log.read_text(encoding="utf-8", errors="replace")
    assert "worker process stopped" in log  # a graceful stop, not the parent-death SIGKILL
    assert "Traceback" not in log


def test_nothing_lost_or_processed_twice_across_sigkills_of_the_web_process(db_url: str, tmp_path: Path) -> None:
    report = run(Config(updates=300, families=30, kills=3, database_url=db_url, workdir=tmp_path,
                        kill_after=(0.1, 1.0), timeout=480.0, schema="migrate", worker_process=True))
    figures = report["figures"]
    assert report["problems"] == [], report["problems"][:10]
    assert report["stats"]["kills"] == 3
    assert figures["updates"] == 300 and figures["inbox_done"] == 300
    assert figures["lost_updates"] == figures["updates_processed_twice"] == figures["replies_lost"] == 0
    assert figures["duplicates_sent"] == figures["chats_out_of_order"] == 0
    assert report["log_leaks"] == []
