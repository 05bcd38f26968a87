"""Background work of the serve process: inbox worker, outbox senders, scheduler.

Filled in by the channel issues; start() and stop() are called from the FastAPI lifespan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from models.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    tasks: list[Any] = field(default_factory=list)

    async def start(self) -> None:
        """Start background work for the channels that are on."""

    async def stop(self) -> None:
        """Stop background work; queued rows stay in the database for the next start."""
