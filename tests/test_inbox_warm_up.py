"""The inbox worker loads the flows' data before its first pass (bot.uow.warm_up), not inside its first
batch, where SQLite's write lock is held and the webhook's inserts wait (bench/inbound.py measured ~130 ms)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlmodel import Session

from bot.inbox import InboxWorker
from bot.uow import ensure_commune
from bot.view_db import criteria_sets
from flows import communes
from flows.i18n import catalog
from models.db import _PREPARED
from tests.review_seed import GIA_LOC


def test_the_inbox_worker_loads_the_flows_data_before_its_first_pass(engine, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        ensure_commune(session, GIA_LOC)  # its province's and its own local overlays: a second set of sets
        session.commit()
    criteria_sets.cache_clear()
    catalog.cache_clear()
    communes._index.cache_clear()
    worker = InboxWorker(engine=engine, poll_seconds=0.05)

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        for _ in range(400):
            if "warmed up" in caplog.text:
                break
            await asyncio.sleep(0.05)
        worker.stop()
        await task

    with caplog.at_level(logging.INFO, logger="hoctap.inbox"):
        asyncio.run(go())
    assert "inbox: warmed up" in caplog.text
    assert catalog.cache_info().currsize == 1
    assert criteria_sets.cache_info().currsize == 2  # the national sets, and with the commune's overlays
    assert communes._index.cache_info().currsize == 1
    statements = list(_PREPARED)
    assert statements and all(engine.dialect in p._compiled for p in statements)
