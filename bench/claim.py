"""Micro-benchmark of the outbox sender's claim alone (bot/outbox.py OutboxSender._claim), no network.

    python bench/claim.py                                             # SQLite
    python bench/claim.py postgresql://root@127.0.0.1:5432/test       # PostgreSQL (a scratch database)
    python bench/claim.py "" --prof                                   # SQLite, with cProfile's top functions

40,000 queued replies to 40,000 chats; 400 claims of 64 rows, each carrying the marks of the previous claim's
rows, as the sender makes them with the rate limit lifted. Prints the wall time per claim and per row. This is
what the eighth session measured before and after compiling the claim's statements once (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.outbound import database, queue, sender_for  # noqa: E402

CLAIMS, WANT, ROWS = 400, 64, 40_000


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None
    profile = cProfile.Profile() if "--prof" in sys.argv else None
    with contextlib.ExitStack() as stack:
        engine, version = stack.enter_context(database(url))
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
