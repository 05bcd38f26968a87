"""Webhook backpressure (bot.inbox.Backpressure): a webhook's answer waits while work is queued behind it."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from bot.inbox import Backpressure, store_updates
from bot.outbox import PRIORITY_BULK, enqueue
from flows.types import Say
from models.tables import InboxUpdate
from tests.fakes import telegram_server as tg
from tests.fakes.telegram_server import FakeTelegram
from tests.test_telegram_e2e import HEADERS, tg_settings
from tests.test_telegram_e2e import fake as fake  # noqa: F401 - the fixture
from webhook.app import create_app

INBOX = InboxUpdate.__table__  # type: ignore[attr-defined]


def pending(engine: Engine, n: int, *, start: int = 0) -> None:
    """``n`` pending rows of a channel no worker here takes (they stay pending)."""
    with Session(engine) as session:
        store_updates(session, [("other", start + i, str(i % 50), {"n": i}) for i in range(n)])
        session.commit()


def queued(engine: Engine, n: int, *, priority: int = 0, prefix: str = "reply") -> None:
    with Session(engine) as session:
        for i in range(n):
            enqueue(session, channel="telegram", chat_id=str(i), message=Say("x"), idempotency_key=f"{prefix}:{i}",
                    priority=priority)
        session.commit()


def done(engine: Engine, n: int | None = None) -> None:
    """Mark the first ``n`` of those rows (all when None) done."""
    with engine.begin() as conn:
        ids = [row[0] for row in conn.execute(INBOX.select().with_only_columns(INBOX.c.id).where(
            INBOX.c.status == "pending", INBOX.c.channel == "other").order_by(INBOX.c.id).limit(n))]
        conn.execute(update(INBOX).where(INBOX.c.id.in_(ids)).values(status="done"))


def test_the_queues_are_pending_updates_and_queued_replies_not_a_campaigns_rows(engine: Engine) -> None:
    pending(engine, 30)
    queued(engine, 20)
    queued(engine, 50, priority=PRIORITY_BULK, prefix="campaign")  # a reminder wave's queue is meant to last
    assert Backpressure(engine).queued() == 50
    done(engine, 10)
    assert Backpressure(engine).queued() == 40
    # each queue is counted only as far as the longest wait: low + most / per_row = 5 + 10 rows
    assert Backpressure(engine, low=5, per_row=0.1, most=1.0).queued() == 15 + 15


def test_the_wait_grows_beyond_the_low_mark_up_to_the_most_and_goes_with_the_work(engine: Engine) -> None:
    pressure = Backpressure(engine, low=10, per_row=0.01, most=0.15, every=0.0)

    async def eventually(expected: float) -> None:
        deadline = time.monotonic() + 10
        while (got := pressure.delay()) != pytest.approx(expected):
            assert time.monotonic() < deadline, f"wait {got}, expected {expected}"
            await asyncio.sleep(0.01)

    async def story() -> None:
        assert pressure.delay() == 0.0  # no figure before the first look
        await eventually(0.0)
        pending(engine, 14)
        await eventually(0.04)  # 4 rows beyond the mark
        pending(engine, 100, start=1000)
        await eventually(0.15)  # at most
        done(engine)
        await eventually(0.0)

    asyncio.run(story())

    async def again() -> None:  # a new event loop (an app stopped and started again) looks afresh
        await eventually(0.0)
        pending(engine, 20, start=5000)
        await eventually(0.1)

    asyncio.run(again())


def test_a_webhook_answer_waits_while_work_is_queued_behind_it(engine: Engine, tmp_path, fake: FakeTelegram) -> None:
    """Through the real app: the update is stored and processed as ever, its answer comes later when 11,000
    rows are pending (the defaults: 1,000 rows free, then 10 µs per row: 0.1 s), and at once again when they
    are done."""
    pending(engine, 11_000)
    ids = iter(range(1, 1000))
    with TestClient(create_app(tg_settings(tmp_path, fake), engine=engine)) as client:

        def answer_seconds() -> float:
            started = time.perf_counter()
            resp = client.post("/webhooks/telegram", json=tg.text_update(next(ids), 501, "/start"), headers=HEADERS)
            assert resp.status_code == 200
            return time.perf_counter() - started

        def eventually(check: object) -> None:
            deadline = time.monotonic() + 15
            while not check(answer_seconds()):  # type: ignore[operator]
                assert time.monotonic() < deadline, "timed out"
                time.sleep(0.05)

        eventually(lambda seconds: seconds >= 0.1)
        done(engine)
        eventually(lambda seconds: seconds < 0.05)
        deadline = time.monotonic() + 15
        while not fake.sent_texts(501):  # the posted updates were processed and answered as ever
            assert time.monotonic() < deadline, "no reply"
            time.sleep(0.05)
