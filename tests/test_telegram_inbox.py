"""The inbox: stored once per update, processed once, in order per chat, done in the same transaction."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.inbox import Inbound, InboxWorker, store_update
from bot.outbox import enqueue
from flows.types import Event, Say
from models.tables import ChatIdentity, InboxUpdate, OutboxMessage, Person


class Recorder:
    """A stand-in for bot.uow.process_event: records events, queues one reply, can fail on demand."""

    def __init__(self, fail_times: int = 0) -> None:
        self.seen: list[tuple[str, str]] = []
        self.fail_times = fail_times

    def __call__(
        self,
        session: Session,
        *,
        channel: str,
        chat_id: str,
        event: Event,
        now: datetime,
        settings: Any = None,
        idempotency_base: str | None = None,
        **_: Any,
    ) -> list[Say]:
        say = Say(f"ok {event.text}")
        enqueue(
            session, channel=channel, chat_id=chat_id, message=say, idempotency_key=f"{idempotency_base}:0"
        )
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("boom after writing")  # the transaction must roll back the outbox row
        self.seen.append((chat_id, event.text))
        return [say]


async def normalise(payload: dict[str, Any]) -> Inbound:
    if payload.get("ignore"):
        return Inbound()
    if payload.get("refuse"):
        return Inbound(chat_id=str(payload["chat"]), replies=(Say("không nhận"),))
    return Inbound(chat_id=str(payload["chat"]), event=Event(kind="text", text=payload["text"]))


def worker(engine: Engine, process: Recorder, **kwargs: Any) -> InboxWorker:
    w = InboxWorker(engine=engine, process=process, backoff=lambda n: 0.0, **kwargs)
    w.add_channel("telegram", normalise, ordered_ids=True)
    return w


def put(engine: Engine, update_id: int, chat: int, text: str = "", **extra: Any) -> bool:
    with Session(engine) as session:
        new = store_update(session, "telegram", update_id, str(chat), {"chat": chat, "text": text, **extra})
        session.commit()
    return new


def rows(engine: Engine) -> list[InboxUpdate]:
    with Session(engine) as session:
        return list(session.exec(select(InboxUpdate).order_by(InboxUpdate.id)))


def outbox(engine: Engine) -> list[OutboxMessage]:
    with Session(engine) as session:
        return list(session.exec(select(OutboxMessage).order_by(OutboxMessage.id)))


def test_store_update_is_unique_per_channel_and_update_id(engine: Engine) -> None:
    assert put(engine, 5, 1, "a") is True
    assert put(engine, 5, 1, "changed") is False
    with Session(engine) as session:
        assert store_update(session, "zalo", 5, "1", {"x": 1}) is True
        session.commit()
    stored = rows(engine)
    assert [(r.channel, r.update_id, r.payload.get("text")) for r in stored] == [
        ("telegram", "5", "a"),
        ("zalo", "5", None),
    ]


def test_out_of_order_and_duplicate_deliveries_are_processed_once_in_update_order(engine: Engine) -> None:
    process = Recorder()
    for update_id, chat, said in [(12, 1, "c"), (10, 1, "a"), (13, 2, "x"), (11, 1, "b"), (10, 1, "a")]:
        put(engine, update_id, chat, said)

    assert asyncio.run(worker(engine, process).run_once()) == 4
    assert [text for chat, text in process.seen if chat == "1"] == ["a", "b", "c"]
    assert [text for chat, text in process.seen if chat == "2"] == ["x"]
    assert {r.status for r in rows(engine)} == {"done"}
    assert len(outbox(engine)) == 4

    put(engine, 11, 1, "b")  # a late redelivery
    assert asyncio.run(worker(engine, process).run_once()) == 0
    assert len(process.seen) == 4


def test_a_crash_inside_the_transaction_leaves_the_row_pending_and_writes_nothing(engine: Engine) -> None:
    process = Recorder(fail_times=1)
    put(engine, 1, 7, "first")
    put(engine, 2, 7, "second")
    w = worker(engine, process)

    assert asyncio.run(w.run_once()) == 0  # the head row failed; the chat's later row waits behind it
    assert [(r.status, r.attempts) for r in rows(engine)] == [("pending", 1), ("pending", 0)]
    assert "RuntimeError" in (rows(engine)[0].error or "")
    assert outbox(engine) == []

    assert asyncio.run(w.run_once()) == 2
    assert process.seen == [("7", "first"), ("7", "second")]
    assert [r.idempotency_key for r in outbox(engine)] == ["telegram:1:0", "telegram:2:0"]


def test_a_row_that_keeps_failing_is_given_up_and_the_chat_moves_on(engine: Engine) -> None:
    process = Recorder(fail_times=3)
    put(engine, 1, 7, "poison")
    put(engine, 2, 7, "next")
    w = worker(engine, process, max_attempts=3)
    for _ in range(3):
        asyncio.run(w.run_once())
    assert [r.status for r in rows(engine)] == ["failed", "done"]
    assert process.seen == [("7", "next")]


def test_channel_replies_and_ignored_updates(engine: Engine) -> None:
    process = Recorder()
    put(engine, 1, 3, refuse=True)
    put(engine, 2, 3, ignore=True)
    asyncio.run(worker(engine, process).run_once())
    assert process.seen == []
    assert [r.status for r in rows(engine)] == ["done", "ignored"]
    assert [(m.idempotency_key, m.chat_id, m.payload["text"]) for m in outbox(engine)] == [
        ("telegram:1:channel:0", "3", "không nhận")
    ]


def test_rows_of_unknown_channels_are_left_alone(engine: Engine) -> None:
    with Session(engine) as session:
        store_update(session, "web", "w1", "s1", {"chat": 1, "text": "hi"})
        session.commit()
    assert asyncio.run(worker(engine, Recorder()).run_once()) == 0
    assert [r.status for r in rows(engine)] == ["pending"]


def test_another_channels_backlog_does_not_hide_this_channels_rows(engine: Engine) -> None:
    # the oldest pending rows belong to a channel this worker does not serve (another process's): more of
    # them than the worker reads to find its next chats, so it must look again with its own channels
    with Session(engine) as session:
        for i in range(300):
            store_update(session, "web", f"w{i}", f"s{i}", {"chat": i, "text": "hi"})
        session.commit()
    put(engine, 1, 7, "một")
    put(engine, 2, 8, "hai")
    process = Recorder()
    assert asyncio.run(worker(engine, process, batch_size=4, min_batch=4).run_once()) == 2
    assert sorted(process.seen) == [("7", "một"), ("8", "hai")]
    assert sum(r.status == "pending" for r in rows(engine)) == 300


class Overlap(Recorder):
    """Records how many batches' rows were being processed at the same moment (threads)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0

    def __call__(self, session: Session, **kwargs: Any) -> list[Say]:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(0.002)  # a row's work: long enough for another batch's row to start meanwhile
            return super().__call__(session, **kwargs)
        finally:
            with self.lock:
                self.active -= 1


def test_batches_commit_at_once_on_postgresql_and_each_chat_stays_in_order(engine: Engine) -> None:
    update = 0
    for turn in range(3):
        for chat in range(60):
            update += 1
            put(engine, update, 1000 + chat, f"{chat}:{turn}")
    process = Overlap()
    assert asyncio.run(worker(engine, process, batch_size=8, min_batch=8).run_once()) == 180
    by_chat: dict[str, list[str]] = {}
    for chat, said in process.seen:
        by_chat.setdefault(chat, []).append(said)
    assert by_chat == {str(1000 + c): [f"{c}:{t}" for t in range(3)] for c in range(60)}
    if engine.dialect.name == "postgresql":
        assert process.most > 1  # several batches at once, on their own connections
    else:
        assert process.most == 1  # SQLite: one writer


def test_postgresql_inbox_statistics_follow_a_wave(engine: Engine) -> None:
    # the head queries' plans depend on the share of pending rows: the worker refreshes the statistics
    # itself after enough handled rows (autovacuum may lag a wave by a minute, or be off)
    if engine.dialect.name != "postgresql":
        pytest.skip("ANALYZE is PostgreSQL's")

    def analyzed() -> int:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            return conn.execute(text(
                "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'inboxupdate'"
                " AND schemaname = current_schema()")).scalar_one()

    def settled(expected: int, tries: int = 50) -> int:
        for _ in range(tries):  # the statistics counters reach other sessions within a moment
            if (count := analyzed()) >= expected:
                return count
            time.sleep(0.1)
        return analyzed()

    before = analyzed()
    for i in range(1, 5):
        put(engine, i, 100 + i, "x")
    w = worker(engine, Recorder(), analyze_rows=5, analyze_seconds=0.0)
    assert asyncio.run(w.run_once()) == 4
    assert settled(before + 1, tries=20) == before  # 4 handled rows: not yet
    put(engine, 5, 105, "x")
    put(engine, 6, 106, "x")
    assert asyncio.run(w.run_once()) == 2
    assert settled(before + 1) == before + 1  # 6 handled rows: analysed once, the wave included
    with engine.connect() as conn:
        reltuples = conn.execute(text("SELECT reltuples FROM pg_class WHERE oid = 'inboxupdate'::regclass")).scalar()
    assert reltuples == 6


def test_writing_again_clears_unreachable(engine: Engine) -> None:
    with Session(engine) as session:
        person = Person(name="Lan", unreachable_reason="telegram: blocked")
        person.unreachable_at = datetime(2026, 1, 5, tzinfo=__import__("datetime").UTC)
        session.add(person)
        session.flush()
        session.add(ChatIdentity(channel="telegram", user_id="9", chat_id="9", person_id=person.id))
        session.commit()
    put(engine, 1, 9, "xin chào")
    asyncio.run(worker(engine, Recorder()).run_once())
    with Session(engine) as session:
        person = session.exec(select(Person)).one()
        assert person.unreachable_at is None
        assert person.unreachable_reason is None


def test_woken_worker_processes_new_rows(engine: Engine) -> None:
    process = Recorder()
    w = worker(engine, process, poll_seconds=30.0)

    async def scenario() -> None:
        task = asyncio.create_task(w.run())
        await asyncio.sleep(0)
        await asyncio.to_thread(put, engine, 1, 4, "hello")
        w.wake()
        for _ in range(200):
            if process.seen:
                break
            await asyncio.sleep(0.01)
        w.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert process.seen == [("4", "hello")]
