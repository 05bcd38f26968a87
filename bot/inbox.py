"""The inbox, whatever the channel: raw updates stored once, then processed in order per chat.

A webhook route (or a poller) calls ``store_update`` and commits: a redelivered update hits the unique
(channel, update_id) key and is stored once. ``InboxWorker`` then, for each pending row:

1. asks the channel's normaliser to turn the raw update into an ``Inbound`` (an Event or nothing, plus the
   chat to answer); network work such as photo downloads happens here, outside any transaction;
2. in ONE transaction: runs ``bot.uow.process_event`` (flows, effects, outbox rows), queues the channel's
   own replies, and marks the row done — so a crash before the commit reprocesses the row, and the
   idempotency keys derived from the update make the second run write nothing twice.

Rows of one chat are processed strictly one after another (in update order where the channel's ids are
ordered, like Telegram's update_id); different chats run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, literal_column, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot.outbox import PRIORITY_REPLY, GroupCommit, enqueue, insert_ignore, utcnow, write_lock
from flows.types import Event, Say
from models import jsonio
from models.db import Prepared, in_list, list_param
from models.settings import Settings
from models.tables import ChatIdentity, InboxUpdate, Person

log = logging.getLogger("hoctap.inbox")

# the literal, not a bound parameter: only then can the planners (a prepared statement's generic plan on
# PostgreSQL, SQLite always) use the partial indexes of the pending rows (models/tables.py)
_INBOX = InboxUpdate.__table__  # type: ignore[attr-defined]
_IS_PENDING = _INBOX.c.status == literal_column("'pending'")


# The worker's own statements, compiled once (models.db.Prepared) and run on the session's cursor: built afresh
# through SQLAlchemy for each batch, with expanding IN lists of a batch's chats and ids, they cost more of the
# worker than the database did. A list goes as one parameter (models.db.in_list), as in bot/outbox.py's claim.

# the chats of the oldest pending rows: a bounded read of the partial index of pending rows
_OLDEST = Prepared(lambda _d: select(_INBOX.c.channel, _INBOX.c.chat_key).where(_IS_PENDING).order_by(_INBOX.c.id)
                   .limit(bindparam("window")))
# the pending rows of the listed chats (ix_inbox_chat), no payloads
_CHATS_PENDING = Prepared(lambda d: text(
    "SELECT id, channel, chat_key, update_id FROM inboxupdate WHERE status = 'pending'"
    f" AND {in_list(d, 'chat_key', 'keys', 'text')} AND {in_list(d, 'channel', 'channels', 'text')}"
).columns(_INBOX.c.id, _INBOX.c.channel, _INBOX.c.chat_key, _INBOX.c.update_id))
_ROWS = Prepared(lambda d: text(
    "SELECT id, update_id, payload, attempts, channel, chat_key, status FROM inboxupdate"
    f" WHERE {in_list(d, 'id', 'ids', 'bigint')}"
).columns(_INBOX.c.id, _INBOX.c.update_id, _INBOX.c.payload, _INBOX.c.attempts, _INBOX.c.channel,
          _INBOX.c.chat_key, _INBOX.c.status))
_LOCK_ROWS = Prepared(lambda _d: text("SELECT id FROM inboxupdate WHERE id = ANY(CAST(:ids AS bigint[])) FOR UPDATE"))
_TRY_CHAT_LOCKS = Prepared(lambda _d: text(
    "SELECT k, pg_try_advisory_xact_lock(hashtext(k)) FROM unnest(CAST(:keys AS text[])) AS k"))
# the batch's marks in one statement (ids are unique in a batch)
_MARK = Prepared(lambda d: text(
    "UPDATE inboxupdate AS t SET status = v.status, processed_at = :now, attempts = t.attempts + 1, error = NULL"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS text[])) AS v(id, status) WHERE t.id = v.id"
    if d.name == "postgresql" else
    "UPDATE inboxupdate SET status = json_extract(v.value, '$[1]'), processed_at = :now,"
    " attempts = inboxupdate.attempts + 1, error = NULL FROM json_each(:marks) AS v"
    " WHERE inboxupdate.id = json_extract(v.value, '$[0]')"
).bindparams(bindparam("now", type_=_INBOX.c.processed_at.type)))


def store_update(
    session: Session, channel: str, update_id: str | int, chat_key: str, payload: dict[str, Any]
) -> bool:
    """Insert a raw update unless (channel, update_id) is there already; does not commit. True when new."""
    return insert_ignore(
        session,
        InboxUpdate,
        {
            "channel": channel,
            "update_id": str(update_id),
            "chat_key": str(chat_key),
            "payload": payload,
            "status": "pending",
            "attempts": 0,
            "received_at": utcnow(),
        },
        conflict=["channel", "update_id"],
    )


def store_updates(session: Session, rows: list[tuple[str, str | int, str, dict[str, Any]]]) -> list[bool]:
    """``store_update`` for many (channel, update_id, chat_key, payload) in ONE statement; does not commit.

    Returns, per row, True when it was new (a repeat inside ``rows`` is not new)."""
    if not rows:
        return []
    now = utcnow()
    values = {
        (channel, str(update_id)): {
            "channel": channel,
            "update_id": str(update_id),
            "chat_key": str(key),
            "payload": payload,
            "status": "pending",
            "attempts": 0,
            "received_at": now,
        }
        for channel, update_id, key, payload in rows
    }
    inserted: set[tuple[str, str]] = set()
    pending = list(values.values())
    while pending:
        size = next(n for n in _STORE_SIZES if n <= len(pending))
        chunk, pending = pending[:size], pending[size:]
        params: dict[str, Any] = {}
        for n, row in enumerate(chunk):
            for name, value in row.items():
                params[f"{name}_{n}"] = value
        inserted.update((channel, update_id) for channel, update_id in _store_statement(size).rows(session, params))
    out = []
    for channel, update_id, _key, _payload in rows:
        key = (channel, str(update_id))
        out.append(key in inserted)
        inserted.discard(key)
    return out


_STORE_COLUMNS = ("channel", "update_id", "chat_key", "payload", "status", "attempts", "received_at")
_STORE: dict[int, Prepared] = {}
_STORE_SIZES = (64, 16, 4, 1)  # rows per INSERT: a few statement shapes, each compiled once


def _store_statement(n: int) -> Prepared:
    """The INSERT of ``n`` rows, compiled once: compiling the group commit's many-row INSERT afresh for
    every flush was a large share of the webhook's work."""
    prepared = _STORE.get(n)
    if prepared is None:

        def build(dialect: Any) -> Any:
            table = _INBOX
            insert_of = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
            return (
                insert_of(table)
                .values([{name: bindparam(f"{name}_{i}", type_=table.c[name].type) for name in _STORE_COLUMNS}
                         for i in range(n)])
                .on_conflict_do_nothing(index_elements=["channel", "update_id"])
                .returning(table.c.channel, table.c.update_id)
            )

        prepared = _STORE[n] = Prepared(build)
    return prepared


def _flush_updates(engine: Engine, rows: list[tuple[str, str | int, str, dict[str, Any]]]) -> list[bool]:
    with write_lock(engine), Session(engine) as session:
        new = store_updates(session, rows)
        session.commit()
    return new


_WRITERS: weakref.WeakKeyDictionary[Engine, GroupCommit[tuple[str, str | int, str, dict[str, Any]], bool]] = (
    weakref.WeakKeyDictionary()
)


def inbox_writer(engine: Engine) -> GroupCommit[tuple[str, str | int, str, dict[str, Any]], bool]:
    """The engine's group-committing inbox writer for webhook routes: ``await inbox_writer(engine).submit(
    (channel, update_id, chat_key, payload))`` returns True when new, after the row is committed. Concurrent
    webhook calls share one INSERT and one commit; on SQLite it takes its turn on the process's write lock
    rather than sleeping in SQLite's busy handler."""
    writer = _WRITERS.get(engine)
    if writer is None:
        writer = _WRITERS[engine] = GroupCommit(lambda rows: _flush_updates(engine, rows), max_batch=200)
    return writer


class Backpressure:
    """How long a webhook waits before its answer, by the work queued behind it (inbox rows pending, replies
    queued): nothing up to ``low`` rows, then ``per_row`` seconds for each row beyond, ``most`` at most.

    The update is stored before the wait, so nothing is lost; the platform sends a chat's next update after
    our answer and keeps a bounded number of calls open (Telegram's max_connections, 40 by default), so a
    slower answer slows what it sends. Without it a burst above what the machine can process was accepted as
    fast as it came, and the CPU that accepting took was taken from processing and sending: on 2 cores with
    PostgreSQL the webhook took 2,400-2,600 updates/s while the replies went out at 1,430-1,450, and the
    queue grew for as long as the burst lasted. With it the queue levels off at a few seconds of work
    (docs/performance.md, ninth session). A campaign's rows (bulk priority) do not count: their queue is meant
    to last, at the platform's rate. The defaults wait at most 0.25 s: well inside Zalo's 2 s and Telegram's
    own patience, and 40 open calls still bring 160 updates/s."""

    def __init__(self, engine: Engine, *, low: int = 1000, per_row: float = 1e-5, most: float = 0.25,
                 every: float = 0.25) -> None:
        self.engine, self.low, self.per_row, self.most, self.every = engine, low, per_row, most, every
        self._delay = 0.0
        self._looked_at = -float("inf")
        self._looking: asyncio.Future[int] | None = None

    def delay(self) -> float:
        """Seconds to wait now, from the last look at the queues (0 before the first). Called by webhooks in
        the event loop; starts a look (in a thread) when the last one is ``every`` seconds old: there is no
        task to stop, and an idle server does not look at all."""
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        if self._looking is not None and self._looking.get_loop() is not loop:
            self._looking = None  # begun in a loop that has ended (an app stopped and started again)
        if self._looking is None and now - self._looked_at >= self.every:
            self._looked_at = now
            self._looking = loop.run_in_executor(None, self.queued)
            self._looking.add_done_callback(self._looked)
        return self._delay

    def _looked(self, future: asyncio.Future[int]) -> None:
        self._looking = None
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:  # no figure, no wait
            log.warning("backpressure: could not count the queues (%s)", type(error).__name__)
            self._delay = 0.0
            return
        self._delay = min(self.most, max(0.0, (future.result() - self.low) * self.per_row))

    def queued(self) -> int:
        """Inbox rows pending plus replies queued, each counted only as far as the longest wait."""
        cap = self.low + (int(self.most / self.per_row) if self.per_row > 0 else 0)
        with self.engine.connect() as conn:
            return int(_QUEUED_WORK.rows(conn, {"cap": cap})[0][0] or 0)


# through the partial indexes of the pending inbox rows and of the queued outbox rows (models/tables.py)
_QUEUED_WORK = Prepared(lambda _d: text(
    "SELECT (SELECT count(*) FROM (SELECT 1 FROM inboxupdate WHERE status = 'pending' LIMIT :cap) AS i)"
    " + (SELECT count(*) FROM (SELECT 1 FROM outboxmessage WHERE status = 'queued'"
    f" AND priority = {PRIORITY_REPLY} LIMIT :cap) AS o)"))
_BACKPRESSURE: weakref.WeakKeyDictionary[Engine, Backpressure] = weakref.WeakKeyDictionary()


def backpressure(engine: Engine) -> Backpressure:
    """The engine's Backpressure (one per process and database)."""
    found = _BACKPRESSURE.get(engine)
    if found is None:
        found = _BACKPRESSURE[engine] = Backpressure(engine)
    return found


async def hold_back(engine: Engine) -> None:
    """A webhook, its update stored: wait as long as the engine's Backpressure says before answering."""
    wait = backpressure(engine).delay()
    if wait > 0:
        await asyncio.sleep(wait)


@dataclass(frozen=True)
class Inbound:
    """A normalised update.

    ``event`` goes to the flows; ``replies`` are answers the channel gives itself (a refused photo, a group
    chat) and are queued in the same transaction. Neither: the update is ignored (status "ignored").
    """

    chat_id: str = ""
    event: Event | None = None
    replies: tuple[Say, ...] = ()
    user_id: str = ""  # the platform user, when it differs from the chat (defaults to chat_id)
    display_name: str = ""


class Normaliser(Protocol):
    """Raw update (as stored) → Inbound. May do network work (downloads); must not touch the database rows."""

    def __call__(self, payload: dict[str, Any]) -> Awaitable[Inbound]: ...


class ProcessEvent(Protocol):
    def __call__(
        self,
        session: Session,
        *,
        channel: str,
        chat_id: str,
        event: Event,
        now: datetime,
        settings: Settings | None = None,
        idempotency_base: str | None = None,
        user_id: str | None = None,
        display_name: str = "",
    ) -> list[Say]: ...


@dataclass
class InboxChannel:
    """How the worker handles one channel's rows. ``ordered_ids``: update ids are increasing integers."""

    normalise: Normaliser
    ordered_ids: bool = False


def _default_process() -> ProcessEvent:
    from bot.uow import process_event  # imported late: the unit of work imports the whole flow engine

    return process_event  # type: ignore[return-value]


def _deferred() -> Any:
    from bot.uow import Deferred

    return Deferred()


def _warm_up(engine: Engine, settings: Settings | None) -> dict[str, int]:
    from bot.uow import warm_up

    return warm_up(engine, settings)


def _load_many(session: Session, keys: list[tuple[str, str, str]]) -> dict[tuple[str, str], Any]:
    from bot.uow import load_many

    return load_many(session, keys)


@dataclass
class _Pending:
    id: int
    update_id: str
    payload: dict[str, Any]
    attempts: int
    channel: str = ""
    chat_key: str = ""


@dataclass
class InboxWorker:
    """Processes pending inbox rows: ``run_once()`` drains what is there (tests), ``run()`` loops (server)."""

    engine: Engine
    settings: Settings | None = None
    channels: dict[str, InboxChannel] = field(default_factory=dict)
    process: ProcessEvent | None = None
    now: Callable[[], datetime] = utcnow
    on_outbox: Callable[[str], None] | None = None  # called with the channel after replies were queued
    concurrency: int = 8  # normalisers (downloads, callback answers) running at once
    batch_size: int = 64  # rows (one per chat) committed in one transaction, at most
    # ...and about this long: a transaction holds SQLite's single write lock (webhook inserts wait for it)
    # and the batch's replies wait for its commit, so the batch shrinks when rows are slow
    batch_seconds: float = 0.02  # (a `hoctap worker` process uses 0.06 and min_batch 48: bot/runtime.py start())
    # ...but not below this many: each batch also costs its head queries, thread hops and commit, and on a
    # busy machine (rows timed by the wall clock) the measured row time inflates until batches of one row
    # made the worker the bottleneck
    min_batch: int = 16
    pipeline: bool = True  # read and normalise the next batch while the current one commits
    commits: int = 4  # PostgreSQL: batches committing at the same time (see _commits_at_once)
    max_attempts: int = 5
    poll_seconds: float = 5.0
    backoff: Callable[[int], float] = lambda attempts: min(2.0**attempts, 60.0)  # seconds, per chat
    analyze_rows: int = 1000  # PostgreSQL: ANALYZE the inbox after this many handled rows (0: never) ...
    analyze_seconds: float = 10.0  # ... and at most this often (see _maybe_analyze)

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = False
        self._retry_at: dict[tuple[str, str], float] = {}  # (channel, chat) → loop time of the next try
        self._row_seconds = 0.002  # moving average of one row's share of a batch transaction
        self._handled_since_analyze = 0
        self._analyzed_at = -float("inf")
        self._warmed = False

    def add_channel(self, name: str, normalise: Normaliser, *, ordered_ids: bool = False) -> None:
        self.channels[name] = InboxChannel(normalise, ordered_ids)

    async def warm_up(self) -> None:
        """Before the first pass, in a thread: load the flows' catalog, criteria sets and statements
        (bot.uow.warm_up), so that the first batch does not do it while holding SQLite's write lock. A
        failure here is logged and left to the first batch, as without the warm-up."""
        self._warmed = True
        if self.process is not None:
            return  # another unit of work (tests): nothing of bot.uow's to load
        started = time.perf_counter()
        try:
            loaded = await asyncio.to_thread(_warm_up, self.engine, self.settings)
        except Exception as exc:  # noqa: BLE001 - a warm-up must not keep the worker from running
            log.warning("inbox: warm-up failed (%s)", type(exc).__name__)
            return
        log.info("inbox: warmed up in %.0f ms (%s)", (time.perf_counter() - started) * 1000,
                 ", ".join(f"{name} {count}" for name, count in loaded.items()))

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Process rows until stop(); wakes on wake() or every ``poll_seconds``."""
        self._stopping = False
        if not self._warmed:
            await self.warm_up()
        while not self._stopping:
            self._wake.clear()
            try:
                await self.run_once()
            except Exception as exc:  # noqa: BLE001 - keep the worker alive through a database hiccup
                log.warning("inbox: pass failed (%s)", type(exc).__name__)
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)

    async def run_once(self) -> int:
        """Process every pending row (new rows arriving meanwhile included); returns how many were handled.

        Rows go in batches: the head row (next in order) of up to ``batch_size`` chats is normalised
        concurrently (network work, outside any transaction), then the batch is committed in ONE
        transaction: one commit, one write-lock turn and one outbox wake-up for many updates instead of one
        each. A row that raises rolls the batch back, and the batch is redone row by row (one transaction
        each, as before) so that only the failing row is counted and backed off. A chat whose head row
        failed is not tried again in this pass; its later rows wait behind it.
        """
        handled = 0
        skip: set[tuple[str, str]] = set()  # chats whose head failed (or is locked elsewhere) in this pass
        limit = asyncio.Semaphore(self.concurrency)
        committing: dict[asyncio.Task[int], set[tuple[str, str]]] = {}  # commit → its batch's chats
        most = self._commits_at_once()
        try:
            while not self._stopping:
                # pipelined: the next batch is read and normalised (network) while earlier ones commit
                # (threads); their chats are left out, so each chat still has one row in work at a time
                now = asyncio.get_running_loop().time()
                waiting = {key for key, at in self._retry_at.items() if at > now}
                size = max(min(self.min_batch, self.batch_size),
                           min(self.batch_size, int(self.batch_seconds / max(self._row_seconds, 1e-6))))
                inflight = set().union(*committing.values())
                ready = await self._prepare(skip | waiting | inflight, size, limit, skip)
                committed = False
                while committing and (not ready or len(committing) >= most or not self.pipeline):
                    done, _ = await asyncio.wait(committing, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        del committing[task]
                        handled += task.result()
                    committed = True
                    if not ready:
                        break  # look again: the committed chats may have more rows
                for task in [t for t in committing if t.done()]:
                    del committing[task]
                    handled += task.result()
                if not ready:
                    if ready is None and not committed and not committing:
                        break  # nothing pending
                    continue
                committing[asyncio.create_task(self._finish(ready, skip))] = {
                    (row.channel, row.chat_key) for row, _inbound in ready}
                if not self.pipeline:
                    handled += await next(iter(committing))
                    committing.clear()
        finally:
            for task in committing:
                handled += await task
        return handled

    def _commits_at_once(self) -> int:
        """Batches committed at the same time: one on SQLite (one writer at a time anyway); on PostgreSQL,
        where a batch spends most of its time waiting for the server's answers (several statements per row),
        ``commits`` of them, on their own connections. The chats' locks (bot/uow.py's advisory locks, as
        for several processes) keep each chat's rows in order."""
        if self.engine.dialect.name != "postgresql":
            return 1
        return max(1, self.commits)

    async def _prepare(
        self, exclude: set[tuple[str, str]], size: int, limit: asyncio.Semaphore, skip: set[tuple[str, str]]
    ) -> list[tuple[_Pending, Inbound]] | None:
        """Heads of the next chats, normalised; None when there is no pending row to take at all."""
        heads = await asyncio.to_thread(self._heads, exclude, size)
        if not heads:
            return None

        async def normalise(row: _Pending) -> Inbound | BaseException:
            async with limit:
                try:
                    return await self.channels[row.channel].normalise(row.payload)
                except Exception as exc:  # noqa: BLE001 - counted as a failed attempt below
                    return exc

        inbounds = await asyncio.gather(*(normalise(row) for row in heads))
        for row, error in zip(heads, inbounds, strict=True):
            if not isinstance(error, Inbound):
                await self._failed(row, error, skip)
        return [(row, inbound) for row, inbound in zip(heads, inbounds, strict=True) if isinstance(inbound, Inbound)]

    async def _finish(self, ready: list[tuple[_Pending, Inbound]], skip: set[tuple[str, str]]) -> int:
        """Commit a normalised batch (row by row if the batch fails); returns how many rows were handled."""
        outcomes: dict[int, str] = {}
        try:
            outcomes = await asyncio.to_thread(self._commit_batch, ready)
        except Exception as exc:  # noqa: BLE001 - one row broke the batch: redo it row by row
            outcomes = {}
            if len(ready) == 1:
                await self._failed(ready[0][0], exc, skip)
                ready = []
            for row, inbound in ready:
                try:
                    outcomes[row.id] = await asyncio.to_thread(self._commit, row.channel, row.chat_key, row, inbound)
                except Exception as exc:  # noqa: BLE001 - count it, back off, keep the chat's order
                    await self._failed(row, exc, skip)
        handled = 0
        queued: set[str] = set()
        for row, _inbound in ready:
            outcome = outcomes.get(row.id)
            if outcome is None:
                continue
            self._retry_at.pop((row.channel, row.chat_key), None)
            if outcome in ("done", "queued"):
                handled += 1
                self._handled_since_analyze += 1
            if outcome == "queued":
                queued.add(row.channel)
            if outcome == "busy":
                skip.add((row.channel, row.chat_key))
        if self.on_outbox is not None:
            for channel in sorted(queued):
                self.on_outbox(channel)
        return handled

    # -- internals

    async def _failed(self, row: _Pending, exc: BaseException, skip: set[tuple[str, str]]) -> None:
        gave_up = await asyncio.to_thread(self._record_failure, row, exc)
        log.warning(
            "inbox: %s row %s failed (%s), attempt %s%s",
            row.channel,
            row.id,
            type(exc).__name__,
            row.attempts,
            "; given up" if gave_up else "",
        )
        if gave_up:
            return  # the chat's later updates go on
        skip.add((row.channel, row.chat_key))
        self._retry_at[(row.channel, row.chat_key)] = asyncio.get_running_loop().time() + self.backoff(
            row.attempts
        )

    def _pending_heads(
        self, session: Session, chat_keys: list[str]
    ) -> dict[tuple[str, str], tuple[tuple[int, int], int]]:
        """(channel, chat) → (order key, id) of its head row, for the chats of ``chat_keys`` with pending rows,
        in the order of each chat's oldest pending row. One query, no payloads.

        The rows are found through ix_inbox_chat (chat_key, channel, status, id) and put in
        order here: with ORDER BY id in the statement SQLite chose the index of pending rows in order instead,
        to skip the sort, and read every pending row for each batch; under a backlog (the webhook accepting
        faster than the worker processes) that took more of the process than the flow steps themselves."""
        dialect = session.get_bind().dialect
        heads: dict[tuple[str, str], tuple[tuple[int, int], int]] = {}
        for row_id, channel, key, update_id in sorted(_CHATS_PENDING.rows(session, {
                "keys": list_param(dialect, chat_keys), "channels": list_param(dialect, list(self.channels))})):
            order = self._order_key(channel, update_id, row_id or 0)
            current = heads.get((channel, key))
            if current is None or order < current[0]:
                heads[(channel, key)] = (order, row_id or 0)
        return heads

    def _heads(self, skip: set[tuple[str, str]], size: int) -> list[_Pending]:
        """The next row (in order) of up to ``size`` chats with pending rows, oldest chats first."""
        if not self.channels:
            return []
        self._maybe_analyze()
        with Session(self.engine) as session:
            # the chats of the oldest pending rows: a bounded read of the partial index of pending rows ...
            window = size * 4 + len(skip)
            rows = _OLDEST.rows(session, {"window": window})
            if len(rows) == window and any(channel not in self.channels for channel, _key in rows):
                # ... filtered by channel in SQL only when another process's channels fill the window: with
                # that filter, and statistics that lag a burst, PostgreSQL read and sorted every pending row
                rows = session.connection().execute(
                    select(_INBOX.c.channel, _INBOX.c.chat_key).where(_IS_PENDING, _INBOX.c.channel.in_(list(self.channels)))
                    .order_by(_INBOX.c.id).limit(window)).all()
            chats: dict[tuple[str, str], None] = {}
            for channel, key in rows:
                if channel in self.channels and (channel, key) not in skip:
                    chats.setdefault((channel, key), None)
                if len(chats) >= size:
                    break
            if not chats:
                return []
            # ... then their heads: the earliest pending update of each (it may have arrived later)
            heads = self._pending_heads(session, sorted({key for _channel, key in chats}))
            ids = [heads[chat][1] for chat in chats if chat in heads]
            if not ids:
                return []
            dialect = session.get_bind().dialect
            found = {row[0]: row for row in _ROWS.rows(session, {"ids": list_param(dialect, ids)})}
        pending = []
        for row_id in ids:
            row = found.get(row_id)
            if row is not None and row[6] == "pending":
                _id, update_id, payload, attempts, channel, chat_key, _status = row
                pending.append(_Pending(row_id, update_id, dict(payload), attempts, channel, chat_key))
        return pending

    def _maybe_analyze(self) -> None:
        """PostgreSQL: refresh the inbox table's statistics after every ``analyze_rows`` handled rows (at most
        every ``analyze_seconds``). The head queries' plans depend on the share of pending rows, which a
        wave changes within seconds (from an empty table to a backlog), faster than autovacuum notices (a
        minute between its rounds, and it may be off); with statistics of an empty table PostgreSQL read
        every pending row for each batch's heads."""
        if self.analyze_rows <= 0 or self._handled_since_analyze < self.analyze_rows:
            return
        if self.engine.dialect.name != "postgresql":
            return
        now = time.monotonic()
        if now - self._analyzed_at < self.analyze_seconds:
            return
        self._analyzed_at, self._handled_since_analyze = now, 0
        with self.engine.connect() as conn:
            conn.execute(text("ANALYZE inboxupdate"))
            conn.commit()

    def _order_key(self, channel: str, update_id: str, row_id: int) -> tuple[int, int]:
        if self.channels[channel].ordered_ids and update_id.lstrip("-").isdigit():
            return (int(update_id), row_id)
        return (0, row_id)

    def _commit_batch(self, batch: list[tuple[_Pending, Inbound]], *, wait: bool = False) -> dict[int, str]:
        """One transaction for the whole batch (one row per chat); raises if any row does (nothing kept).

        Outcome per row id: "done", "queued" (replies to send), "already" (another worker did it),
        "not_first" (an earlier update of the chat arrived meanwhile: it goes first) or "busy" (PostgreSQL:
        another process holds the chat)."""
        outcomes: dict[int, str] = {}
        postgres = self.engine.dialect.name == "postgresql"
        with write_lock(self.engine), Session(self.engine, expire_on_commit=False) as session:
            now = self.now()
            todo = []
            locked: dict[str, bool] = {}
            if postgres and not wait and batch:
                # one processor per chat at a time across processes; released at commit. In a batch
                # (several chats in one transaction) only try: waiting there could deadlock. One statement
                # tries them all (a batch has one row per chat).
                keys = [f"inbox:{row.channel}:{row.chat_key}" for row, _inbound in batch]
                locked = {key: bool(got) for key, got in _TRY_CHAT_LOCKS.rows(session, {"keys": keys})}
            for row, inbound in batch:
                if postgres:
                    key = f"inbox:{row.channel}:{row.chat_key}"
                    if wait:
                        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})
                    elif not locked.get(key, False):
                        outcomes[row.id] = "busy"
                        continue
                todo.append((row, inbound))
            if postgres and todo:
                _LOCK_ROWS.rows(session, {"ids": [r.id for r, _ in todo]})
            heads = self._pending_heads(session, sorted({r.chat_key for r, _ in todo})) if todo else {}
            started = time.perf_counter()  # the rows' own work sizes the batches, not the fixed queries above
            deferred = _deferred() if self.process is None else None
            # PostgreSQL: what each update's step reads first, for the whole batch in one round trip
            loads = self._load_many(session, todo, heads) if postgres and deferred is not None else {}
            marks = []
            for row, inbound in todo:
                head = heads.get((row.channel, row.chat_key))
                if head is None:
                    outcomes[row.id] = "already"  # no longer pending: another worker did it
                    continue
                if head[1] != row.id:
                    outcomes[row.id] = "not_first"
                    continue
                if deferred is not None and deferred.others_changed:
                    loads.clear()  # a step changed more than its own answers: the rest read afresh
                preloaded = loads.pop((row.channel, inbound.user_id or inbound.chat_id), None)
                status, outcomes[row.id] = self._apply(session, row, inbound, now, deferred, preloaded)
                marks.append((row.id, status))
            if marks:
                session.flush()
                if deferred is not None:
                    deferred.write(session)
                if postgres:
                    _MARK.rows(session, {"ids": [m[0] for m in marks], "statuses": [m[1] for m in marks], "now": now})
                else:
                    _MARK.rows(session, {"marks": jsonio.dumps(marks), "now": now})
            session.commit()
            if todo:
                self._row_seconds = 0.7 * self._row_seconds + 0.3 * (time.perf_counter() - started) / len(todo)
        return outcomes

    def _commit(self, channel: str, chat_key: str, row: _Pending, inbound: Inbound) -> str:
        """One row in its own transaction (waiting for the chat's lock on PostgreSQL)."""
        return self._commit_batch([(row, inbound)], wait=True)[row.id]

    @staticmethod
    def _load_many(session: Session, todo: list[tuple[_Pending, Inbound]],
                   heads: dict[tuple[str, str], tuple[tuple[int, int], int]]) -> dict[tuple[str, str], Any]:
        """bot.uow.load_many for the batch's rows that will run a step. A chat identity met twice in the
        batch (one user in two chats) is loaded for its first row only (``pop`` above): the second reads
        afresh, as without the batch load."""
        keys = [(row.channel, inbound.user_id or inbound.chat_id, f"{row.channel}:{row.update_id}")
                for row, inbound in todo
                if inbound.event is not None and heads.get((row.channel, row.chat_key), (None, None))[1] == row.id]
        return _load_many(session, keys)

    def _apply(self, session: Session, row: _Pending, inbound: Inbound, now: datetime,
               deferred: Any = None, preloaded: Any = None) -> tuple[str, str]:
        """Stage one row's work in ``session``: (the row's new status, "done" or "queued")."""
        queued = False
        if inbound.event is not None:
            common = {
                "channel": row.channel,
                "chat_id": inbound.chat_id,
                "event": inbound.event,
                "now": now,
                "settings": self.settings,
                "idempotency_base": f"{row.channel}:{row.update_id}",
                "user_id": inbound.user_id or inbound.chat_id,
                "display_name": inbound.display_name,
            }
            if self.process is None:
                # bot.uow clears "unreachable" itself, from the person row it reads anyway, and leaves the
                # batch's state, outbox and audit rows to one statement each (written by _commit_batch)
                says = _default_process()(session, **common, clear_unreachable=True,  # type: ignore[call-arg]
                                          deferred=deferred, preloaded=preloaded)
            else:
                says = self.process(session, **common)
                _clear_unreachable(session, channel=row.channel, user_id=inbound.user_id or inbound.chat_id)
            queued = bool(says)
        for index, say in enumerate(inbound.replies):
            enqueue(
                session,
                channel=row.channel,
                chat_id=inbound.chat_id,
                message=say,
                idempotency_key=f"{row.channel}:{row.update_id}:channel:{index}",
                priority=PRIORITY_REPLY,
            )
            queued = True
        status = "done" if (inbound.event is not None or inbound.replies) else "ignored"
        return status, "queued" if queued else "done"

    def _record_failure(self, row: _Pending, exc: BaseException) -> bool:
        """Count a failed attempt; True when the row is given up (status "failed")."""
        row.attempts += 1
        with write_lock(self.engine), Session(self.engine) as session:
            current = session.get(InboxUpdate, row.id)
            if current is None or current.status != "pending":
                return False
            current.attempts += 1
            current.error = f"{type(exc).__name__}: {exc}"[:500]
            if current.attempts >= self.max_attempts:
                # give up so the chat's later messages are not blocked forever
                current.status = "failed"
                current.processed_at = self.now()
            session.add(current)
            session.commit()
            return current.status == "failed"


def _clear_unreachable(session: Session, *, channel: str, user_id: str) -> None:
    """Someone who writes to us can be written to again.

    One UPDATE through the (channel, user_id) unique index: no rows loaded, and no scan of chat identities
    (chat_id has no index) for every update."""
    person = Person.__table__  # type: ignore[attr-defined]
    identity = ChatIdentity.__table__  # type: ignore[attr-defined]
    session.execute(
        update(person)
        .where(
            person.c.unreachable_at.is_not(None),
            person.c.id.in_(
                select(identity.c.person_id).where(identity.c.channel == channel, identity.c.user_id == user_id)
            ),
        )
        .values(unreachable_at=None, unreachable_reason=None)
    )
