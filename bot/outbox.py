"""The outbox, whatever the channel: enqueue replies and reminders, and a sender that drains them.

Rows (models.tables.OutboxMessage) move ``queued → sending → sent`` (or ``failed`` / ``unreachable``).

Delivery is at-least-once with a window kept as small as we can: a row is claimed (``sending``) in one
commit, the platform API is called, and the row is marked ``sent`` in its own commit right after the call
returns. Only a crash between the API's answer and that commit sends the message a second time: rows found
in ``sending`` whose lease (``not_before`` doubles as the lease end while ``sending``) has run out are
claimed again. A graceful stop finishes the calls in flight, marks them, and puts the rest back to
``queued``, so a restart sends nothing twice.

Priorities: lower ``priority`` first (0 = reply in a conversation, 10 = bulk reminders), so a January
broadcast never makes a family wait for their next question. Rows are claimed in small batches; on
PostgreSQL with ``FOR UPDATE SKIP LOCKED``, so several processes can share the outbox.

Rate limits live in each process (a token bucket for the channel, an interval per chat); several
processes sharing one bot should split ``rate_per_second`` between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import bindparam, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from flows.types import Say
from models.tables import ChatIdentity, OutboxMessage, Person

log = logging.getLogger("hoctap.outbox")

T = TypeVar("T")
R = TypeVar("R")

PRIORITY_REPLY = 0
PRIORITY_BULK = 10


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- database helpers shared by inbox and outbox ---------------------------------------------------------

_SQLITE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def write_lock(engine: Engine) -> Iterator[None]:
    """Serialise our read-then-write transactions on SQLite inside this process; a no-op on PostgreSQL.

    SQLite in WAL mode fails at once (no busy wait) when a transaction that has read tries to write after
    another connection committed; taking turns avoids that. SQLite deployments run one process.
    """
    if engine.dialect.name != "sqlite":
        yield
        return
    with _LOCKS_GUARD:
        lock = _SQLITE_LOCKS.setdefault(engine, threading.Lock())
    with lock:
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
        # no bursts by default: one send every 1/rate seconds keeps few requests in flight when a 429 comes
        self.capacity = capacity if capacity is not None else 1.0
        self.tokens = self.capacity
        self.clock = clock
        self.sleep = sleep
        self.updated = clock()
        self.paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self.clock() + seconds)
        self.tokens = 0.0

    def paused_for(self) -> float:
        return max(0.0, self.paused_until - self.clock())

    async def acquire(self, abort: Callable[[], bool] = lambda: False) -> bool:
        """Wait for a token; False when ``abort()`` turned true while waiting (the caller gives up)."""
        async with self._lock:  # FIFO: claimed rows go out in priority order
            waited = False
            while True:
                if abort():
                    return False
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
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return True
                await self.sleep((1.0 - self.tokens) / self.rate)
                waited = True


# --- the sender -------------------------------------------------------------------------------------------


@dataclass
class _Claimed:
    id: int
    chat_id: str
    payload: dict[str, Any]
    attempts: int
    person_id: int | None


class OutboxSender:
    """Drains one channel's outbox through its transport. ``run_once()`` for tests, ``run()`` in the server."""

    def __init__(
        self,
        *,
        engine: Engine,
        channel: str,
        transport: Transport,
        rate_per_second: float = 25.0,
        per_chat_interval: float = 1.0,
        batch_size: int = 50,
        max_in_flight: int = 8,
        max_attempts: int = 8,
        poll_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.channel = channel
        self.transport = transport
        self.per_chat_interval = per_chat_interval
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.sleep = sleep
        self.now = now
        self.bucket = TokenBucket(rate_per_second, clock=clock, sleep=sleep)
        # a claim must outlive the slowest batch: every row to one chat, one per interval
        self.lease = timedelta(seconds=60 + batch_size * max(per_chat_interval, 0.0))
        self._last_sent: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._halt_batch = False
        self._marks: GroupCommit[tuple[int, datetime, str | None], None] = GroupCommit(self._mark_sent)
        # calls in flight at once: httpx (under PTB) costs ~3× the CPU per request with 50 concurrent
        # requests on its pool than with 8, and 8 already keep a local Bot API busy
        self._in_flight = asyncio.Semaphore(max_in_flight)

    # lifecycle

    def wake(self) -> None:
        """New rows are queued: look now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Send until stop() is called."""
        self._stopping = False
        while not self._stopping:
            self._wake.clear()
            try:
                sent = await self.run_once()
            except Exception as exc:  # noqa: BLE001 - the loop must survive a database hiccup
                log.warning("outbox %s: batch failed (%s)", self.channel, type(exc).__name__)
                sent = 0
            if sent or self._stopping:
                continue
            wait = max(self.poll_seconds, self.bucket.paused_for())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    def stop(self) -> None:
        """Finish the calls in flight, put the other claimed rows back, and leave run()."""
        self._stopping = True
        self._wake.set()

    async def run_once(self) -> int:
        """Claim ready rows batch by batch and send them; returns how many rows were handled."""
        handled = 0
        while not self._stopping:
            if self.bucket.paused_for() > 0:
                break
            rows = await asyncio.to_thread(self._claim)
            if not rows:
                break
            self._halt_batch = False
            by_chat: dict[str, list[_Claimed]] = {}
            for row in rows:
                by_chat.setdefault(row.chat_id, []).append(row)
            results = await asyncio.gather(*(self._send_chat(chat_rows) for chat_rows in by_chat.values()))
            handled += sum(results)
            if self._halt_batch:
                break
        return handled

    # claiming and marking (sync, run in a thread)

    def _claim(self) -> list[_Claimed]:
        now = self.now()
        with write_lock(self.engine), Session(self.engine, expire_on_commit=False) as session:
            query = (
                select(OutboxMessage)
                .where(
                    OutboxMessage.channel == self.channel,
                    or_(col(OutboxMessage.status) == "queued", col(OutboxMessage.status) == "sending"),
                    col(OutboxMessage.not_before) <= now,
                )
                .order_by(col(OutboxMessage.priority), col(OutboxMessage.id))
                .limit(self.batch_size)
            )
            if self.engine.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = list(session.exec(query))
            claimed = []
            for row in rows:
                if row.status == "sending":
                    log.info(
                        "outbox %s: row %s was left sending by a crash; sending again", self.channel, row.id
                    )
                row.status = "sending"
                row.attempts += 1
                row.not_before = now + self.lease
                claimed.append(
                    _Claimed(row.id or 0, row.chat_id, dict(row.payload), row.attempts, row.person_id)
                )
            session.commit()
            return claimed

    def _mark_sent(self, marks: list[tuple[int, datetime, str | None]]) -> list[None]:
        """Mark many rows sent in one transaction (one UPDATE per row, executemany)."""
        table = OutboxMessage.__table__  # type: ignore[attr-defined]
        stmt = (
            update(table)
            .where(table.c.id == bindparam("b_id"), table.c.status == "sending")
            .values(status="sent", sent_at=bindparam("b_at"), platform_message_id=bindparam("b_mid"),
                    last_error=None)
        )
        with write_lock(self.engine), Session(self.engine) as session:
            session.connection().execute(
                stmt, [{"b_id": row_id, "b_at": at, "b_mid": mid} for row_id, at, mid in marks]
            )
            session.commit()
        return [None] * len(marks)

    def _finish(self, row_id: int, **values: Any) -> None:
        with write_lock(self.engine), Session(self.engine) as session:
            session.execute(
                update(OutboxMessage)
                .where(col(OutboxMessage.id) == row_id, col(OutboxMessage.status) == "sending")
                .values(**values)
            )
            session.commit()

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

    async def _send_chat(self, rows: list[_Claimed]) -> int:
        """One chat's rows, in order, one per interval; returns how many were handled."""
        handled = 0
        for index, row in enumerate(rows):
            if self._stopping or self._halt_batch:
                await self._release(rows[index:])
                break
            last = self._last_sent.get(row.chat_id)
            if last is not None:
                wait = last + self.per_chat_interval - self.clock()
                if wait > 0:
                    await self.sleep(wait)
            if not await self.bucket.acquire(lambda: self._stopping or self._halt_batch):
                await self._release(rows[index:])
                break
            await self._send_row(row)
            self._last_sent[row.chat_id] = self.clock()
            handled += 1
        return handled

    async def _release(self, rows: list[_Claimed], *, not_before: datetime | None = None) -> None:
        """Put claimed rows back, as if never tried."""
        when = not_before or self.now()
        for row in rows:
            await asyncio.to_thread(
                self._finish, row.id, status="queued", attempts=max(row.attempts - 1, 0), not_before=when
            )

    async def _send_row(self, row: _Claimed) -> None:
        try:
            async with self._in_flight:
                message_id = await self.transport.send(row.chat_id, row.payload)
        except RetryAfterError as exc:
            # pause the whole channel, as the platform asks; this row and the rest of the batch wait
            self.bucket.pause(exc.retry_after)
            self._halt_batch = True
            log.warning("outbox %s: rate limited, pausing %.1fs", self.channel, exc.retry_after)
            await self._release([row], not_before=self.now() + timedelta(seconds=exc.retry_after))
        except UnreachableError as exc:
            log.info("outbox %s: row %s unreachable", self.channel, row.id)
            await asyncio.to_thread(self._mark_unreachable, row, str(exc) or "unreachable")
        except PermanentError as exc:
            log.warning("outbox %s: row %s refused by the platform", self.channel, row.id)
            await asyncio.to_thread(self._finish, row.id, status="failed", last_error=str(exc)[:500])
        except Exception as exc:  # noqa: BLE001 - TransientError and anything unexpected: retry with backoff
            error = f"{type(exc).__name__}: {exc}"[:500]
            if row.attempts >= self.max_attempts:
                log.warning("outbox %s: row %s failed after %s attempts", self.channel, row.id, row.attempts)
                await asyncio.to_thread(self._finish, row.id, status="failed", last_error=error)
            else:
                delay = min(2.0 ** (row.attempts - 1), 300.0)
                await asyncio.to_thread(
                    self._finish,
                    row.id,
                    status="queued",
                    last_error=error,
                    not_before=self.now() + timedelta(seconds=delay),
                )
        else:
            # committed right after the call: alone when nothing else is in flight (the at-least-once window
            # is this one statement), together with the marks of the sends that finished meanwhile under
            # load (one commit for many; the window is then one such flush)
            await self._marks.submit((row.id, self.now(), message_id))
