"""Background work of the serve process: inbox worker, outbox senders, Telegram webhook setup or polling.

start() and stop() are called from the FastAPI lifespan. Channels that are off (no token) start nothing.
The "web" channel (the simulator) needs no sender: the simulator reads its outbox rows itself.
Other channels (Zalo) plug in with ``add_channel()`` before start().
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from bot.inbox import InboxWorker, Normaliser
from bot.outbox import OutboxSender, Transport
from bot.scheduler import start_scheduler, stop_scheduler
from models.settings import Settings

log = logging.getLogger("hoctap.runtime")

PARTS = ("inbox", "outbox")


def settle_heap() -> None:
    """Once a server process has started (`serve`'s lifespan, a `hoctap worker`): collect, then move every
    object alive now — modules, the flows' catalog and criteria sets, compiled statements: 120,000–220,000 per process —
    to the collector's permanent generation (gc.freeze), so that its full collections no longer walk them.
    bench/inbound.py (SQLite, 3 processes, 500 updates/s) found full collections of 45–85 ms in every
    process; one in the inbox worker holds the batch, SQLite's write lock with it, and the webhook's answers
    behind it. Objects frozen are still freed when their last reference goes; only cycles among them stay."""
    gc.collect()
    gc.freeze()
    log.info("start-up objects frozen: %s", gc.get_freeze_count())


@dataclass
class _ExtraChannel:
    normalise: Normaliser
    transport: Transport | None
    ordered_ids: bool
    rate_per_second: float | None
    close: Callable[[], Awaitable[None]] | None


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    tasks: list[Any] = field(default_factory=list)
    inbox: InboxWorker | None = None
    senders: dict[str, OutboxSender] = field(default_factory=dict)
    telegram: Any = None  # bot.telegram.TelegramChannel when on
    extra: dict[str, _ExtraChannel] = field(default_factory=dict)
    background: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    # processes of a split serve (bot/worker.py): where the inbox worker or the senders run in another
    # process, wake_inbox / wake_outbox ring that process instead
    external_wake: Callable[[], None] | None = None
    external_outbox_wake: Callable[[], None] | None = None
    # a `hoctap worker` process (no web app in it): the inbox worker commits larger batches (see start())
    worker_process: bool = False

    def add_channel(
        self,
        name: str,
        *,
        normalise: Normaliser,
        transport: Transport | None = None,
        ordered_ids: bool = False,
        rate_per_second: float | None = None,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Register another channel's normaliser (and sender transport) before start(); ``close`` (its HTTP
        clients) is awaited at the end of stop(), whichever parts this process ran."""
        self.extra[name] = _ExtraChannel(normalise, transport, ordered_ids, rate_per_second, close)

    def add_background(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """A long-running coroutine (a channel's polling loop, a token refresher) started by start() and
        cancelled by stop(); e.g. ``runtime.add_background("zalo", lambda: ch.run(on_stored=runtime.wake_inbox))``.
        """
        self.background[name] = run

    async def start(self, parts: Collection[str] = PARTS) -> None:
        """Start background work for the channels that are on: every part, or (bot/worker.py) only "inbox"
        (the inbox worker, channel setup and polling, background coroutines) or only "outbox" (the senders
        and the scheduler)."""
        # httpx logs every request URL at INFO, and Telegram URLs contain the bot token
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpcore").setLevel(logging.WARNING)
        inbox, outbox = "inbox" in parts, "outbox" in parts
        # Alone in its process, the inbox worker commits batches of ~60 ms (48 rows at least) instead of ~20 ms
        # (16): fewer heads queries, lock turns and commits per update. bench/inbound.py, 3 processes: PostgreSQL
        # 363 → 465 and 253 → 365 updates/s end to end (two pairs, backlog drained); SQLite mixed, within the
        # VM's noise (4 pairs: window 470 vs 464/s, drained 582 → 622/s, p99 answer at 500/s no worse; see
        # docs/performance.md). In serve's own process (WORKER_PROCESSES=0) a batch holds
        # the GIL and SQLite's write lock that the webhook needs: there the larger batches lost (SQLite 362 →
        # 294/s, p99 answer 285 → 382 ms), so the defaults stay.
        sizing = {"batch_seconds": 0.06, "min_batch": 48} if self.worker_process else {}
        self.inbox = (InboxWorker(engine=self.engine, settings=self.settings, on_outbox=self.wake_outbox, **sizing)
                      if inbox else None)
        self.senders = {}
        if self.settings.telegram_enabled:
            from bot.telegram import CHANNEL, TelegramChannel

            self.telegram = TelegramChannel(settings=self.settings, engine=self.engine)
            if self.inbox is not None:
                self.inbox.add_channel(CHANNEL, self.telegram.normalise, ordered_ids=True)
                self.tasks.append(asyncio.create_task(self._run_telegram(), name="telegram"))
            if outbox:
                self.senders[CHANNEL] = self._sender(CHANNEL, self.telegram.transport)
        for name, extra in self.extra.items():
            if self.inbox is not None:
                self.inbox.add_channel(name, extra.normalise, ordered_ids=extra.ordered_ids)
            if outbox and extra.transport is not None:
                self.senders[name] = self._sender(name, extra.transport, extra.rate_per_second)
        if inbox:
            for name, run in self.background.items():
                self.tasks.append(asyncio.create_task(_guarded(name, run), name=f"background-{name}"))
        for name, sender in self.senders.items():
            self.tasks.append(asyncio.create_task(sender.run(), name=f"outbox-{name}"))
        if self.inbox is not None:
            await self.inbox.warm_up()  # before settle_heap() in the processes' start-up
            self.tasks.append(asyncio.create_task(self.inbox.run(), name="inbox"))
        if outbox:
            await start_scheduler(self)

    def _sender(self, channel: str, transport: Transport, rate: float | None = None) -> OutboxSender:
        return OutboxSender(
            engine=self.engine,
            channel=channel,
            transport=transport,
            rate_per_second=rate or self.settings.telegram_rate_per_second,
            per_chat_interval=self.settings.per_chat_interval_seconds,
        )

    async def _run_telegram(self) -> None:
        """getMe, then setWebhook (public URL) or long polling; retried while Telegram is unreachable."""
        channel = self.telegram
        delay = 1.0
        while True:
            try:
                await channel.initialize()
                if self.settings.public_base_url:
                    await channel.setup_webhook()
                    return
                await channel.poll(on_stored=self.wake_inbox)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying; the token may be wrong, say so once
                log.warning("telegram: setup failed (%s); retrying in %.0fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 300.0)

    def wake_inbox(self) -> None:
        if self.inbox is not None:
            self.inbox.wake()
        elif self.external_wake is not None:
            self.external_wake()

    def wake_outbox(self, channel: str | None = None) -> None:
        if not self.senders and self.external_outbox_wake is not None:
            self.external_outbox_wake()  # the senders run in another process (bot/worker.py)
            return
        for name, sender in self.senders.items():
            if channel is None or name == channel:
                sender.wake()

    async def stop(self) -> None:
        """Stop background work; queued rows stay in the database for the next start."""
        await stop_scheduler(self)
        if self.inbox is not None:
            self.inbox.stop()
        for sender in self.senders.values():
            sender.stop()
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            if task.get_name() == "telegram" or task.get_name().startswith("background-"):
                task.cancel()  # polling loops and setup: nothing to finish
        if tasks:
            # the worker and senders finish what is in flight (a sender puts unsent claims back)
            _, pending = await asyncio.wait(tasks, timeout=10.0)
            for task in pending:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.telegram is not None:
            await self.telegram.shutdown()
            self.telegram = None
        # after the senders and the inbox worker: a process of the "outbox" part (bot/worker.py) uses a
        # channel's transport without running its background work, so closing there was missed
        for name, extra in self.extra.items():
            if extra.close is not None:
                try:
                    await extra.close()
                except Exception as exc:  # noqa: BLE001 - closing is best effort; the others still close
                    log.warning("channel %s: close failed (%s)", name, type(exc).__name__)


async def _guarded(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run a background coroutine; log (without details that could hold personal data) if it dies."""
    try:
        await run()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.error("background task %s stopped (%s)", name, type(exc).__name__)
