"""Micro-benchmark of the outbox sender's claim alone (bot/outbox.py OutboxSender._claim), no network.

    python bench/claim.py                                             # SQLite
    python bench/claim.py postgresql://root@127.0.0.1:5432/test       # PostgreSQL (a scratch database)
    python bench/claim.py "" --prof                                   # SQLite, with cProfile's top functions
    python bench/claim.py "" --history 50                             # each chat with 50 sent rows before

40,000 queued replies to 40,000 chats; 400 claims of 64 rows, each carrying the marks of the previous claim's
rows, as the sender makes them with the rate limit lifted. Prints the wall time per claim and per row. This is
what the eighth session measured before and after compiling the claim's statements once (docs/performance.md).
``--history N`` first gives every chat N sent rows (its history: a season's answers and reminders), which the
claim must not read (ninth session: with the status outside the index condition it read them all).
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.outbound import CHAT0, database, queue, sender_for  # noqa: E402

CLAIMS, WANT, ROWS = 400, 64, 40_000


def sent_history(engine: Any, chats: int, per_chat: int) -> None:
    """``per_chat`` sent rows for each chat, written by the database itself (millions of rows), then ANALYZE."""
    from sqlalchemy import bindparam, text

    from models.tables import OutboxMessage

    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO outboxmessage (idempotency_key, channel, chat_id, payload, priority, status, attempts,"
            " not_before, created_at, sent_at) WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g"
            " WHERE i < :n - 1) SELECT 'old:' || CAST(i AS TEXT), 'telegram', CAST(:chat0 + i % :chats AS TEXT),"
            " '{\"text\": \"x\"}', 0, 'sent', 1, :now, :now, :now FROM g"
        ).bindparams(bindparam("now", type_=OutboxMessage.__table__.c.not_before.type)),  # type: ignore[attr-defined]
            {"n": chats * per_chat, "chats": chats, "chat0": CHAT0, "now": now})
    with engine.connect() as conn:
        conn.execute(text("ANALYZE outboxmessage"))
        conn.commit()


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None
    profile = cProfile.Profile() if "--prof" in sys.argv else None
    with contextlib.ExitStack() as stack:
        engine, version = stack.enter_context(database(url))
        history = int(sys.argv[sys.argv.index("--history") + 1]) if "--history" in sys.argv else 0
        if history:
            sent_history(engine, ROWS, history)
        queue(engine, ROWS, 1, "claim")
        _channel, sender = sender_for(engine, "http://127.0.0.1:9", 100_000.0, 0.0)  # never called
        marks: list = []
        spent, claimed = 0.0, 0
        for _ in range(CLAIMS):
            started = time.perf_counter()
            if profile:
                profile.enable()
            rows, _wait = sender._claim(WANT, marks)
            if profile:
                profile.disable()
            spent += time.perf_counter() - started
            claimed += len(rows)
            now = datetime.now(UTC)
            marks = [(row.id, row.chat_id, now, "1") for row in rows]
        print(f"{version}: claims of {WANT}: {1000 * spent / CLAIMS:.2f} ms each, "
              f"{1e6 * spent / max(claimed, 1):.1f} µs per row ({claimed} rows claimed)")
        if profile:
            pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
