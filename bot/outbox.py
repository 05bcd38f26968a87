"""The outbox, whatever the channel: enqueue replies and reminders, and a sender that drains them.

Rows (models.tables.OutboxMessage) move ``queued → sending → sent`` (or ``failed`` / ``unreachable`` /
``unconfirmed``).

Delivery is at most once, and exactly once unless a process dies in the middle of a platform call: a row is
claimed (``sending``) in the commit right before its call, and marked ``sent`` in the sender's next commit
after it: the next claim's (which follows at once, for every call that finished meanwhile), or one of their
own when no claim follows. Telegram and Zalo have no idempotency key, so a row whose call was in flight
when the process died may or may not have been delivered; it is not sent again but marked ``unconfirmed``
(at the next start, or when its lease runs out while other senders live). A person may miss that one
message (the conversation asks its question again at their next message); nobody gets a message twice,
which for a January broadcast to a whole province matters more. A graceful stop finishes the calls in
flight and marks them.

Per chat, rows go out in id order, one at a time and ``per_chat_interval`` apart; the chat's queued rows
carry the interval in ``not_before``, so a restart or another process keeps it too.

Priorities: lower ``priority`` first (0 = reply in a conversation, 10 = bulk reminders), so a January
broadcast never makes a family wait for their next question. On PostgreSQL several processes can share the
outbox: a claim is an ``UPDATE … WHERE status = 'queued' RETURNING id`` of the rows chosen, so a row that another
sender claimed first is passed over.

Rate limits live in each process (a token bucket for the channel); several processes sharing one bot
should split ``rate_per_second`` between them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import os
import threading
import time
import weakref
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import bindparam, literal_column, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from flows.types import Say
from models import jsonio
from models.db import Prepared, in_list, list_param
from models.tables import ChatIdentity, OutboxMessage, Person

log = logging.getLogger("hoctap.outbox")

T = TypeVar("T")
R = TypeVar("R")
_Mark = tuple[int, str, datetime, str | None]  # a row sent, not yet marked: id, chat, when, platform message id

PRIORITY_REPLY = 0
PRIORITY_BULK = 10
# platform calls one sender has under way at most (its transport's connection pool size). 128, not 64: with the
# limit lifted, a sender refills in waves of half of it, one claim per wave, and on SQLite each claim waits for a
# turn of the write lock behind an inbox batch; waves of 32 left the sender at ~1,250 messages/s in the 3-process
# inbound bench while the inbox queued ~1,900 (docs/performance.md, seventh session)
MAX_IN_FLIGHT = 128


def default_in_flight(rate_per_second: float) -> int:
    """Platform calls a sender has under way at most, by its rate (see OutboxSender.__init__)."""
    return max(8, min(MAX_IN_FLIGHT, int(rate_per_second / 50)))


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- database helpers shared by inbox and outbox ---------------------------------------------------------

_SQLITE_LOCKS: weakref.WeakKeyDictionary[Engine, _SqliteWriteLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


class _SqliteWriteLock:
    """A thread lock for this process's turns, and an flock on a file next to the database for the turns of
    the other processes (`serve` with WORKER_PROCESSES: the web process's inbox inserts, the inbox worker's
    batches, the sender's claims and marks). A process waiting in flock() is woken the moment the lock is
    released; waiting in SQLite's busy handler instead means sleeping 1, 2, 5, 10, 15, 20, 25 … ms between
    tries, and a writer that commits batch after batch can keep the others out for a hundred milliseconds."""

    def __init__(self, path: str | None) -> None:
        self.thread = threading.Lock()
        self.fd: int | None = None
        if path and fcntl is not None:
            with contextlib.suppress(OSError):  # e.g. a read-only directory: SQLite's busy handler alone
                self.fd = os.open(path + "-writelock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self.thread:
            if self.fd is None:
                yield
                return
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    def __del__(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)


def _sqlite_path(engine: Engine) -> str | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


@contextlib.contextmanager
def write_lock(engine: Engine) -> Iterator[None]:
    """Serialise our read-then-write transactions on SQLite; a no-op on PostgreSQL.

    SQLite in WAL mode fails at once (no busy wait) when a transaction that has read tries to write after
    another connection committed; taking turns avoids that. Within a process a thread lock gives the turns;
    between the processes of WORKER_PROCESSES an flock next to the database file (see _SqliteWriteLock).
    """
    if engine.dialect.name != "sqlite":
        yield
        return
    with _LOCKS_GUARD:
        lock = _SQLITE_LOCKS.get(engine)
        if lock is None:
            lock = _SQLITE_LOCKS[engine] = _SqliteWriteLock(_sqlite_path(engine))
    with lock.hold():
        yield


def insert_ignore(session: Session, model: type[Any], values: dict[str, Any], *, conflict: list[str]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING on SQLite and PostgreSQL; True when a row was inserted."""
    dialect = session.get_bind().dialect.name
    table = model.__table__
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table).values(**values).on_conflict_do_nothing(index_elements=conflict)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing(index_elements=conflict)
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(dialect)
    # RETURNING, not rowcount: with RETURNING (implicit on PostgreSQL) rowcount is not reliable
    primary = list(table.primary_key.columns)[0]
    return session.execute(stmt.returning(primary)).first() is not None


class GroupCommit(Generic[T, R]):
    """Group commit: items submitted while a flush is running go together in the next flush.

    ``flush(items) -> results`` (sync, run in a thread) writes a list of items in one transaction and returns
    one result per item. ``await submit(item)`` returns the item's result once its flush has committed.
    With nothing else in flight an item is flushed at once, alone (no added delay); under load the items that
    arrived during one flush share the next one, so a hundred callers cost one commit instead of a hundred.
    The flushing is done by the callers themselves (the first one leads, then hands over to the oldest
    waiting one), so no background task is needed and nothing is left behind when a loop ends.
    """

    def __init__(self, flush: Callable[[list[T]], list[R]], *, max_batch: int = 500) -> None:
        self.flush = flush
        self.max_batch = max_batch
        self._state: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _GroupState[T, R]] = (
            weakref.WeakKeyDictionary()
        )

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        state = self._state.get(loop)
        if state is None:
            state = self._state[loop] = _GroupState()
        entry: _GroupEntry[T, R] = _GroupEntry(item, loop.create_future())
        state.queue.append(entry)
        if state.busy:
            try:
                await entry.wake  # "done", or "lead": the previous leader handed the flushing over to us
            except asyncio.CancelledError:
                if not entry.done:
                    with contextlib.suppress(ValueError):
                        state.queue.remove(entry)  # not written; its caller is gone
                    if entry.wake.done() and not entry.wake.cancelled() and entry.wake.result() == "lead":
                        if state.queue:
                            state.queue[0].lead()
                        else:
                            state.busy = False
                raise
        else:
            state.busy = True
        if not entry.done:
            try:
                while not entry.done:
                    batch = state.queue[: self.max_batch]
                    del state.queue[: self.max_batch]
                    try:
                        results = await asyncio.to_thread(self.flush, [e.item for e in batch])
                    except asyncio.CancelledError:
                        state.queue[:0] = [e for e in batch if not e.done]  # the next leader writes them again
                        raise
                    except Exception as exc:  # noqa: BLE001 - every caller of this batch gets the error
                        for e in batch:
                            e.finish(None, exc)
                    else:
                        for e, result in zip(batch, results, strict=True):
                            e.finish(result, None)
            finally:
                if state.queue:
                    state.queue[0].lead()
                else:
                    state.busy = False
        if entry.error is not None:
            raise entry.error
        return entry.result  # type: ignore[return-value]


class _GroupEntry(Generic[T, R]):
    __slots__ = ("item", "wake", "done", "result", "error")

    def __init__(self, item: T, wake: asyncio.Future[str]) -> None:
        self.item = item
        self.wake = wake
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None

    def finish(self, result: R | None, error: BaseException | None) -> None:
        self.done, self.result, self.error = True, result, error
        if not self.wake.done():
            self.wake.set_result("done")

    def lead(self) -> None:
        if not self.wake.done():
            self.wake.set_result("lead")


class _GroupState(Generic[T, R]):
    def __init__(self) -> None:
        self.queue: list[_GroupEntry[T, R]] = []
        self.busy = False


# --- enqueue ----------------------------------------------------------------------------------------------


def enqueue(
    session: Session,
    *,
    channel: str,
    chat_id: str,
    message: Say | dict[str, Any],
    idempotency_key: str,
    priority: int = PRIORITY_REPLY,
    person_id: int | None = None,
    campaign: str | None = None,
    not_before: datetime | None = None,
) -> bool:
    """Queue a message unless one with this idempotency key exists; does not commit. True when queued."""
    now = utcnow()
    payload = message.to_json() if isinstance(message, Say) else dict(message)
    return insert_ignore(
        session,
        OutboxMessage,
        {
            "idempotency_key": idempotency_key,
            "channel": channel,
            "chat_id": str(chat_id),
            "person_id": person_id,
            "payload": payload,
            "priority": priority,
            "status": "queued",
            "campaign": campaign,
            "attempts": 0,
            "not_before": not_before or now,
            "created_at": now,
        },
        conflict=["idempotency_key"],
    )


# --- transports -------------------------------------------------------------------------------------------


class SendError(Exception):
    """Base of the errors a transport raises; the message must not contain the text sent."""


class TransientError(SendError):
    """Network trouble, 5xx, timeouts: retried with backoff."""


class RetryAfterError(SendError):
    """The platform asks us to slow down: the whole channel pauses ``retry_after`` seconds."""

    def __init__(self, retry_after: float, message: str = "") -> None:
        super().__init__(message or f"retry after {retry_after}s")
        self.retry_after = retry_after


class UnreachableError(SendError):
    """The person blocked the bot or never started it: stop writing to them."""


class PermanentError(SendError):
    """The platform refused this message for good (bad request): mark it failed, do not retry."""


class Transport(Protocol):
    """Sends one outbox payload (Say.to_json()) to a chat; returns the platform's message id if any."""

    async def send(self, chat_id: str, payload: dict[str, Any]) -> str | None: ...


# --- rate limiting ----------------------------------------------------------------------------------------


class Call:
    """One call the bucket let go: when it started, and when its answer came back (``finished()``)."""

    __slots__ = ("start", "done", "_clock")

    def __init__(self, start: float, clock: Callable[[], float]) -> None:
        self.start = start
        self.done: float | None = None
        self._clock = clock

    def finished(self) -> None:
        if self.done is None:
            self.done = self._clock()


class TokenBucket:
    """``rate`` sends per second with bursts up to ``capacity``; ``pause()`` stops everyone for a while."""

    def __init__(
        self,
        rate: float,
        *,
        capacity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.rate = max(rate, 0.001)
        # no bursts by default at platform rates (one send every 1/rate seconds keeps few requests in flight
        # when a 429 comes); at high rates (a local Bot API server) 10 ms worth, so one claim serves a few rows
        self.capacity = capacity if capacity is not None else max(1.0, self.rate * 0.01)
        self.tokens = self.capacity
        self.clock = clock
        self.sleep = sleep
        self.updated = clock()
        self.paused_until = 0.0
        self._lock = asyncio.Lock()
        # the platforms count calls in any sliding second (Telegram: about 30); the bucket's catch-up after a late
        # wake-up could put a 31st into one. So at platform rates the last K calls (K = the rate, rounded) must
        # also span K / rate seconds: the bucket's own pacing, never faster, whatever the timers did. And a call
        # the platform received late (a stalled loop, a slow network: it reached the platform at some point
        # before its answer came back) starts its second later: the call K later waits until K / rate after
        # that answer, less the fastest round trip seen (the time a call needs to arrive and be answered at
        # best). With steady round trips that changes nothing; under a stall it kept the 1-s windows the
        # platform counts from filling up (7 × 429 in 5 minutes at load 3 without it, bench/outbound.py).
        self.window = max(1, round(self.rate), math.ceil(self.capacity)) if self.rate <= 1000 else 0
        self.window_seconds = self.window / self.rate
        self._recent: collections.deque[Call] = collections.deque(maxlen=self.window or 1)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self.clock() + seconds)
        self.tokens = 0.0

    def paused_for(self) -> float:
        return max(0.0, self.paused_until - self.clock())

    def _window_opens(self) -> float:
        """The clock() time at which the sliding window lets the next call go."""
        first = self._recent[0]
        opens = first.start + self.window_seconds
        if first.done is not None:
            fastest = min(c.done - c.start for c in self._recent if c.done is not None)
            opens = max(opens, first.done + self.window_seconds - fastest)
        return opens

    async def acquire(self, abort: Callable[[], bool] = lambda: False) -> Call | None:
        """Wait for a token: the call's record (tell it ``finished()`` when the platform answered), or None when
        ``abort()`` turned true while waiting (the caller gives up)."""
        async with self._lock:  # FIFO: claimed rows go out in priority order
            waited = False
            while True:
                if abort():
                    return None
                wait = self.paused_for()
                if wait > 0:
                    await self.sleep(min(wait, 0.25))
                    waited = False  # a pause starts from an empty bucket
                    continue
                now = self.clock()
                # right after waiting for a token, keep what the sleep overshot (timers wake late by about a
                # millisecond; at 30/s dropping it cost 2-3% of the rate); after idling, no more than capacity
                cap = self.capacity + (0.5 if waited else 0.0)
                self.tokens = min(cap, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1.0 - 1e-9:  # a sleep of exactly the missing fraction may fall short by rounding
                    recent = self._recent
                    if self.window and len(recent) == self.window:
                        opens = self._window_opens()
                        if now < opens - 1e-6:
                            await self.sleep(opens - now)
                            waited = True
                            continue
                    self.tokens = max(0.0, self.tokens - 1.0)
                    call = Call(now, self.clock)
                    if self.window:
                        recent.append(call)
                    return call
                await self.sleep((1.0 - self.tokens) / self.rate)
                waited = True

    def available(self) -> int:
        """Whole tokens that acquire() would hand out now without waiting."""
        if self.paused_for() > 0:
            return 0
        return int(min(self.capacity, self.tokens + (self.clock() - self.updated) * self.rate))


# --- the sender -------------------------------------------------------------------------------------------

# rows the sender called the platform for but never learnt the answer of (the process died mid-call)
UNCONFIRMED = "unconfirmed"


@dataclass
class _Claimed:
    id: int
    chat_id: str
    payload: dict[str, Any]
    attempts: int
    person_id: int | None


# PostgreSQL: how often the sender looks at the outbox's statistics, and the fewest changed rows that make
# them stale (see OutboxSender._refresh_statistics)
STATS_CHECK_SECONDS = 10.0
STATS_MIN_CHANGES = 1000

# senders running in this process, per (database, channel): on SQLite (one process) a starting sender with
# no sibling knows that rows left ``sending`` belong to a dead process
_RUNNING: dict[tuple[str, str], int] = {}
_RUNNING_GUARD = threading.Lock()

# the statuses of the partial indexes (models/tables.py) as literals: neither planner can use a partial index for
# a bound parameter (PostgreSQL's generic plans of prepared statements, SQLite always)
_QUEUED = literal_column("'queued'")
_SENDING = literal_column("'sending'")


# The per-chat statements (the claim's heads, the deferrals) name one chat (or a few), and ix_outbox_chat finds
# their rows at once; but right after a bulk enqueue (a fan-out of 100,000 rows) PostgreSQL has no statistics
# yet, estimates one row for any condition, and chose the ready index instead, scanning every queued row for
# each chat: a mark of 32 rows took 5-30 ms instead of 1. So these statements are written so that the ready
# index (partial: status = 'queued', models/tables.py) cannot serve them: they ask for a status IN ('queued',
# 'sending'), which does not imply its predicate, and the deferrals narrow it to 'queued' through coalesce, an
# expression no index holds. The status IN list is an index condition of ix_outbox_chat: a chat's sent rows
# (its whole history: a family answering a season's questions has hundreds) are not read. Before, the status
# was all in coalesce and they were: the heads of 220 chats with 100 sent rows each took 13.8 ms instead of
# 1.5 (docs/performance.md, ninth session). The statements that name their rows by id (the claim's UPDATE, the
# marks) check the status through coalesce too: with the status as such, after a fan-out the statistics did not
# know of yet, PostgreSQL read the whole partial index of queued rows for a claim instead of the primary key (20
# ms per claim instead of 10, bench/claim.py --history 30).


def _lock_key(engine: Engine, channel: str) -> int:
    """A stable key for the PostgreSQL advisory lock that the live senders of one deployment's channel share
    (advisory locks are per database: the URL, with its schema options, tells deployments apart)."""
    where = engine.url.render_as_string(hide_password=True)
    return zlib.crc32(f"hoctap-outbox:{where}:{channel}".encode()) | (0x4F42 << 32)


# PostgreSQL: a batch of marks or deferrals as ONE statement over arrays (see _mark_sent, _defer_chats); the
# chats' rows are found through ix_outbox_chat (the status in coalesce, see above)
_PG_MARK = text(
    "UPDATE outboxmessage AS o SET status = 'sent', sent_at = v.at, platform_message_id = v.mid, last_error = NULL"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:ats AS timestamptz[]), CAST(:mids AS text[])) AS v(id, at, mid)"
    " WHERE o.id = v.id AND coalesce(o.status, '') = 'sending'"
)
_PG_DEFER = text(
    "UPDATE outboxmessage AS o SET not_before = v.until"
    " FROM unnest(CAST(:chats AS text[]), CAST(:untils AS timestamptz[])) AS v(chat, until)"
    " WHERE o.channel = :channel AND o.chat_id = v.chat AND o.status IN ('queued', 'sending')"
    " AND coalesce(o.status, '') = 'queued'"
    " AND o.not_before < v.until"
)


# SQLite: the same two statements over a JSON array (json_each), one execution for the whole batch instead of one
# per row (executemany): SQLAlchemy's per-row parameter work was most of a mark's time. Times are bound in
# SQLAlchemy's own SQLite format (_sqlite_times), so the string comparisons of not_before hold as before.
_SQLITE_MARK = text(
    "UPDATE outboxmessage SET status = 'sent', sent_at = json_extract(v.value, '$[1]'),"
    " platform_message_id = json_extract(v.value, '$[2]'), last_error = NULL FROM json_each(:marks) AS v"
    " WHERE outboxmessage.id = json_extract(v.value, '$[0]') AND coalesce(outboxmessage.status, '') = 'sending'"
)
_SQLITE_DEFER = text(
    "UPDATE outboxmessage SET not_before = v.until"
    " FROM (SELECT json_extract(value, '$[0]') AS chat, max(json_extract(value, '$[1]')) AS until"
    " FROM json_each(:chats) GROUP BY 1) AS v"
    " WHERE outboxmessage.channel = :channel AND outboxmessage.chat_id = v.chat"
    " AND outboxmessage.status IN ('queued', 'sending') AND coalesce(outboxmessage.status, '') = 'queued'"
    " AND outboxmessage.not_before < v.until"
)


# The claim's three statements, compiled once (models.db.Prepared) and run on the connection's own cursor: built
# afresh through SQLAlchemy for each claim, with expanding IN lists of up to 256 values, they cost several
# times what the database did (SQLite: ~1 of 6 ms per claim of 64 rows). A list goes as one parameter
# (models.db.in_list): a JSON array read by json_each on SQLite, an array on PostgreSQL.
def _claim_page(_dialect: Any) -> Any:
    """The ready rows in (priority, not_before, id) order, as ix_outbox_ready holds them; no payloads."""
    table = OutboxMessage.__table__  # type: ignore[attr-defined]
    return (select(table.c.id, table.c.chat_id, table.c.attempts, table.c.person_id)
            .where(table.c.channel == bindparam("channel"), table.c.status == _QUEUED,
                   table.c.not_before <= bindparam("now"))
            .order_by(table.c.priority, table.c.not_before, table.c.id)
            .limit(bindparam("limit")))


def _claim_heads(dialect: Any) -> Any:
    """The head (lowest id among the rows sending, or queued and due) of each of the listed chats, through
    ix_outbox_chat (see above)."""
    table = OutboxMessage.__table__  # type: ignore[attr-defined]
    return text(
        "SELECT chat_id, min(id) FROM outboxmessage WHERE channel = :channel"
        f" AND {in_list(dialect, 'chat_id', 'chats', 'text')}"
        " AND status IN ('queued', 'sending') AND (status = 'sending' OR not_before <= :now)"
        " GROUP BY chat_id"
    ).bindparams(bindparam("now", type_=table.c.not_before.type)).columns(table.c.chat_id, table.c.id)


def _claim_update(dialect: Any) -> Any:
    """The chosen rows that are still queued and due, made "sending" for the lease; their payloads back."""
    table = OutboxMessage.__table__  # type: ignore[attr-defined]
    return text(
        "UPDATE outboxmessage SET status = 'sending', attempts = attempts + 1, not_before = :until"
        f" WHERE {in_list(dialect, 'id', 'ids', 'bigint')} AND coalesce(status, '') = 'queued' AND not_before <= :now"
        " RETURNING id, payload"
    ).bindparams(bindparam("now", type_=table.c.not_before.type),
                 bindparam("until", type_=table.c.not_before.type)).columns(table.c.id, table.c.payload)


_CLAIM_PAGE = Prepared(_claim_page)
_CLAIM_HEADS = Prepared(_claim_heads)
_CLAIM_UPDATE = Prepared(_claim_update)
_MARK = Prepared(lambda d: _PG_MARK if d.name == "postgresql" else _SQLITE_MARK)
_DEFER = Prepared(lambda d: _PG_DEFER if d.name == "postgresql" else _SQLITE_DEFER)


def _sqlite_times(engine: Engine) -> Callable[[datetime], str]:
    """How SQLAlchemy writes a DateTime column's value on SQLite (its bind processor)."""
    return _times_of(engine.dialect)


@functools.cache
def _times_of(dialect: Any) -> Callable[[datetime], str]:
    column_type = OutboxMessage.__table__.c.not_before.type  # type: ignore[attr-defined]
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    if process is None:  # pragma: no cover - SQLAlchemy's SQLite DATETIME always has one
        raise RuntimeError(f"no DateTime bind processor for {dialect.name}")
    return process  # type: ignore[no-any-return]


class OutboxSender:
    """Drains one channel's outbox through its transport. ``run_once()`` for tests, ``run()`` in the server.

    Rows are claimed just in time: a row becomes ``sending`` in the commit right before its platform call,
    never earlier, so a crash can only leave ``sending`` the few rows whose call was in flight. Those are
    not sent again (the platform may have delivered them: Telegram and Zalo have no idempotency key); at
    the next start, or once their lease runs out when other senders are alive, they become
    ``unconfirmed``. Per chat, rows go out in id order, one at a time, ``per_chat_interval`` apart; the
    interval is also written into the chat's queued rows (``not_before``), so it holds across restarts
    and across processes.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        channel: str,
        transport: Transport,
        rate_per_second: float = 25.0,
        per_chat_interval: float = 1.0,
        batch_size: int = 64,
        max_in_flight: int | None = None,
        max_attempts: int = 8,
        poll_seconds: float = 1.0,
        lease_seconds: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.channel = channel
        self.transport = transport
        self.per_chat_interval = per_chat_interval
        self.batch_size = batch_size
        # calls in flight: 8 at platform rates (30/s: a 429 finds few calls under way); more when the limit is
        # lifted (paid broadcasts, a local Bot API server), so that one claim commit (with the marks of the calls
        # before it) serves dozens of rows instead of a few — on PostgreSQL each is a few round trips, which 8 in
        # flight could not hide
        if max_in_flight is None:
            max_in_flight = default_in_flight(rate_per_second)
        self.max_in_flight = max(1, max_in_flight)
        self.max_attempts = max_attempts
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.sleep = sleep
        self.now = now
        self.bucket = TokenBucket(rate_per_second, clock=clock, sleep=sleep)
        # a claimed row is in flight for at most the transport's timeouts; a lease far beyond them
        self.lease = timedelta(seconds=lease_seconds)
        self._cooling: dict[str, float] = {}  # chat -> clock() when its next row may go
        self._in_flight_chats: set[str] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._next_sweep = 0.0
        # rows sent, not yet marked: the next claim marks them in its own turn of the write lock (see _claim)
        self._sent: list[_Mark] = []
        self._waiting = 0  # claimed rows waiting for their token
        # rows claimed ahead of their tokens: ~0.1 s of sending, so that the time a claim takes (a commit,
        # slower on a busy machine) does not slow the rate; a crash leaves at most these unconfirmed unsent
        self._claim_ahead = max(1, min(self.max_in_flight, int(rate_per_second * 0.1)))
        self._progress = asyncio.Event()  # a waiting row took its token
        self._lock_conn: Any = None
        self._next_stats_check = 0.0  # clock() of the next look at the outbox's statistics (PostgreSQL)

    # lifecycle

    def wake(self) -> None:
        """New rows are queued: look now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Send until stop() is called."""
        self._stopping = False
        key = (str(self.engine.url), self.channel)
        with _RUNNING_GUARD:
            alone = _RUNNING.get(key, 0) == 0
            _RUNNING[key] = _RUNNING.get(key, 0) + 1
        try:
            try:
                await asyncio.to_thread(self._start, alone)
            except Exception as exc:  # noqa: BLE001 - leases still settle the rows later
                log.warning("outbox %s: start-up check failed (%s)", self.channel, type(exc).__name__)
            while not self._stopping:
                self._wake.clear()
                try:
                    sent = await self.run_once()
                except Exception as exc:  # noqa: BLE001 - the loop must survive a database hiccup
                    log.warning("outbox %s: batch failed (%s)", self.channel, type(exc).__name__)
                    sent = 0
                if sent or self._stopping:
                    continue
                await self._idle(max(self.poll_seconds, self.bucket.paused_for()))
        finally:
            with _RUNNING_GUARD:
                _RUNNING[key] -= 1
                if not _RUNNING[key]:
                    del _RUNNING[key]
            await asyncio.to_thread(self._release_lock)

    def stop(self) -> None:
        """Finish the calls in flight, mark them, and leave run(); queued rows stay queued."""
        self._stopping = True
        self._wake.set()

    async def _idle(self, seconds: float) -> None:
        """Wait ``seconds`` or until woken."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    def _start(self, alone: bool) -> None:
        """Settle rows a dead sender left ``sending`` when no other sender of this channel is alive."""
        if self.engine.dialect.name == "postgresql":
            key = {"k": _lock_key(self.engine, self.channel)}
            conn = self.engine.connect()
            try:
                alone = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), key).scalar())
                if alone:  # no live sender holds the shared lock: every `sending` row is a dead one's
                    self.settle_unconfirmed(all_rows=True)
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), key)
                conn.execute(text("SELECT pg_advisory_lock_shared(:k)"), key)
                conn.commit()  # the session-level lock outlives the transaction
            except Exception:
                conn.invalidate()
                raise
            self._lock_conn = conn
        elif alone:
            self.settle_unconfirmed(all_rows=True)

    def _release_lock(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            conn.invalidate()  # closing the session releases its advisory locks; never back to the pool

    def settle_unconfirmed(self, *, all_rows: bool = False) -> int:
        """Mark ``unconfirmed`` the rows left ``sending`` by a dead sender (all, or those past their lease)."""
        table = OutboxMessage.__table__  # type: ignore[attr-defined]
        stmt = update(table).where(table.c.channel == self.channel, table.c.status == _SENDING)  # ix_outbox_sending
        if not all_rows:
            stmt = stmt.where(table.c.not_before < self.now())
        stmt = stmt.values(status=UNCONFIRMED, last_error="the sender stopped during the platform call; "
                                                          "not sent again (it may have been delivered)")
        with write_lock(self.engine), self.engine.begin() as conn:
            count = conn.execute(stmt).rowcount or 0
        if count:
            log.warning("outbox %s: %s row(s) left in flight by a stopped sender marked unconfirmed",
                        self.channel, count)
        return count

    # the loop

    async def run_once(self) -> int:
        """Send every row that is ready now (waiting out per-chat intervals); returns how many were handled.

        Rows are claimed only as fast as the rate allows (about 0.1 s of sending ahead of the tokens), and
        each call takes its token right before it goes out, so the time spent claiming adds no jitter to the
        pacing that the platform sees."""
        handled = 0
        tasks: set[asyncio.Task[None]] = set()

        async def settle_some() -> None:
            progress = asyncio.ensure_future(self._progress.wait())
            try:
                done, _ = await asyncio.wait(tasks | {progress}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                progress.cancel()
            tasks.difference_update(done)
            self._progress.clear()

        try:
            while not self._stopping:
                if self.bucket.paused_for() > 0:
                    break
                free = self.max_in_flight - len(tasks)
                # refill in waves (one claim for several rows, not a commit per finished call), and keep only
                # ~0.1 s of sending claimed ahead of its tokens
                ahead = self._claim_ahead - self._waiting
                if free <= 0 or ahead <= 0 or (tasks and free < max(1, self.max_in_flight // 2)):
                    await settle_some()
                    continue
                want = max(1, min(free, self.batch_size, self.bucket.available() + ahead))
                (rows, wait), marked = await self._with_marks(lambda marks, want=want: self._claim(want, marks))
                for row in rows:
                    self._in_flight_chats.add(row.chat_id)
                    self._waiting += 1
                    tasks.add(asyncio.create_task(self._send_row(row)))
                handled += len(rows)
                if rows or marked:
                    continue  # (marks: their chats' next rows may be ready now; the claim's reads came before)
                if tasks:
                    await settle_some()  # a call in flight may free its chat's next row
                elif wait is not None and wait <= max(self.per_chat_interval, 0.0) + 0.05:
                    await self._sleep_or_wake(wait)  # a chat's next row, once its interval has passed
                else:
                    break
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if self._sent:  # the last calls' marks: no claim follows them
                await self._with_marks(self._mark_sent)
        return handled

    async def _with_marks(self, write: Callable[[list[_Mark]], R]) -> tuple[R, int]:
        """Run ``write`` (in a thread) with the marks of the rows sent so far, taken off ``_sent``; if it
        raises they go back, for the next claim (or the last flush) to write. Returns its result and how
        many marks it took."""
        marks, self._sent = self._sent, []
        try:
            return await asyncio.to_thread(write, marks), len(marks)
        except BaseException:
            self._sent[:0] = marks
            raise

    async def _sleep_or_wake(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
        self._wake.clear()

    # claiming and marking (sync, run in a thread)

    def _claim(self, want: int, marks: list[_Mark] | None = None,
               ) -> tuple[list[_Claimed], float | None]:
        """Claim up to ``want`` rows to send now, heads of distinct chats; and the seconds until the next row
        that waits only for its chat's interval (None when there is none soon).

        ``marks`` (rows sent since the last claim) are marked sent in the same transaction, before the claim:
        on SQLite every write takes a turn of the one write lock, and an inbox batch holds it for tens of
        milliseconds; a mark commit of its own was a second turn to wait for, per wave of calls (measured:
        the sender waited 2.7 s per 5 s for its claims and 3.4 s for its marks, and sent half of what the
        inbox queued). Their chats' next rows are claimed from the next turn on: the reads below, taken
        before, still see these rows sending."""
        marks = marks or []
        now = self.now()
        mono = self.clock()
        if mono >= self._next_sweep:  # rows of senders that died while others lived
            self._next_sweep = mono + 30.0
            self.settle_unconfirmed()
        if mono >= self._next_stats_check:
            self._next_stats_check = mono + STATS_CHECK_SECONDS
            self._refresh_statistics()
        # two index-ordered queries of a few dozen rows each, whatever the size of the queue: the ready rows in
        # (priority, not_before, id) order as ix_outbox_ready holds them, then the head (lowest id among the rows
        # that are ready or in flight) of each of their chats (ix_outbox_chat); only heads may go
        limit = max(4 * want, 32)
        # the reads take no write lock: on SQLite that lock is every writer's (webhook inserts, inbox batches,
        # marks), and under load a claim held it for 7-8 ms, a seventh of the time. What they saw is checked
        # again by the claim's UPDATE (still queued, still due); a chat's head cannot change behind them
        # except to a later row (its earlier one sent), and a head read before that is simply not claimed.
        with self.engine.connect() as conn:
            while True:
                # no payloads: the page holds up to four times the rows that are sent, and decoding their JSON
                # was a tenth of the sender's time; the claimed rows' payloads come back from the claim itself
                page = _CLAIM_PAGE.rows(conn, {"channel": self.channel, "now": now, "limit": limit})
                if not page:  # nothing ready (an idle sender asks every poll): no heads to look up
                    found = []
                    break
                heads = dict(_CLAIM_HEADS.rows(conn, {
                    "channel": self.channel, "now": now,
                    "chats": list_param(conn.dialect, sorted({chat_id for _id, chat_id, _a, _p in page}))}))
                found = [row for row in page if heads.get(row[1]) == row[0]]
                if found or len(page) < limit or limit >= 4096:
                    break
                limit *= 8  # a page of rows that all wait behind their chats' earlier rows: look further
        chosen: list[_Claimed] = []
        cooling: dict[str, float] = {}
        chats: set[str] = set()
        for row_id, chat_id, attempts, person_id in found:
            if chat_id in chats or chat_id in self._in_flight_chats:
                continue
            ready = self._cooling.get(chat_id)
            if ready is not None and ready > mono:
                cooling[chat_id] = ready
                continue
            if len(chosen) < want:
                chats.add(chat_id)
                chosen.append(_Claimed(row_id, chat_id, {}, attempts + 1, person_id))
        if chosen or cooling or marks:
            with write_lock(self.engine), self.engine.begin() as conn:
                if marks:
                    self._write_marks(conn, marks)
                if chosen:
                    # only the chosen rows are locked (no FOR UPDATE on the page read: on PostgreSQL that wrote a
                    # lock into four times as many rows as were sent); a row another sender claimed meanwhile is
                    # no longer queued once its claim commits, so this UPDATE passes it over and it is not sent
                    # twice
                    claimed = dict(_CLAIM_UPDATE.rows(conn, {
                        "ids": list_param(conn.dialect, [c.id for c in chosen]), "now": now,
                        # not_before again: another process may have put a row back to wait (a 429, a retry)
                        # since the page was read
                        "until": now + self.lease}))
                    chosen = [c for c in chosen if c.id in claimed]
                    for c in chosen:
                        c.payload = dict(claimed[c.id])
                if cooling:  # rows queued during their chat's interval: out of the way until it has passed
                    self._defer_chats(conn, [(chat, now + timedelta(seconds=ready - mono))
                                             for chat, ready in cooling.items()])
        wait = min(cooling.values()) - mono if cooling else None
        if wait is None and not chosen:
            wait = self._next_ready(now)
        return chosen, wait

    def _refresh_statistics(self) -> None:
        """PostgreSQL: ANALYZE the outbox when its statistics are missing or stale (a fifth of the rows changed
        since the last ANALYZE). A fan-out or a burst of replies changes the table within seconds, faster
        than autovacuum notices; without statistics of the chats PostgreSQL answered the claim's per-chat
        heads by reading every row of the channel (10 ms against 0.6 ms for 128 chats among 20,000 rows,
        most of the sender's time at a thousand messages a second)."""
        if self.engine.dialect.name != "postgresql":
            return
        with self.engine.connect() as conn:
            row = conn.execute(text(
                "SELECT c.reltuples, s.n_mod_since_analyze FROM pg_class AS c"
                " JOIN pg_stat_user_tables AS s ON s.relid = c.oid WHERE c.oid = CAST('outboxmessage' AS regclass)"
            )).first()
            if row is None:
                return
            tuples, changed = float(row[0]), int(row[1] or 0)
            if tuples < 0 or changed > max(STATS_MIN_CHANGES, 0.2 * tuples):  # -1: never analyzed
                conn.execute(text("ANALYZE outboxmessage"))
            conn.commit()

    def _next_ready(self, now: datetime) -> float | None:
        """Seconds until the next queued row of this channel is due, if within one interval."""
        horizon = now + timedelta(seconds=max(self.per_chat_interval, 0.0) + 0.05)
        table = OutboxMessage.__table__  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            due = conn.execute(
                select(table.c.not_before)
                .where(table.c.channel == self.channel, table.c.status == _QUEUED,
                       table.c.not_before > now, table.c.not_before <= horizon)
                .order_by(table.c.not_before)
                .limit(1)
            ).scalar()
        if due is None:
            return None
        if due.tzinfo is None:
            due = due.replace(tzinfo=UTC)
        return max((due - now).total_seconds(), 0.0)

    def _defer_chats(self, conn: Any, chats: list[tuple[str, datetime]]) -> None:
        """Keep the queued rows of these chats until the given times (the per-chat interval, a backoff)."""
        if not chats:
            return
        if conn.dialect.name == "postgresql":
            # one statement for all the chats: an UPDATE per chat (executemany) cost the server a statement
            # execution each, most of a mark's time at a thousand messages a second
            latest: dict[str, datetime] = {}
            for chat, until in chats:
                if chat not in latest or until > latest[chat]:
                    latest[chat] = until
            _DEFER.rows(conn, {"channel": self.channel, "chats": list(latest), "untils": list(latest.values())})
            return
        when = _sqlite_times(self.engine)
        _DEFER.rows(conn, {"channel": self.channel, "chats": jsonio.dumps(
            [[chat, when(until)] for chat, until in chats])})

    def _mark_sent(self, marks: list[_Mark]) -> None:
        """Mark many rows sent in one transaction of their own (when no claim follows them)."""
        with write_lock(self.engine), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # This commit need not wait for the disk: if the server crashes before it is flushed (at most
                # a few hundred ms), the rows are still "sending" and the next start marks them unconfirmed,
                # never sends them again — what a sender's crash does anyway. (Marks written with a claim
                # wait for the disk with it: a lost claim would put a delivered row back in the queue.)
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            self._write_marks(conn, marks)

    def _write_marks(self, conn: Any, marks: list[_Mark]) -> None:
        """Mark rows sent, in the caller's transaction; their chats' next rows wait for the interval."""
        if conn.dialect.name == "postgresql":
            _MARK.rows(conn, {"ids": [m[0] for m in marks], "ats": [m[2] for m in marks],
                              "mids": [None if m[3] is None else str(m[3]) for m in marks]})
        else:
            when = _sqlite_times(self.engine)
            _MARK.rows(conn, {"marks": jsonio.dumps(
                [[row_id, when(at), None if mid is None else str(mid)] for row_id, _, at, mid in marks])})
        if self.per_chat_interval > 0:
            gap = timedelta(seconds=self.per_chat_interval)
            self._defer_chats(conn, [(chat, at + gap) for _, chat, at, _ in marks])

    def _finish(self, row: _Claimed, *, defer_until: datetime | None = None, **values: Any) -> None:
        table = OutboxMessage.__table__  # type: ignore[attr-defined]
        with write_lock(self.engine), self.engine.begin() as conn:
            conn.execute(
                update(table).where(table.c.id == row.id, table.c.status == "sending").values(**values)
            )
            if defer_until is not None:  # the chat's later rows wait for this one: order is kept
                self._defer_chats(conn, [(row.chat_id, defer_until)])

    def _mark_unreachable(self, row: _Claimed, reason: str) -> None:
        now = self.now()
        with write_lock(self.engine), Session(self.engine) as session:
            session.execute(
                update(OutboxMessage)
                .where(col(OutboxMessage.id) == row.id)
                .values(status="unreachable", last_error=reason[:500])
            )
            person_id = row.person_id
            if person_id is None:
                identity = session.exec(
                    select(ChatIdentity).where(
                        ChatIdentity.channel == self.channel, ChatIdentity.chat_id == row.chat_id
                    )
                ).first()
                person_id = identity.person_id if identity else None
            if person_id is not None:
                person = session.get(Person, person_id)
                if person is not None and person.unreachable_at is None:
                    person.unreachable_at = now
                    person.unreachable_reason = f"{self.channel}: {reason}"[:200]
                    session.add(person)
            session.commit()

    # sending

    async def _send_row(self, row: _Claimed) -> None:
        try:
            got = await self.bucket.acquire(lambda: self._stopping)
            self._waiting -= 1
            self._progress.set()
            if not got:  # stopping before its turn: back to the queue, as if never claimed
                await asyncio.to_thread(self._finish, row, status="queued", attempts=max(row.attempts - 1, 0),
                                        not_before=self.now())
                return
            await self._call(row, got)
        finally:
            self._in_flight_chats.discard(row.chat_id)
            if self.per_chat_interval > 0:
                self._cooling[row.chat_id] = self.clock() + self.per_chat_interval
                if len(self._cooling) > 4096:  # forget chats whose interval has passed
                    mono = self.clock()
                    self._cooling = {c: t for c, t in self._cooling.items() if t > mono}

    async def _call(self, row: _Claimed, call: Call) -> None:
        try:
            try:
                message_id = await self.transport.send(row.chat_id, row.payload)
            finally:
                call.finished()  # the answer is in: before the database work that follows
        except RetryAfterError as exc:
            # pause the whole channel, as the platform asks; this row goes back, untried, and waits
            self.bucket.pause(exc.retry_after)
            log.warning("outbox %s: rate limited, pausing %.1fs", self.channel, exc.retry_after)
            until = self.now() + timedelta(seconds=exc.retry_after)
            await asyncio.to_thread(self._finish, row, defer_until=until, status="queued",
                                    attempts=max(row.attempts - 1, 0), not_before=until)
        except UnreachableError as exc:
            log.info("outbox %s: row %s unreachable", self.channel, row.id)
            await asyncio.to_thread(self._mark_unreachable, row, str(exc) or "unreachable")
        except PermanentError as exc:
            log.warning("outbox %s: row %s refused by the platform", self.channel, row.id)
            await asyncio.to_thread(self._finish, row, status="failed", last_error=str(exc)[:500])
        except Exception as exc:  # noqa: BLE001 - TransientError and anything unexpected: retry with backoff
            error = f"{type(exc).__name__}: {exc}"[:500]
            if row.attempts >= self.max_attempts:
                log.warning("outbox %s: row %s failed after %s attempts", self.channel, row.id, row.attempts)
                await asyncio.to_thread(self._finish, row, status="failed", last_error=error)
            else:
                until = self.now() + timedelta(seconds=min(2.0 ** (row.attempts - 1), 300.0))
                await asyncio.to_thread(self._finish, row, defer_until=until, status="queued",
                                        last_error=error, not_before=until)
        else:
            # marked by the next claim (run_once calls one as soon as this task is done), together with the
            # calls that finished meanwhile, or by run_once's last flush
            self._sent.append((row.id, row.chat_id, self.now(), message_id))
