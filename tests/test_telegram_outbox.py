"""The outbox sender against a fake Bot API over real HTTP: priorities, limits, 429, 403, restarts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.outbox import PRIORITY_BULK, OutboxSender, TokenBucket, enqueue
from bot.telegram import TelegramTransport, callback_data, make_bot
from flows.types import Button, Say
from models.settings import Settings, get_settings
from models.tables import ChatIdentity, OutboxMessage, Person
from tests.fakes.telegram_server import FakeTelegram


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    with FakeTelegram().running() as server:
        yield server


def tg_settings(tmp_path: Path, fake: FakeTelegram, **overrides: Any) -> Settings:
    return get_settings(
        data_dir=tmp_path,
        telegram_bot_token=fake.token,
        telegram_api_base_url=fake.base_url,
        telegram_webhook_secret="s3cret",
        public_base_url="",
        **overrides,
    )


def queue(engine: Engine, items: list[tuple[str, str]], *, priority: int = 0, **kwargs: Any) -> None:
    """(chat_id, text) pairs, each its own row keyed by its text."""
    with Session(engine) as session:
        for chat_id, text in items:
            enqueue(
                session,
                channel="telegram",
                chat_id=chat_id,
                message=Say(text),
                idempotency_key=f"k:{text}",
                priority=priority,
                **kwargs,
            )
        session.commit()


def statuses(engine: Engine) -> dict[str, str]:
    with Session(engine) as session:
        return {r.idempotency_key: r.status for r in session.exec(select(OutboxMessage))}


class Clock:
    """Wall time for not_before, pushed forward by the test instead of sleeping."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def with_sender(settings: Settings, engine: Engine, body: Any, **kwargs: Any) -> Any:
    bot = make_bot(settings)
    await bot.initialize()
    try:
        options = {"rate_per_second": 200.0, "per_chat_interval": 0.0, **kwargs}
        sender = OutboxSender(engine=engine, channel="telegram", transport=TelegramTransport(bot), **options)
        return await body(sender)
    finally:
        await bot.shutdown()


async def run_until(sender: OutboxSender, done: Any, limit: float = 20.0) -> None:
    """Run the sender loop until ``done()`` holds (bounded), then stop it gracefully."""
    task = asyncio.create_task(sender.run())
    deadline = time.monotonic() + limit
    try:
        while not await asyncio.to_thread(done):
            assert time.monotonic() < deadline, "sender did not finish in time"
            await asyncio.sleep(0.02)
    finally:
        sender.stop()
        await asyncio.wait_for(task, 15)


def test_replies_go_before_bulk_and_not_before_is_respected(engine, tmp_path, fake) -> None:
    queue(engine, [(str(100 + i), f"bulk {i}") for i in range(5)], priority=PRIORITY_BULK)
    queue(engine, [("9", "reply")])
    queue(engine, [("9", "later")], not_before=datetime.now(UTC) + timedelta(hours=1))

    handled = asyncio.run(with_sender(tg_settings(tmp_path, fake), engine, lambda s: s.run_once()))

    assert handled == 6
    assert fake.sent_texts()[0] == "reply"
    assert sorted(fake.sent_texts()[1:]) == [f"bulk {i}" for i in range(5)]
    assert statuses(engine)["k:later"] == "queued"
    with Session(engine) as session:
        row = session.exec(select(OutboxMessage).where(OutboxMessage.idempotency_key == "k:reply")).one()
        assert row.platform_message_id is not None and row.sent_at is not None and row.attempts == 1


def test_enqueue_is_idempotent(engine) -> None:
    with Session(engine) as session:
        assert (
            enqueue(session, channel="telegram", chat_id="1", message=Say("a"), idempotency_key="x") is True
        )
        assert (
            enqueue(session, channel="telegram", chat_id="1", message=Say("b"), idempotency_key="x") is False
        )
        session.commit()
        assert len(session.exec(select(OutboxMessage)).all()) == 1


def test_transient_failures_are_retried_with_backoff_then_sent_once(engine, tmp_path, fake) -> None:
    fake.fail_next("sendMessage", 2)
    queue(engine, [("5", "hello")])
    clock = Clock()

    async def body(sender: OutboxSender) -> None:
        assert await sender.run_once() == 1  # attempt 1: 500
        assert statuses(engine)["k:hello"] == "queued"
        assert await sender.run_once() == 0  # backing off
        clock.offset += timedelta(seconds=5)
        await sender.run_once()  # attempt 2: 500
        clock.offset += timedelta(seconds=5)
        await sender.run_once()  # attempt 3: sent

    asyncio.run(with_sender(tg_settings(tmp_path, fake), engine, body, now=clock))
    assert [c.status for c in fake.calls_of("sendMessage")] == [500, 500, 200]
    assert fake.sent_texts() == ["hello"]
    with Session(engine) as session:
        row = session.exec(select(OutboxMessage)).one()
        assert (row.status, row.attempts) == ("sent", 3)


def test_gives_up_after_max_attempts(engine, tmp_path, fake) -> None:
    fake.fail_next("sendMessage", 5)
    queue(engine, [("5", "hello")])
    clock = Clock()

    async def body(sender: OutboxSender) -> None:
        for _ in range(3):
            await sender.run_once()
            clock.offset += timedelta(minutes=10)

    asyncio.run(with_sender(tg_settings(tmp_path, fake), engine, body, now=clock, max_attempts=3))
    assert statuses(engine) == {"k:hello": "failed"}
    assert len(fake.calls_of("sendMessage")) == 3


def test_a_429_storm_loses_nothing_duplicates_nothing_and_honours_retry_after(engine, tmp_path, fake) -> None:
    texts = [(str(200 + i % 12), f"nhắc {i}") for i in range(40)]
    queue(engine, texts, priority=PRIORITY_BULK)
    fake.rate_limit_storm(every=9, retry_after=1, times=3)

    async def body(sender: OutboxSender) -> None:
        await run_until(sender, lambda: set(statuses(engine).values()) == {"sent"})

    asyncio.run(
        with_sender(tg_settings(tmp_path, fake), engine, body, rate_per_second=50.0, per_chat_interval=0.05)
    )

    assert sorted(fake.sent_texts()) == sorted(text for _, text in texts)  # each exactly once
    assert fake.violations == []
    assert len(fake.bans) == 3
    delivered = [c.at for c in fake.calls_of("sendMessage") if c.status == 200]
    for banned_at, until in fake.bans:
        after = [at for at in delivered if at > banned_at]
        assert not after or min(after) >= until  # nothing delivered before retry_after ran out


def test_403_marks_the_person_unreachable_and_others_still_get_their_messages(engine, tmp_path, fake) -> None:
    with Session(engine) as session:
        person = Person(name="Hùng")
        session.add(person)
        session.flush()
        session.add(ChatIdentity(channel="telegram", user_id="42", chat_id="42", person_id=person.id))
        session.commit()
    fake.forbid(42)
    queue(engine, [("42", "to blocked"), ("43", "to friend")])

    asyncio.run(with_sender(tg_settings(tmp_path, fake), engine, lambda s: s.run_once()))

    assert statuses(engine) == {"k:to blocked": "unreachable", "k:to friend": "sent"}
    assert fake.sent_texts() == ["to friend"]
    with Session(engine) as session:
        person = session.exec(select(Person)).one()
        assert person.unreachable_at is not None
        assert person.unreachable_reason == "telegram: Forbidden: bot was blocked by the user"


def test_restart_in_the_middle_of_a_broadcast_sends_every_row_exactly_once(engine, tmp_path, fake) -> None:
    texts = [(str(300 + i), f"tháng 11 #{i}") for i in range(40)]
    queue(engine, texts, priority=PRIORITY_BULK)
    settings = tg_settings(tmp_path, fake)

    async def first_run(sender: OutboxSender) -> None:
        await run_until(sender, lambda: len(fake.sent()) >= 10)

    asyncio.run(with_sender(settings, engine, first_run, rate_per_second=40.0))
    after_stop = statuses(engine)
    assert "sending" not in after_stop.values()  # claimed but unsent rows were put back
    assert 10 <= list(after_stop.values()).count("sent") < 40

    async def second_run(sender: OutboxSender) -> None:
        await run_until(sender, lambda: set(statuses(engine).values()) == {"sent"})

    asyncio.run(with_sender(settings, engine, second_run, rate_per_second=40.0))
    assert sorted(fake.sent_texts()) == sorted(text for _, text in texts)


def test_rows_left_sending_by_a_crash_are_never_sent_again(engine, tmp_path, fake) -> None:
    """A row whose platform call was in flight when the process died may have been delivered: a restarted
    sender marks it unconfirmed and does not send it again; the chat's later rows go out at once."""
    queue(engine, [("7", "a"), ("8", "b")])
    settings = tg_settings(tmp_path, fake)

    async def crash(sender: OutboxSender) -> None:
        rows, _ = await asyncio.to_thread(sender._claim, 5)  # claimed for the call, then the process died
        assert len(rows) == 2

    asyncio.run(with_sender(settings, engine, crash))
    assert set(statuses(engine).values()) == {"sending"}
    queue(engine, [("7", "after the crash")])

    async def restart(sender: OutboxSender) -> None:
        await run_until(sender, lambda: statuses(engine)["k:after the crash"] == "sent")

    asyncio.run(with_sender(settings, engine, restart))
    assert statuses(engine) == {"k:a": "unconfirmed", "k:b": "unconfirmed", "k:after the crash": "sent"}
    assert fake.sent_texts() == ["after the crash"]


def test_a_live_senders_rows_are_left_alone_until_their_lease_runs_out(engine, tmp_path, fake) -> None:
    settings = tg_settings(tmp_path, fake)

    async def body(live: OutboxSender) -> None:
        task = asyncio.create_task(live.run())  # alive (PostgreSQL: holds the channel's shared lock)
        await asyncio.sleep(0.5)
        try:
            queue(engine, [("7", "a")])
            rows, _ = await asyncio.to_thread(live._claim, 5)  # the live sender's call is in flight
            assert len(rows) == 1
            later = Clock()

            async def second(sender: OutboxSender) -> None:
                await asyncio.to_thread(sender._start, False)  # another sender lives (PostgreSQL: its lock)
                assert await sender.run_once() == 0
                assert statuses(engine) == {"k:a": "sending"}
                later.offset = timedelta(minutes=10)  # past the lease: its owner is gone
                sender._next_sweep = 0.0
                assert await sender.run_once() == 0
                await asyncio.to_thread(sender._release_lock)

            await with_sender(settings, engine, second, now=later)
        finally:
            live.stop()
            await asyncio.wait_for(task, 10)

    asyncio.run(with_sender(settings, engine, body, poll_seconds=60.0))
    assert statuses(engine) == {"k:a": "unconfirmed"}
    assert fake.sent_texts() == []


def test_a_chat_gets_its_rows_in_order_one_at_a_time(engine, tmp_path, fake) -> None:
    queue(engine, [("1", "one"), ("2", "other"), ("1", "two"), ("1", "three")])
    settings = tg_settings(tmp_path, fake)

    async def body(sender: OutboxSender) -> None:
        rows, _ = await asyncio.to_thread(sender._claim, 10)
        assert sorted(r.payload["text"] for r in rows) == ["one", "other"]  # heads only, one per chat
        again, _ = await asyncio.to_thread(sender._claim, 10)
        assert again == []  # "two" waits while "one" is in flight
        for row in rows:
            await sender._send_row(row)
        assert await sender.run_once() == 2

    asyncio.run(with_sender(settings, engine, body, per_chat_interval=0.2))
    assert fake.sent_texts("1") == ["one", "two", "three"]
    assert fake.violations == []
    arrivals = [c.at for c in fake.calls_of("sendMessage") if str(c.params.get("chat_id")) == "1"]
    assert min(b - a for a, b in zip(arrivals, arrivals[1:], strict=False)) >= 0.2


def test_two_senders_sharing_the_outbox_send_each_row_once_and_each_chat_in_order(engine, tmp_path, fake) -> None:
    """Two senders claim from one outbox at once (on PostgreSQL their claims overlap in time): a row that the
    other claimed first is passed over, and a chat's next row waits while the other has its head in flight."""
    items = [(str(chat), f"c{chat}-{k}") for k in range(5) for chat in range(40)]
    queue(engine, items)
    settings = tg_settings(tmp_path, fake)

    def all_sent() -> bool:
        return set(statuses(engine).values()) == {"sent"}

    async def body(first: OutboxSender) -> None:
        second = OutboxSender(engine=engine, channel="telegram", transport=first.transport,
                              rate_per_second=5000.0, per_chat_interval=0.0, max_in_flight=16)
        other = asyncio.create_task(run_until(second, all_sent))
        await run_until(first, all_sent)
        await other

    asyncio.run(with_sender(settings, engine, body, rate_per_second=5000.0, max_in_flight=16))
    texts = [str(c.params.get("text")) for c in fake.calls_of("sendMessage")]
    assert sorted(texts) == sorted(text for _, text in items)  # every row once, none twice
    for chat in range(40):
        assert fake.sent_texts(str(chat)) == [f"c{chat}-{k}" for k in range(5)]
    assert fake.violations == []


def test_the_per_chat_interval_holds_across_a_restart(engine, tmp_path, fake) -> None:
    queue(engine, [("1", "first"), ("1", "second")])
    settings = tg_settings(tmp_path, fake)

    async def first(sender: OutboxSender) -> None:
        await run_until(sender, lambda: statuses(engine)["k:first"] == "sent")

    asyncio.run(with_sender(settings, engine, first, per_chat_interval=1.0))
    assert statuses(engine)["k:second"] == "queued"  # its chat's interval is written into not_before

    async def second(sender: OutboxSender) -> None:  # a new process: no memory of the first send
        await run_until(sender, lambda: statuses(engine)["k:second"] == "sent")

    asyncio.run(with_sender(settings, engine, second, per_chat_interval=1.0))
    first_at, second_at = (c.at for c in fake.calls_of("sendMessage"))
    assert second_at - first_at >= 0.95


def test_a_retried_row_keeps_its_place_before_the_chats_later_rows(engine, tmp_path, fake) -> None:
    fake.fail_next("sendMessage", 1)
    queue(engine, [("5", "first")])
    queue(engine, [("5", "second")])
    clock = Clock()

    async def body(sender: OutboxSender) -> None:
        assert await sender.run_once() == 1  # "first": 500, backing off; "second" must wait for it
        assert statuses(engine) == {"k:first": "queued", "k:second": "queued"}
        clock.offset += timedelta(seconds=5)
        while await sender.run_once():
            pass

    asyncio.run(with_sender(tg_settings(tmp_path, fake), engine, body, now=clock))
    assert fake.sent_texts() == ["first", "second"]


def test_deferring_chats_keeps_each_chats_latest_time_and_moves_only_queued_rows_forward(engine) -> None:
    """The deferral is one statement over arrays on PostgreSQL and one per chat on SQLite: same result, with a
    chat named twice, a chat whose row is already later, and rows that are not queued."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    later, latest = base + timedelta(seconds=1), base + timedelta(seconds=5)
    queue(engine, [("1", "a1"), ("1", "a2"), ("2", "b1"), ("3", "c1"), ("4", "d1")], not_before=base)
    queue(engine, [("3", "c2")], not_before=base + timedelta(hours=1))
    with Session(engine) as session:
        for row in session.exec(select(OutboxMessage).where(OutboxMessage.idempotency_key == "k:b1")):
            row.status = "sent"
            session.add(row)
        session.commit()
    sender = OutboxSender(engine=engine, channel="telegram", transport=None)  # type: ignore[arg-type]
    with engine.begin() as conn:
        sender._defer_chats(conn, [("1", latest), ("1", later), ("2", latest), ("3", later)])

    with Session(engine) as session:
        got = {r.idempotency_key: r.not_before.replace(tzinfo=UTC) for r in session.exec(select(OutboxMessage))}
    assert got == {"k:a1": latest, "k:a2": latest,  # the later of the two times given for chat 1
                   "k:b1": base,  # sent: left alone
                   "k:c1": later, "k:c2": base + timedelta(hours=1),  # never moved earlier
                   "k:d1": base}  # not named


def test_marking_sent_touches_only_rows_in_flight(engine) -> None:
    queue(engine, [("1", "in flight"), ("2", "settled")])
    with Session(engine) as session:
        rows = {r.idempotency_key: r for r in session.exec(select(OutboxMessage))}
        rows["k:in flight"].status, rows["k:settled"].status = "sending", "unconfirmed"
        session.add_all(rows.values())
        session.commit()
        ids = {key: row.id for key, row in rows.items()}
    at = datetime(2026, 1, 1, 8, tzinfo=UTC)
    sender = OutboxSender(engine=engine, channel="telegram", transport=None,  # type: ignore[arg-type]
                          per_chat_interval=0.0)
    sender._mark_sent([(ids["k:in flight"], "1", at, "77"), (ids["k:settled"], "2", at, None)])

    with Session(engine) as session:
        got = {r.idempotency_key: (r.status, r.platform_message_id, r.sent_at and r.sent_at.replace(tzinfo=UTC))
               for r in session.exec(select(OutboxMessage))}
    assert got == {"k:in flight": ("sent", "77", at), "k:settled": ("unconfirmed", None, None)}


def test_a_claim_writes_the_marks_of_the_calls_before_it_in_its_own_commit(engine) -> None:
    """The marks ride on the sender's next claim: one commit (on SQLite one turn of the write lock) per wave of
    calls, not a claim and a mark commit each. The marked chat's next row goes from the claim after, in order."""
    queue(engine, [("1", "a1"), ("1", "a2"), ("2", "b1")])
    sender = OutboxSender(engine=engine, channel="telegram", transport=None,  # type: ignore[arg-type]
                          per_chat_interval=0.0)
    first, _wait = sender._claim(4)
    assert sorted(c.chat_id for c in first) == ["1", "2"]  # heads only: a2 waits behind a1
    a1 = next(c for c in first if c.chat_id == "1")
    queue(engine, [("3", "c1")])  # a new chat's row: the next claim takes it, and marks a1 in the same commit

    commits: list[object] = []

    def count(conn: object) -> None:
        commits.append(conn)

    event.listen(engine, "commit", count)
    try:
        again, _wait = sender._claim(4, [(a1.id, "1", datetime.now(UTC), "77")])
    finally:
        event.remove(engine, "commit", count)
    assert [c.chat_id for c in again] == ["3"]  # not a2: the claim's reads came before its marks
    assert len(commits) == 1
    assert statuses(engine) == {"k:a1": "sent", "k:a2": "queued", "k:b1": "sending", "k:c1": "sending"}
    with Session(engine) as session:
        assert session.exec(select(OutboxMessage.platform_message_id)
                            .where(OutboxMessage.idempotency_key == "k:a1")).one() == "77"
    after, _wait = sender._claim(4)
    assert [c.chat_id for c in after] == ["1"]
    assert statuses(engine)["k:a2"] == "sending"


def test_the_sender_analyzes_an_outbox_whose_statistics_are_missing(engine) -> None:
    """PostgreSQL: without statistics (a fresh table, a fan-out, autovacuum off or behind) the claim's per-chat
    heads were read by scanning the channel's every row; the sender runs ANALYZE itself."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL statistics")
    from sqlalchemy import insert, text

    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(OutboxMessage.__table__), [  # type: ignore[attr-defined]
            {"idempotency_key": f"bulk:{i}", "channel": "telegram", "chat_id": str(i), "payload": {"text": "x"},
             "priority": PRIORITY_BULK, "status": "queued", "attempts": 0, "not_before": now, "created_at": now}
            for i in range(1500)])

    def analyzed() -> bool:
        with engine.connect() as conn:
            return conn.execute(text("SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables"
                                     " WHERE relid = CAST('outboxmessage' AS regclass)")).scalar() is True

    assert not analyzed()
    sender = OutboxSender(engine=engine, channel="telegram", transport=None)  # type: ignore[arg-type]
    claimed, _wait = sender._claim(4)
    assert len(claimed) == 4
    assert analyzed()


def test_the_claims_statements_read_only_unsent_rows_through_their_indexes_after_a_fan_out(engine) -> None:
    """A chat's sent rows are its whole history (a family answering a season's questions has hundreds): the
    claim's per-chat heads and the deferrals find a chat's unsent rows through ix_outbox_chat with the status
    as an index condition, never reading the sent ones; the page of ready rows goes through the partial ready
    index; the claim's UPDATE and the marks, which name their rows by id, through the primary key. On
    PostgreSQL this holds right after a bulk enqueue, before statistics that know of it, when it once chose
    the ready index for the per-chat statements and read every queued row for each chat."""
    from sqlalchemy import bindparam, text

    from bot.outbox import _CLAIM_HEADS, _CLAIM_PAGE, _CLAIM_UPDATE, _DEFER, _MARK
    from models.db import list_param

    now = datetime.now(UTC)
    history = text(  # 20,000 sent rows, 100 for each of 200 chats; then 3,000 queued rows for other chats
        "INSERT INTO outboxmessage (idempotency_key, channel, chat_id, payload, priority, status, attempts,"
        " not_before, created_at) WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i < :n - 1)"
        " SELECT :prefix || CAST(i AS TEXT), 'telegram', CAST(i % :chats AS TEXT), '{\"text\": \"x\"}', :priority,"
        " :status, 1, :now, :now FROM g").bindparams(bindparam("now", type_=OutboxMessage.__table__.c.not_before.type))
    with engine.begin() as conn:
        conn.execute(history, {"n": 20000, "prefix": "old:", "chats": 200, "priority": 0, "status": "sent", "now": now})
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:  # statistics of the history (the sender's first claim takes them)
            conn.execute(text("ANALYZE outboxmessage"))
            conn.commit()
    with engine.begin() as conn:  # a fan-out, with no ANALYZE after it
        conn.execute(history, {"n": 3000, "prefix": "bulk:", "chats": 3000, "priority": PRIORITY_BULK,
                               "status": "queued", "now": now})
    chats = [str(i) for i in range(0, 400, 8)]  # 25 with history, 25 without
    with engine.connect() as conn:
        dialect = conn.dialect
        page = _CLAIM_PAGE.plan(conn, {"channel": "telegram", "now": now, "limit": 256})
        heads = _CLAIM_HEADS.plan(conn, {"channel": "telegram", "now": now, "chats": list_param(dialect, chats)})
        ids = list(range(20_001, 20_065))  # rows of the fan-out
        claim = _CLAIM_UPDATE.plan(conn, {"ids": list_param(dialect, ids), "now": now, "until": now})
        if dialect.name == "postgresql":
            defer = _DEFER.plan(conn, {"channel": "telegram", "chats": chats, "untils": [now] * len(chats)})
            mark = _MARK.plan(conn, {"ids": ids, "ats": [now] * len(ids), "mids": ["1"] * len(ids)})
        else:
            defer = _DEFER.plan(conn, {"channel": "telegram", "chats": json.dumps([[c, "2030-01-01"] for c in chats])})
            mark = _MARK.plan(conn, {"marks": json.dumps([[i, "2030-01-01", "1"] for i in ids])})

    def on_chat_index_with_status(plan: str) -> bool:
        if dialect.name == "postgresql":  # the Index Cond line under the scan of ix_outbox_chat
            lines = plan.splitlines()
            at = next((n for n, line in enumerate(lines) if "Index Scan" in line and "ix_outbox_chat" in line), None)
            return at is not None and "status" in lines[at + 1] and "Index Cond" in lines[at + 1]
        return "USING INDEX ix_outbox_chat (channel=? AND chat_id=? AND status=?)" in plan

    def by_primary_key(plan: str) -> bool:  # not a scan of a partial index that the status implies
        if dialect.name == "postgresql":
            return "outboxmessage_pkey" in plan and "ix_outbox" not in plan
        return "USING INTEGER PRIMARY KEY" in plan and "ix_outbox" not in plan

    assert "ix_outbox_ready" in page, page
    assert on_chat_index_with_status(heads), heads
    assert on_chat_index_with_status(defer), defer
    assert by_primary_key(claim), claim
    assert by_primary_key(mark), mark


def test_per_chat_interval_and_global_rate_use_the_injected_clock(engine) -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 3))
        now[0] += seconds

    class Recorder:
        sent: list[tuple[float, str]] = []

        async def send(self, chat_id: str, payload: dict[str, Any]) -> str:
            self.sent.append((now[0], chat_id))
            return "1"

    queue(engine, [("1", "a"), ("1", "b"), ("1", "c")])
    transport = Recorder()
    start = datetime.now(UTC)
    sender = OutboxSender(
        engine=engine,
        channel="telegram",
        transport=transport,
        rate_per_second=100.0,
        per_chat_interval=1.0,
        clock=lambda: now[0],
        sleep=sleep,
        now=lambda: start + timedelta(seconds=now[0]),
    )
    assert asyncio.run(sender.run_once()) == 3
    assert [at for at, _ in transport.sent] == [0.0, 1.0, 2.0]

    now[0], slept[:] = 0.0, []
    bucket = TokenBucket(2.0, capacity=2.0, clock=lambda: now[0], sleep=sleep)

    async def take(n: int) -> None:
        for _ in range(n):
            await bucket.acquire()

    asyncio.run(take(6))
    assert now[0] == pytest.approx(2.0)  # 2 at once, then 2 per second


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=0.08), min_size=1, max_size=50))
def test_no_second_holds_more_calls_than_the_rate_even_when_timers_wake_late(lateness) -> None:
    """Timers on a busy machine wake late, and the bucket keeps what a sleep overshot; still no sliding second
    may hold a 31st call at 30/s (Telegram answers it with a 429), and the pace is not slowed beyond the delays."""
    now = [0.0]
    late = iter(lateness * 10)
    delayed = [0.0]

    def delay() -> float:
        d = next(late, 0.0)
        delayed[0] += d
        return d

    async def sleep(seconds: float) -> None:
        now[0] += seconds + delay()

    bucket = TokenBucket(30.0, clock=lambda: now[0], sleep=sleep)
    times: list[float] = []

    async def take() -> None:
        for _ in range(200):
            await bucket.acquire()
            times.append(now[0])
            if len(times) % 7 == 0:  # the caller is busy for a moment now and then
                now[0] += delay()

    asyncio.run(take())
    assert all(times[i + 30] - times[i] >= 1.0 - 1e-5 for i in range(len(times) - 30))
    assert times[-1] <= 199 / 30 + delayed[0] + 1e-6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=0.3), min_size=1, max_size=40), st.integers(0, 39))
def test_calls_that_reach_the_platform_late_do_not_crowd_its_second(delays, stall_at) -> None:
    """A stalled loop or network delivers some calls late, their answers later still; the platform counts
    arrivals, so the bucket starts the next calls' second from the late answers: no sliding second of
    arrivals holds a 31st call."""
    now = [0.0]
    pending: list[tuple[float, Any]] = []  # (when the answer comes back, the call)
    arrivals: list[float] = []

    def advance(to: float) -> None:
        now[0] = max(now[0], to)
        for at, call in sorted(pending, key=lambda p: p[0]):
            if at <= now[0]:
                saved, now[0] = now[0], at
                call.finished()
                now[0] = saved
        pending[:] = [(at, call) for at, call in pending if call.done is None]

    async def sleep(seconds: float) -> None:
        advance(now[0] + seconds)

    bucket = TokenBucket(29.55, clock=lambda: now[0], sleep=sleep)

    async def take() -> None:
        for n in range(150):
            call = await bucket.acquire()
            # 1 ms each way normally; a stall of up to 0.3 s on the way in for some of the calls
            delay = 0.001 + (delays[n % len(delays)] if n % 40 == stall_at else 0.0)
            arrivals.append(now[0] + delay)
            pending.append((now[0] + delay + 0.001, call))

    asyncio.run(take())
    arrivals.sort()
    assert all(arrivals[i + 30] - arrivals[i] > 1.0 for i in range(len(arrivals) - 30))


def test_rendering_through_the_fake(engine, tmp_path, fake) -> None:
    long_value = "assess:gia_dinh:2026:" + "x" * 80
    queue(engine, [])
    with Session(engine) as session:
        enqueue(
            session,
            channel="telegram",
            chat_id="11",
            idempotency_key="btn",
            message=Say(
                "Câu 1/10 — Có góc học tập?",
                buttons=(Button("Có", "yes"), Button("Không", "no"), Button("Để sau", long_value)),
            ),
        )
        enqueue(
            session,
            channel="telegram",
            chat_id="11",
            idempotency_key="phone",
            message=Say("Anh/Chị gửi số điện thoại", request_contact=True),
        )
        enqueue(
            session,
            channel="telegram",
            chat_id="11",
            idempotency_key="long",
            message=Say(("Dòng dài " * 60 + "\n") * 20, buttons=(Button("Xong", "done"),)),
        )
        session.commit()

    asyncio.run(with_sender(tg_settings(tmp_path, fake), engine, lambda s: s.run_once()))

    sent = fake.sent("11")
    keyboard = sent[0]["reply_markup"]["inline_keyboard"]
    assert keyboard == [
        [
            {"text": "Có", "callback_data": "yes"},
            {"text": "Không", "callback_data": "no"},
            {"text": "Để sau", "callback_data": callback_data(long_value)},
        ]
    ]
    assert len(callback_data(long_value).encode()) <= 64
    assert sent[1]["reply_markup"]["one_time_keyboard"] is True
    assert sent[1]["reply_markup"]["keyboard"][0][0] == {"text": "Gửi số điện thoại", "request_contact": True}
    long_parts = sent[2:]
    assert len(long_parts) == 3
    assert all(len(p["text"]) <= 4096 for p in long_parts)
    assert "reply_markup" not in long_parts[0] and "reply_markup" in long_parts[-1]
