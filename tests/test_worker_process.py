"""WORKER_PROCESSES=1 and 2: `hoctap serve` as a real process whose background work runs in children
(bot/worker.py): one child with the inbox worker, senders and scheduler, or one with the inbox worker and one
with the senders and scheduler. Real python-telegram-bot traffic against the fake Bot API on 127.0.0.1.

Checked: an update posted to the web process is answered through the children; a child that dies is started
again and the work goes on; the children die with a SIGKILLed parent (never an old worker next to a restarted
serve); SIGTERM stops them gracefully; and the crash harness, short, with the kills hitting the web process.
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

ROLES = {1: ["all"], 2: ["inbox", "outbox"]}


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _workers(pid: int) -> dict[str, psutil.Process]:
    """The worker children of serve by role."""
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for child in children:
        try:
            cmd = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "worker" in cmd:
            out[cmd[cmd.index("--role") + 1]] = child
    return out


def _all_workers(server: Server, n: int) -> dict[str, psutil.Process]:
    assert server.proc is not None
    return _wait(lambda: (w := _workers(server.proc.pid)) and sorted(w) == sorted(ROLES[n]) and w, 60,
                 f"the worker processes {ROLES[n]}")


@pytest.fixture(params=[1, 2], ids=["one-child", "two-children"])
def split_server(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Iterator[tuple[Server, FakeTelegram, int]]:
    n = request.param
    with FakeTelegram().running() as fake:
        cfg = Config(database_url=db_url, workdir=tmp_path, worker_processes=n)
        server = Server(env=server_env(cfg, fake, db_url), cwd=tmp_path, port=free_port(), log=tmp_path / "serve.log")
        server.start()
        try:
            server.wait_ready()
            yield server, fake, n
        finally:
            server.stop()


def _say(server: Server, update_id: int, chat_id: int, text: str) -> None:
    resp = httpx.post(f"{server.url}/webhooks/telegram", json=tg.text_update(update_id, chat_id, text), headers=HEADERS,
                      timeout=10)
    assert resp.status_code == 200, resp.text


def test_the_workers_answer_restart_and_die_with_their_parent(split_server) -> None:  # type: ignore[no-untyped-def]
    server, fake, n = split_server
    workers = _all_workers(server, n)
    _wait(lambda: fake.webhook, 60, "setWebhook from the worker")

    _say(server, 1, 501, "/start")
    _wait(lambda: fake.sent_texts(501), 60, "the reply to /start")
    for role, worker in workers.items():  # on uvloop, as the web process (bot/worker.py _loop_factory)
        assert any("uvloop" in m.path for m in worker.memory_maps()), f"the {role} worker runs without uvloop"

    # each child that dies is started again, and what is posted meanwhile is answered
    for update_id, role in enumerate(ROLES[n], start=2):
        chat = 500 + update_id
        workers[role].kill()
        workers[role].wait(10)
        _say(server, update_id, chat, "/start")
        workers = _wait(lambda r=role, old=workers[role].pid: (w := _workers(server.proc.pid)) and r in w  # type: ignore[union-attr]
                        and w[r].pid != old and w, 60, f"a new {role} worker")
        _wait(lambda c=chat: fake.sent_texts(c), 60, f"the reply posted while the {role} worker was down")
    assert sorted(_workers(server.proc.pid)) == sorted(ROLES[n])  # type: ignore[union-attr]

    # SIGKILL of the web process takes the workers with it: a restarted serve never finds an old worker
    server.kill()
    _gone, alive = psutil.wait_procs(list(workers.values()), timeout=10)
    assert not alive, "a worker outlived its parent"


def test_sigterm_stops_every_process(split_server) -> None:  # type: ignore[no-untyped-def]
    server, fake, n = split_server
    assert server.proc is not None
    workers = _all_workers(server, n)
    _wait(lambda: fake.webhook, 60, "setWebhook from the worker (it is running)")
    time.sleep(1.0)  # the outbox child has no such sign; it starts with the other
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    _gone, alive = psutil.wait_procs(list(workers.values()), timeout=10)
    assert not alive
    log = server.log.read_text(encoding="utf-8", errors="replace")
    for role in ROLES[n]:
        assert f"worker process {role} stopped" in log  # a graceful stop, not the parent-death SIGKILL
    assert log.count("start-up objects frozen") == 1 + n  # the web process and each worker (settle_heap)
    assert "Traceback" not in log


@pytest.mark.parametrize("processes", [1, 2])
def test_nothing_lost_or_processed_twice_across_sigkills_of_the_web_process(
    db_url: str, tmp_path: Path, processes: int
) -> None:
    report = run(Config(updates=300, families=30, kills=3, database_url=db_url, workdir=tmp_path,
                        kill_after=(0.1, 1.0), timeout=480.0, schema="migrate", worker_processes=processes))
    figures = report["figures"]
    assert report["problems"] == [], report["problems"][:10]
    assert report["stats"]["kills"] == 3
    assert figures["updates"] == 300 and figures["inbox_done"] == 300
    assert figures["lost_updates"] == figures["updates_processed_twice"] == figures["replies_lost"] == 0
    assert figures["duplicates_sent"] == figures["chats_out_of_order"] == 0
    assert report["log_leaks"] == []


def test_an_inbox_worker_alone_in_its_process_commits_larger_batches(engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """bot/runtime.py: larger batches paid in a `hoctap worker` process and lost in serve's own (measured)."""
    import asyncio

    from bot.runtime import Runtime
    from models.settings import get_settings

    settings = get_settings(data_dir=tmp_path)

    async def sizing(worker_process: bool) -> tuple[float, int]:
        runtime = Runtime(settings=settings, engine=engine, worker_process=worker_process)
        await runtime.start(("inbox",))
        try:
            assert runtime.inbox is not None
            return runtime.inbox.batch_seconds, runtime.inbox.min_batch
        finally:
            await runtime.stop()

    alone, shared = asyncio.run(sizing(True)), asyncio.run(sizing(False))
    assert alone[0] > shared[0] and alone[1] > shared[1]
