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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from bot.outbox import PRIORITY_REPLY, enqueue, insert_ignore, utcnow, write_lock
from flows.types import Event, Say
from models.settings import Settings
from models.tables import ChatIdentity, InboxUpdate, Person

log = logging.getLogger("hoctap.inbox")


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


@dataclass
class _Pending:
    id: int
    update_id: str
    payload: dict[str, Any]
    attempts: int


@dataclass
class InboxWorker:
    """Processes pending inbox rows: ``run_once()`` drains what is there (tests), ``run()`` loops (server)."""

    engine: Engine
    settings: Settings | None = None
    channels: dict[str, InboxChannel] = field(default_factory=dict)
    process: ProcessEvent | None = None
    now: Callable[[], datetime] = utcnow
    on_outbox: Callable[[str], None] | None = None  # called with the channel after replies were queued
    concurrency: int = 8
    max_attempts: int = 5
    poll_seconds: float = 5.0
    backoff: Callable[[int], float] = lambda attempts: min(2.0**attempts, 60.0)  # seconds, per chat

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = False
        self._retry_at: dict[tuple[str, str], float] = {}  # (channel, chat) → loop time of the next try

    def add_channel(self, name: str, normalise: Normaliser, *, ordered_ids: bool = False) -> None:
        self.channels[name] = InboxChannel(normalise, ordered_ids)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Process rows until stop(); wakes on wake() or every ``poll_seconds``."""
        self._stopping = False
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
        """Process every pending row (new rows arriving meanwhile included); returns how many were handled."""
        chats = await asyncio.to_thread(self._pending_chats)
        if not chats:
            return 0
        limit = asyncio.Semaphore(self.concurrency)

        async def drain(channel: str, chat_key: str) -> int:
            async with limit:
                return await self._drain_chat(channel, chat_key)

        done = await asyncio.gather(*(drain(channel, key) for channel, key in chats))
        return sum(done)

    # -- internals

    def _pending_chats(self) -> list[tuple[str, str]]:
        if not self.channels:
            return []
        with Session(self.engine) as session:
            rows = session.exec(
                select(InboxUpdate.channel, InboxUpdate.chat_key)
                .where(InboxUpdate.status == "pending", col(InboxUpdate.channel).in_(list(self.channels)))
                .order_by(col(InboxUpdate.id))
            ).all()
        seen: dict[tuple[str, str], None] = {}
        for channel, key in rows:
            seen.setdefault((channel, key), None)
        return list(seen)

    def _order_key(self, channel: str, update_id: str, row_id: int) -> tuple[int, int]:
        if self.channels[channel].ordered_ids and update_id.lstrip("-").isdigit():
            return (int(update_id), row_id)
        return (0, row_id)

    def _next_pending(self, channel: str, chat_key: str) -> _Pending | None:
        with Session(self.engine) as session:
            rows = session.exec(
                select(InboxUpdate).where(
                    InboxUpdate.channel == channel,
                    InboxUpdate.chat_key == chat_key,
                    InboxUpdate.status == "pending",
                )
            ).all()
            if not rows:
                return None
            first = min(rows, key=lambda r: self._order_key(channel, r.update_id, r.id or 0))
            return _Pending(first.id or 0, first.update_id, dict(first.payload), first.attempts)

    async def _drain_chat(self, channel: str, chat_key: str) -> int:
        handled = 0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if self._retry_at.get((channel, chat_key), 0.0) > loop.time():
                break  # the chat's head row failed recently: later rows wait behind it
            row = await asyncio.to_thread(self._next_pending, channel, chat_key)
            if row is None:
                break
            outcome = await self._process(channel, chat_key, row)
            if outcome == "failed":
                break
            if outcome in ("done", "queued"):
                handled += 1
        return handled

    async def _process(self, channel: str, chat_key: str, row: _Pending) -> str:
        """Normalise then commit: "done", "queued" (replies to send), "already", "not_first" or "failed"."""
        try:
            inbound = await self.channels[channel].normalise(row.payload)
            outcome = await asyncio.to_thread(self._commit, channel, chat_key, row, inbound)
        except Exception as exc:  # noqa: BLE001 - any failure: count it, back off, keep the chat's order
            gave_up = await asyncio.to_thread(self._record_failure, row, exc)
            log.warning(
                "inbox: %s row %s failed (%s), attempt %s%s",
                channel,
                row.id,
                type(exc).__name__,
                row.attempts,
                "; given up" if gave_up else "",
            )
            if gave_up:
                return "gave_up"  # the chat's later updates go on
            self._retry_at[(channel, chat_key)] = asyncio.get_running_loop().time() + self.backoff(
                row.attempts
            )
            return "failed"
        self._retry_at.pop((channel, chat_key), None)
        if outcome == "queued" and self.on_outbox is not None:
            self.on_outbox(channel)
        return outcome

    def _commit(self, channel: str, chat_key: str, row: _Pending, inbound: Inbound) -> str:
        """The one transaction: effects, outbox rows, row marked done. Returns what happened."""
        now = self.now()
        with write_lock(self.engine), Session(self.engine, expire_on_commit=False) as session:
            if self.engine.dialect.name == "postgresql":
                # one processor per chat at a time across processes; released at commit
                session.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                    {"key": f"inbox:{channel}:{chat_key}"},
                )
            current = session.get(
                InboxUpdate, row.id, with_for_update=self.engine.dialect.name == "postgresql"
            )
            if current is None or current.status != "pending":
                return "already"  # another worker did it
            head = self._next_pending_in(session, channel, chat_key)
            if head is not None and head != row.id:
                return "not_first"  # an earlier update of this chat arrived meanwhile: it goes first
            queued = False
            if inbound.event is not None:
                process = self.process or _default_process()
                says = process(
                    session,
                    channel=channel,
                    chat_id=inbound.chat_id,
                    event=inbound.event,
                    now=now,
                    settings=self.settings,
                    idempotency_base=f"{channel}:{row.update_id}",
                    user_id=inbound.user_id or inbound.chat_id,
                    display_name=inbound.display_name,
                )
                queued = bool(says)
                _clear_unreachable(session, channel=channel, chat_id=inbound.chat_id)
            for index, say in enumerate(inbound.replies):
                enqueue(
                    session,
                    channel=channel,
                    chat_id=inbound.chat_id,
                    message=say,
                    idempotency_key=f"{channel}:{row.update_id}:channel:{index}",
                    priority=PRIORITY_REPLY,
                )
                queued = True
            current.status = "done" if (inbound.event is not None or inbound.replies) else "ignored"
            current.processed_at = now
            current.attempts += 1
            current.error = None
            session.add(current)
            session.commit()
            return "queued" if queued else "done"

    def _next_pending_in(self, session: Session, channel: str, chat_key: str) -> int | None:
        rows = session.exec(
            select(InboxUpdate.id, InboxUpdate.update_id).where(
                InboxUpdate.channel == channel,
                InboxUpdate.chat_key == chat_key,
                InboxUpdate.status == "pending",
            )
        ).all()
        if not rows:
            return None
        return min(rows, key=lambda r: self._order_key(channel, r[1], r[0] or 0))[0]

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


def _clear_unreachable(session: Session, *, channel: str, chat_id: str) -> None:
    """Someone who writes to us can be written to again."""
    identity = session.exec(
        select(ChatIdentity).where(ChatIdentity.channel == channel, ChatIdentity.chat_id == chat_id)
    ).first()
    if identity is None or identity.person_id is None:
        return
    person = session.get(Person, identity.person_id)
    if person is not None and person.unreachable_at is not None:
        person.unreachable_at = None
        person.unreachable_reason = None
        session.add(person)
