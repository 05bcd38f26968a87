"""Inbound benchmark: webhook → verified → stored → flow step → reply queued → reply at the fake Bot API.

    python bench/inbound.py                                   # SQLite, then nothing else
    python bench/inbound.py --database-url postgresql://root@127.0.0.1:5432/test     # SQLite and PostgreSQL
    python bench/inbound.py --no-sqlite --database-url … --duration 120 --repeat 2

What runs (all on 127.0.0.1, each a process of its own):
- the fake Bot API (bench/tgfake.py --lean: a raw asyncio server that answers every call OK and records call
  times; the tests' Starlette FakeTelegram cost 0.25 ms of CPU per update here, a fifth of the 1.33 ms
  budget, against 0.05 ms);
- `hoctap serve --no-demo` (uvicorn, the whole app: webhooks, inbox worker, outbox sender, scheduler) with
  TELEGRAM_BOT_TOKEN, TELEGRAM_API_BASE_URL = the fake, PUBLIC_BASE_URL set (webhook mode),
  TELEGRAM_RATE_PER_SECOND high; the reminder campaigns are disabled in its DATA_DIR so that no catch-up
  fan-out mixes into the figures;
- the baseline: a bare FastAPI endpoint (bench/bare_app.py) under the same uvicorn settings that only
  parses the same JSON and answers {"ok": true};
- load: wrk (C, 64 connections, closed loop) for the throughput runs, the same Lua script for the app and
  the baseline; an asyncio open-loop generator in this process for the latency run.

Data: N families seeded in bulk (person with consent, household role, household, Telegram chat, the year's
registration, an assessment in draft with its first answer saved, the conversation at question 2). Each
posted update is the family's next answer, as Telegram would send it: free text ("có", "70%") or a button
press (callback_query on the bot's question message), the next question as the reply; a family with
nothing left to answer asks /trangthai. Update k goes to family k mod N, so one chat never has two
updates in flight (as with Telegram, which waits for our answer before sending a chat's next update).

Figures: (a) accepted updates/s (wrk) and end-to-end updates/s (replies at the fake within the window, and
overall until the backlog drained) vs the baseline's requests/s; (b) at an offered 500 updates/s, open
loop: p50/p99 of the webhook answer (from the scheduled send time, so no coordinated omission) and of POST
→ reply delivered; (c) peak RSS of the serve process during (a); (d) CPU time per update of each part
(web process, worker processes, fake, PostgreSQL, wrk) from the load's start until drained: on 2 cores the
parts together must stay under 2,000 ms / 1,500 = 1.33 ms for the throughput target. Load average with
every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PY,
    ROOT,
    free_port,
    load,
    load1,
    machine,
    percentile,
    pg_database,
    pg_version,
    process,
    redact,
    sqlite_version,
    write_section,
)

TOKEN = "123456:TEST-fake-token_abcdefghijklmnopqrstuvwxyz"
SECRET = "bench-secret"
CHAT0 = 10_000_000
CAMPAIGNS = ("registration", "registration_followup", "assessment", "assessment_followup", "village_digest",
             "officer_digest")
OUT = ROOT / "bench" / "out"
LUA = r"""
local templates = {}
local counter = 0
local N, BASE, FAM0, NTHREADS
local headers = {["Content-Type"] = "application/json", ["X-Telegram-Bot-Api-Secret-Token"] = "__SECRET__"}

function setup(thread)
  thread:set("tid", THREADS_SEEN or 0)
  THREADS_SEEN = (THREADS_SEEN or 0) + 1
end

function init(args)
  for line in io.lines(args[1]) do templates[#templates + 1] = line end
  N = tonumber(args[2]); BASE = tonumber(args[3]); FAM0 = tonumber(args[4]); NTHREADS = tonumber(args[5])
  K0 = tonumber(args[6])
end

function request()
  local k = K0 + counter * NTHREADS + tid
  counter = counter + 1
  local f = k % N
  local j = math.floor(k / N)
  local t = templates[math.min(j + 1, #templates)]
  local body = t:gsub("__UID__", tostring(BASE + k))
  body = body:gsub("__CHAT__", tostring(__CHAT0__ + FAM0 + f))
  body = body:gsub("__MID__", tostring(k + 1))
  return wrk.format("POST", "/webhooks/telegram", headers, body)
end

function done(summary, latency, requests)
  io.write(string.format("WRKJSON {\"requests\": %d, \"duration_us\": %d, \"status_errors\": %d, " ..
    "\"connect\": %d, \"read\": %d, \"write\": %d, \"timeout\": %d, \"p50_us\": %d, \"p99_us\": %d}\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


# --- seeding ------------------------------------------------------------------------------------------------


def _answer_plan() -> list[tuple[str, str, str]]:
    """(kind, text or button value, label) for every askable gia_dinh criterion, in order.

    Free text where a family would type it, a button press otherwise; answers that earn points only where
    the criterion asks for no photo (so the family stays in the question flow, no evidence step)."""
    from flows.criteria import load_sets, score_criterion

    cset = load_sets()["gia_dinh"]
    plan: list[tuple[str, str, str]] = []
    for n, c in enumerate(x for x in cset.criteria if not x.computed):
        earn_ok = c.evidence == "none"

        def fits(value: Any, c: Any = c, earn_ok: bool = earn_ok) -> bool:
            return earn_ok == (score_criterion(c, value).points > 0) or not earn_ok and value in (False, 0)

        if c.answer == "yes_no":
            if earn_ok:
                plan.append(("text", "có" if n % 2 else "co", ""))
            else:
                plan.append(("button", "no", "Không"))
        elif c.answer == "choice":
            option = next((o for o in c.options if fits(o.value)), c.options[0])
            plan.append(("button", f"opt:{option.value}", option.label))
        elif c.answer == "share":
            value = next((v for v in (80, 60, 40, 20, 0) if fits(v)), 0)
            plan.append(("text", f"{value}%", ""))
        else:
            plan.append(("text", str(int(c.min or 0)), ""))
    return plan


def seed(url: str, n: int, settings: Any) -> dict[str, Any]:
    """N families in the middle of the gia_dinh assessment; returns the update templates and reply counts."""
    from alembic import command as alembic_command
    from sqlalchemy import insert, text
    from sqlmodel import Session, SQLModel, select

    import models.tables as T
    from bot.telegram import callback_data
    from bot.uow import process_event
    from flows.types import Event
    from models import migrate
    from models.db import make_engine

    started = time.perf_counter()
    engine = make_engine(url)
    # the tables as the models define them, stamped at the newest migration (models may be ahead of the
    # migrations while others work on them); `hoctap serve` then finds nothing to upgrade
    SQLModel.metadata.create_all(engine)
    with engine.begin() as conn:
        alembic_command.stamp(migrate.alembic_config(connection=conn), "head")
    now = datetime.now(UTC)
    villages = max(1, n // 200)

    def bulk(table: Any, rows: list[dict[str, Any]]) -> None:
        with engine.begin() as conn:
            for i in range(0, len(rows), 10_000):
                conn.execute(insert(table), rows[i:i + 10_000])

    bulk(T.Province.__table__, [{"code": 31, "name": "Hải Phòng"}])
    bulk(T.Commune.__table__, [{"code": 1, "name": "Bench", "province_code": 31, "is_demo": False,
                                "targets": {}, "created_at": now}])
    bulk(T.Village.__table__, [{"id": v, "commune_code": 1, "name": f"Thôn {v}", "invite_code": f"V{v}",
                                "status": "active", "created_at": now} for v in range(1, villages + 1)])
    bulk(T.Person.__table__, [{"id": i, "name": f"Nguyễn Văn Người {i}", "commune_code": 1,
                               "village_id": 1 + i % villages, "consent_at": now, "created_at": now}
                              for i in range(1, n + 2)])
    bulk(T.RoleGrant.__table__, [{"id": i, "person_id": i, "role": "household", "status": "granted",
                                  "commune_code": 1, "village_id": 1 + i % villages, "created_at": now}
                                 for i in range(1, n + 2)])
    bulk(T.Household.__table__, [{"id": i, "commune_code": 1, "village_id": 1 + i % villages, "head_person_id": i,
                                  "head_name": f"Nguyễn Văn Người {i}", "members": 4, "has_phone": True,
                                  "created_at": now} for i in range(1, n + 2)])
    bulk(T.ChatIdentity.__table__, [{"id": i, "channel": "telegram", "user_id": str(CHAT0 + i),
                                     "chat_id": str(CHAT0 + i), "person_id": i, "display_name": "Lan",
                                     "created_at": now} for i in range(1, n + 2)])
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("person", "rolegrant", "household", "chatidentity", "village"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))

    # the template family (the last one, n + 1): start the assessment and answer question 1 for real
    plan = _answer_plan()
    tpl = n + 1
    chat = str(CHAT0 + tpl)

    def step(event: Event, key: str) -> list[Any]:
        with Session(engine, expire_on_commit=False) as session:
            says = process_event(session, channel="telegram", chat_id=chat, event=event, now=datetime.now(UTC),
                                 settings=settings, idempotency_base=f"seed:{key}", user_id=chat,
                                 display_name="Lan")
            session.commit()
        return says

    def event_of(kind: str, value: str, label: str) -> Event:
        return Event(kind="button", value=value, text=label) if kind == "button" else Event(kind="text", text=value)

    first = step(Event(kind="command", text="danhgia"), "start")
    assert first and first[-1].text.startswith("Câu 1/"), [s.text for s in first]
    previous = step(event_of(*plan[0]), "q1")
    with Session(engine) as session:
        state = session.exec(select(T.Conversation.state).where(T.Conversation.identity_id == tpl)).one()
        registrations = [r.model_dump(exclude={"id"}) for r in session.exec(
            select(T.Registration).where(T.Registration.subject_id == tpl, T.Registration.subject_type == "household"))]
        assessment = session.exec(select(T.Assessment).where(T.Assessment.subject_id == tpl,
                                                             T.Assessment.subject_type == "household")).one()
        assessment_row = assessment.model_dump(exclude={"id"})
    state_json = json.dumps(state, ensure_ascii=False)
    assert f'"household:{tpl}"' in state_json, state_json

    # update templates for questions 2.. and the /trangthai after the last one; replies per update
    templates: list[str] = []
    replies: list[int] = []
    date = int(time.time())
    sequence = [*plan[1:], ("text", "/trangthai", "")]
    for index, (kind, value, label) in enumerate(sequence):
        if kind == "button":
            buttons = [{"text": b.label, "callback_data": callback_data(b.value)} for b in previous[-1].buttons]
            update = {"update_id": "__UID__", "callback_query": {
                "id": "cq__UID__", "from": {"id": "__CHAT__", "is_bot": False, "first_name": "Lan", "language_code": "vi"},
                "chat_instance": "ci__CHAT__",
                "message": {"message_id": "__MID__", "date": date,
                            "chat": {"id": "__CHAT__", "type": "private", "first_name": "Lan"},
                            "from": {"id": 123456, "is_bot": True, "first_name": "Học tập", "username": "hoctap_bot"},
                            "text": previous[-1].text[:200], "reply_markup": {"inline_keyboard": [[b] for b in buttons]}},
                "data": callback_data(value)}}
        else:
            message: dict[str, Any] = {"message_id": "__MID__", "date": date,
                                       "chat": {"id": "__CHAT__", "type": "private", "first_name": "Lan"},
                                       "from": {"id": "__CHAT__", "is_bot": False, "first_name": "Lan",
                                                "language_code": "vi"}, "text": value}
            if value.startswith("/"):
                message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(value)}]
            update = {"update_id": "__UID__", "message": message}
        body = json.dumps(update, ensure_ascii=False, separators=(",", ":"))
        body = re.sub(r'"(__UID__|__CHAT__|__MID__)"', r"\1", body)  # numbers, not strings
        templates.append(body)
        # validate on the template family: each answer gets the next question (or the summary)
        ev = event_of(kind, value, label)
        if kind == "text" and value.startswith("/"):
            ev = Event(kind="command", text=value[1:])
        previous = step(ev, f"v{index}")
        assert previous, f"no reply to {value!r}"
        assert not any("lỗi" in s.text.lower() for s in previous), [s.text for s in previous]
        replies.append(len(previous))

    # clone: every family at question 2, like the template family was
    reg_rows, asm_rows, conv_rows = [], [], []
    for i in range(1, n + 1):
        for r in registrations:
            reg_rows.append({**r, "subject_id": i})
        asm_rows.append({**assessment_row, "subject_id": i, "answered_by": i})
        conv_rows.append({"identity_id": i, "state": json.loads(state_json.replace(f'"household:{tpl}"', f'"household:{i}"')),
                          "updated_at": now})
    bulk(T.Registration.__table__, reg_rows)
    bulk(T.Assessment.__table__, asm_rows)
    bulk(T.Conversation.__table__, conv_rows)
    with engine.begin() as conn:  # the template family's own rows are not part of the run
        conn.execute(text("DELETE FROM outboxmessage"))
        conn.execute(text("DELETE FROM inboxupdate"))
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))
    engine.dispose()
    return {"templates": templates, "replies": replies, "seconds": time.perf_counter() - started,
            "plan": [f"{k}:{v}" for k, v, _ in sequence]}


# --- processes ------------------------------------------------------------------------------------------------


def serve_env(data_dir: Path, url: str, fake_url: str, public: str, worker_processes: int = 0) -> dict[str, str]:
    (data_dir / "campaigns").mkdir(parents=True, exist_ok=True)
    (data_dir / "campaigns" / "default.yaml").write_text(
        "campaigns:\n" + "".join(f"  {c}: {{enabled: false}}\n" for c in CAMPAIGNS), encoding="utf-8")
    return {
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": url if url.startswith("postgresql") else "",
        "PUBLIC_BASE_URL": public,
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_BASE_URL": fake_url,
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
        "TELEGRAM_RATE_PER_SECOND": "100000",
        "DEMO": "false",
        "WORKER_PROCESSES": str(worker_processes),
        "PYTHONUNBUFFERED": "1",
    }


def tree_rss(pid: int) -> int:
    """RSS of a process and its children (the worker processes of WORKER_PROCESSES), summed: shared pages
    count twice, so this overstates the pair."""
    proc = psutil.Process(pid)
    return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.samples: list[int] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                rss = self.proc.memory_info().rss
                for child in self.proc.children(recursive=True):
                    rss += child.memory_info().rss
            except psutil.Error:
                return
            self.samples.append(rss)
            self.peak = max(self.peak, rss)
            time.sleep(0.25)


class CpuMeter:
    """CPU seconds (user + system) by part, between two ``snapshot()`` calls: the web process, each worker
    process by its ``--role``, the fake Bot API, PostgreSQL's processes, and this process's finished children
    (wrk, via getrusage). A process that starts between the snapshots counts whole, one that ends is missed;
    PostgreSQL's backends live as long as the pools' connections, so they are in both."""

    def __init__(self, serve_pid: int, fake_pid: int) -> None:
        self.serve_pid, self.fake_pid = serve_pid, fake_pid

    def snapshot(self) -> dict[tuple[str, int], float]:
        out: dict[tuple[str, int], float] = {}

        def add(role: str, proc: psutil.Process) -> None:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[(role, proc.pid)] = t.user + t.system

        serve = psutil.Process(self.serve_pid)
        add("web", serve)
        for child in serve.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                cmd = child.cmdline()
                role = cmd[cmd.index("--role") + 1] if "--role" in cmd else "child"
                add(f"worker {role}", child)
        add("fake Bot API", psutil.Process(self.fake_pid))
        for proc in psutil.process_iter(["name"]):
            if (proc.info["name"] or "").startswith("postgres"):
                add("PostgreSQL", proc)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        out[("load tool", 0)] = children.ru_utime + children.ru_stime
        return out

    @staticmethod
    def spent(before: dict[tuple[str, int], float], after: dict[tuple[str, int], float]) -> dict[str, float]:
        parts: dict[str, float] = {}
        for key, value in after.items():
            parts[key[0]] = parts.get(key[0], 0.0) + value - before.get(key, 0.0)
        return {role: max(0.0, seconds) for role, seconds in parts.items()}


def cpu_cell(run: dict[str, Any]) -> str:
    """CPU ms per update by part, largest first."""
    per = run.get("cpu_ms")
    if not per:
        return "—"
    return ", ".join(f"{role} {ms:.2f}" for role, ms in sorted(per.items(), key=lambda kv: -kv[1]) if ms >= 0.005) + \
        f" (all {sum(per.values()):.2f})"


def fake_stats(fake_url: str) -> list[list[Any]]:
    return httpx.get(f"{fake_url}/_bench/stats", timeout=60).json()["calls"]


@contextlib.contextmanager
def connected(url: str) -> Iterator[Any]:
    """A connection of an engine of its own, disposed afterwards (the benchmark's looks at the database)."""
    from models.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def backlog(url: str) -> tuple[int, int]:
    """(inbox rows pending, outbox rows not sent yet)."""
    from sqlalchemy import text

    with connected(url) as conn:
        pending = conn.execute(text("SELECT count(*) FROM inboxupdate WHERE status = 'pending'")).scalar()
        queued = conn.execute(text("SELECT count(*) FROM outboxmessage WHERE status IN ('queued', 'sending')")).scalar()
    return int(pending or 0), int(queued or 0)


def statuses(url: str) -> dict[str, Any]:
    from sqlalchemy import text

    with connected(url) as conn:
        inbox = dict(conn.execute(text("SELECT status, count(*) FROM inboxupdate GROUP BY status")).all())
        outbox = dict(conn.execute(text("SELECT status, count(*) FROM outboxmessage GROUP BY status")).all())
        campaigns = conn.execute(text("SELECT count(*) FROM outboxmessage WHERE campaign IS NOT NULL")).scalar()
    return {"inbox": inbox, "outbox": outbox, "campaign_rows": campaigns}


# --- load -----------------------------------------------------------------------------------------------------


def run_wrk(port: int, script: Path, templates: Path, *, families: int, base: int, fam0: int,
            duration: int, connections: int, threads: int, k0: int = 0) -> dict[str, Any]:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script),
            f"http://127.0.0.1:{port}/webhooks/telegram", "--", str(templates), str(families), str(base),
            str(fam0), str(threads), str(k0)]
    started = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    result = json.loads(line.removeprefix("WRKJSON "))
    result["started"] = started
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["ok"] = result["requests"] - result["status_errors"]
    return result


async def open_loop(port: int, bodies: list[tuple[int, bytes]], rate: float) -> list[tuple[int, float, float, int]]:
    """Send each body at its scheduled time (i / rate), on an idle keep-alive connection or a new one.

    Returns (chat, scheduled monotonic time, answered monotonic time, status) per request."""
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    results: list[tuple[int, float, float, int]] = []
    head = (f"POST /webhooks/telegram HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-Telegram-Bot-Api-Secret-Token: {SECRET}\r\n").encode()

    async def one(chat: int, sched: float, body: bytes) -> None:
        if idle:
            reader, writer = idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await reader.readuntil(b"\r\n")
        headers = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in headers.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        answered = time.monotonic()
        results.append((chat, sched, answered, int(status_line.split()[1])))
        idle.append((reader, writer))

    tasks = []
    t0 = time.monotonic() + 0.5
    for i, (chat, body) in enumerate(bodies):
        sched = t0 + i / rate
        delay = sched - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(chat, sched, body)))
    await asyncio.gather(*tasks, return_exceptions=True)
    for _reader, writer in idle:
        writer.close()
    return results


def render(template: str, uid: int, chat: int, mid: int) -> bytes:
    return template.replace("__UID__", str(uid)).replace("__CHAT__", str(chat)).replace("__MID__", str(mid)).encode()


# --- one database ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    seed_s: float = 0.0
    families: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)  # throughput runs
    latency: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def pg_writes(url: str) -> dict[str, float]:
    """PostgreSQL: the server's WAL counters (records, bytes, full-page images) and the database's updates and HOT
    updates (written in place, no index entries) so far; {} on SQLite. Counts, not times: a change in the rows
    written per update shows here whatever the machine's speed at the moment."""
    if not url.startswith("postgresql"):
        return {}
    from sqlalchemy import text

    with connected(url) as conn:
        wal = conn.execute(text("SELECT wal_records, wal_bytes, wal_fpi FROM pg_stat_wal")).one()
        upd = conn.execute(text("SELECT coalesce(sum(n_tup_upd), 0), coalesce(sum(n_tup_hot_upd), 0)"
                                " FROM pg_stat_user_tables")).one()
    return {"wal_records": float(wal[0]), "wal_bytes": float(wal[1]), "wal_fpi": float(wal[2]),
            "updates": float(upd[0]), "hot": float(upd[1])}


def writes_cell(run: dict[str, Any]) -> str:
    """PostgreSQL's writes per update between the load's start and the drain (WAL of the whole server)."""
    w = run.get("writes_per_update")
    if not w:
        return ""
    hot = w["hot"] / w["updates"] if w["updates"] else 0.0
    return (f"WAL {w['wal_records']:.1f} records, {w['wal_bytes'] / 1024:.1f} kB ({w['wal_fpi']:.2f} full pages);"
            f" row updates {w['updates']:.1f}, {hot:.0%} HOT")


def any_left(url: str) -> bool:
    """Whether an inbox row is pending or an outbox row unsent: index lookups. Counting them (backlog()) took
    PostgreSQL 60 ms a time with tens of thousands of rows sent, charged to the app's CPU every half second of
    the drain."""
    from sqlalchemy import text

    with connected(url) as conn:
        return bool(conn.execute(text(
            "SELECT EXISTS (SELECT 1 FROM inboxupdate WHERE status = 'pending')"
            " OR EXISTS (SELECT 1 FROM outboxmessage WHERE status = 'queued')"
            " OR EXISTS (SELECT 1 FROM outboxmessage WHERE status = 'sending')")).scalar())


def wait_drained(url: str, limit: float) -> float:
    """Wait (at most ``limit`` s) until no inbox row is pending and no outbox row is queued; seconds waited."""
    started = time.monotonic()
    while any_left(url):
        if time.monotonic() - started > limit:
            pending, queued = backlog(url)
            print(f"    backlog not drained after {limit:.0f}s: {pending:,} inbox pending, {queued:,} outbox queued")
            break
        time.sleep(0.5)
    return time.monotonic() - started


def purge(url: str) -> None:
    """Drop a backlog left by a phase (rows marked ignored/failed) so that the next phase starts clean."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from models.db import make_engine

    engine = make_engine(url)
    try:
        for attempt in range(5):
            # the app's workers are still running: on PostgreSQL this UPDATE of every pending row can meet a
            # batch that holds some of them (a deadlock, this statement the victim): then again
            try:
                with engine.begin() as conn:
                    conn.execute(text("UPDATE inboxupdate SET status = 'ignored' WHERE status = 'pending'"))
                    conn.execute(text("UPDATE outboxmessage SET status = 'failed' WHERE status IN ('queued', 'sending')"))
                break
            except OperationalError:
                if attempt == 4:
                    raise
                time.sleep(1.0)
    finally:
        engine.dispose()
    time.sleep(1.0)


def latency_bodies(seeded: dict[str, Any], fam_a: int, lat_n: int, repeat: int) -> list[tuple[int, bytes]]:
    """(chat, body) of the latency run: the first answer of each family kept for it."""
    bodies = []
    for i in range(lat_n):
        fam = fam_a + 1 + i
        bodies.append((CHAT0 + fam, render(seeded["templates"][0], 5 * 10**8 + repeat * 10**7 + i, CHAT0 + fam, i + 1)))
    return bodies


def bare_latency(args: argparse.Namespace, port: int, seeded: dict[str, Any], fam_a: int, lat_n: int,
                 repeat: int) -> dict[str, float]:
    """The latency run's baseline: the same bodies at the same offered rate from the same generator, against
    the bare FastAPI endpoint. What the machine, the generator and uvicorn alone cost an answer."""
    answered = asyncio.run(open_loop(port, latency_bodies(seeded, fam_a, lat_n, repeat), args.rate))
    answer_ms = [(a - s) * 1000 for _c, s, a, _st in answered]
    bare = {"bare_answer_p50": percentile(answer_ms, 50), "bare_answer_p99": percentile(answer_ms, 99),
            "bare_answer_max": max(answer_ms), "bare_load": load1()}
    print(f"  [{repeat + 1}] baseline open loop {args.rate:.0f}/s × {args.latency_duration}s: answer p50 "
          f"{bare['bare_answer_p50']:.1f} ms p99 {bare['bare_answer_p99']:.1f} ms (load {bare['bare_load']:.1f})",
          flush=True)
    return bare


def latency_run(args: argparse.Namespace, port: int, fake_url: str, db_url: str, seeded: dict[str, Any],
                fam_a: int, lat_n: int, repeat: int) -> dict[str, Any]:
    """(b): open loop at args.rate on the families kept for it (one update each: its reply is unambiguous)."""
    httpx.post(f"{fake_url}/_bench/reset")
    time.sleep(0.5)
    answered = asyncio.run(open_loop(port, latency_bodies(seeded, fam_a, lat_n, repeat), args.rate))
    load_b = load1()
    waited = wait_drained(db_url, args.drain_limit)
    calls = fake_stats(fake_url)
    delivered: dict[str, float] = {}
    for method, chat, at, status in calls:
        if method == "sendMessage" and status == 200:
            delivered[chat] = max(delivered.get(chat, 0.0), at)
    inf = float("inf")
    answer_ms = [(a - s) * 1000 for _c, s, a, _st in answered]
    e2e_ms = [(delivered[str(c)] - s) * 1000 if str(c) in delivered else inf for c, s, _a, _st in answered]
    span = max(a for _c, _s, a, _st in answered) - min(s for _c, s, _a, _st in answered)
    lat = {
        "offered": args.rate, "n": len(answered), "achieved": len(answered) / span,
        "non_2xx": sum(1 for *_x, st in answered if st >= 300),
        "answer_p50": percentile(answer_ms, 50), "answer_p99": percentile(answer_ms, 99),
        "answer_max": max(answer_ms), "e2e_p50": percentile(e2e_ms, 50),
        "e2e_p99": percentile(e2e_ms, 99), "e2e_max": max(e2e_ms),
        "delivered": sum(1 for x in e2e_ms if x != inf), "load": load_b, "waited": waited,
        "replies_per_s": sum(1 for x in e2e_ms if x != inf) / max(span + waited, 1e-9),
    }
    print(f"  [{repeat + 1}] open loop {args.rate:.0f}/s × {args.latency_duration}s: answer p50 "
          f"{lat['answer_p50']:.1f} ms p99 {lat['answer_p99']:.1f} ms; POST→reply p50 {ms(lat['e2e_p50'])} "
          f"p99 {ms(lat['e2e_p99'])} ({lat['delivered']:,}/{lat['n']:,} delivered within the run + "
          f"{waited:.0f}s, {lat['non_2xx']} non-2xx); load {load_b:.1f}", flush=True)
    return lat


def left_note(run: dict[str, Any]) -> str:
    return "" if run["drained"] else f" ({run['left']:,} left)"


def ms(value: float) -> str:
    return "not delivered" if value == float("inf") else f"{value:,.1f} ms"


MODES_WORKERS = {"1 process": 0, "2 processes": 1, "3 processes": 2}


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def bench_database(label: str, url: str, args: argparse.Namespace, work: Path) -> Result:
    from models.settings import get_settings

    result = Result(label)
    connections, threads = args.connections, 2
    per_run = int(args.rate_cap * args.duration)  # updates one throughput run can post at most (for N)
    lat_n = int(args.rate * args.latency_duration)
    fam_a = max(2_000, min(args.families, per_run // 9 + 1))
    fam_b = lat_n  # one update per family in the latency run: its reply is unambiguous
    n = fam_a + fam_b
    data_dir = work / slug(label)
    data_dir.mkdir(parents=True, exist_ok=True)
    db_url = url or f"sqlite:///{data_dir / 'hoctap.db'}"
    settings = get_settings(data_dir=data_dir, database_url=url, telegram_bot_token=TOKEN, demo=False)
    print(f"[{label}] seeding {n:,} families …", flush=True)
    seeded = seed(db_url, n, settings)
    result.seed_s, result.families = seeded["seconds"], n
    print(f"  seeded in {seeded['seconds']:.1f}s; updates per family: {', '.join(seeded['plan'])}; "
          f"replies each: {seeded['replies']}", flush=True)
    templates = work / f"templates-{slug(label)}.txt"
    templates.write_text("\n".join(seeded["templates"]) + "\n", encoding="utf-8")
    script = work / "post.lua"
    script.write_text(LUA.replace("__SECRET__", SECRET).replace("__CHAT0__", str(CHAT0)), encoding="utf-8")

    fake_port, app_port, bare_port = free_port(), free_port(), free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    env = serve_env(data_dir, url, fake_url, "https://bench.example", MODES_WORKERS[label.rsplit(", ", 1)[-1]])
    k0 = 0
    with process([PY, "bench/tgfake.py", "--lean", "--port", str(fake_port)], log=work / "fake.log",
                 ready_url=f"{fake_url}/_bench/stats") as fake:
        for repeat in range(args.repeat):
            measure_latency = repeat == 0 or args.latency_each_repeat
            # the same-run baseline: bare FastAPI, same load tool, same bodies
            with process([PY, "bench/bare_app.py", "--port", str(bare_port)], log=work / "bare.log",
                         ready_url=f"http://127.0.0.1:{bare_port}/healthz"):
                time.sleep(1.0)
                base = run_wrk(bare_port, script, templates, families=fam_a, base=10**9, fam0=1,
                               duration=args.duration, connections=connections, threads=threads)
                base_load = load1()
                print(f"  [{repeat + 1}] baseline bare FastAPI: {base['rps']:,.0f} req/s (load {base_load:.1f})",
                      flush=True)
                bare_lat = bare_latency(args, bare_port, seeded, fam_a, lat_n, repeat) if measure_latency else {}
            serve_log = work / f"serve-{slug(label)}-{repeat}.log"
            with process(["hoctap", "serve", "--no-demo", "--host", "127.0.0.1", "--port", str(app_port)],
                         env=env, log=serve_log, ready_url=f"http://127.0.0.1:{app_port}/healthz") as serve:
                time.sleep(2.0)  # setWebhook, scheduler start
                rss_idle = tree_rss(serve.pid)
                if measure_latency:
                    result.latency.append(bare_lat | latency_run(args, app_port, fake_url, db_url, seeded, fam_a, lat_n,
                                                      repeat))
                    purge(db_url)  # whatever the latency run left undelivered must not count below
                httpx.post(f"{fake_url}/_bench/reset")
                sampler = RssSampler(serve.pid)
                sampler.start()
                spy = None
                if args.profile:
                    OUT.mkdir(exist_ok=True)
                    spy = subprocess.Popen(["py-spy", "record", "--pid", str(serve.pid), "--format", "raw",
                                            "--rate", "50", "--duration", str(args.duration), "--nonblocking", "--subprocesses",
                                            "-o", str(OUT / f"inbound-{slug(label)}-{repeat}.txt")],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                meter = CpuMeter(serve.pid, fake.pid)
                cpu_before = meter.snapshot()
                writes_before = pg_writes(db_url)
                run = run_wrk(app_port, script, templates, families=fam_a, base=10**8, fam0=1, k0=k0,
                              duration=args.duration, connections=connections, threads=threads)
                # the next repeat continues each family with its next answer (update ids keep increasing)
                k0 += run["requests"] + 4 * connections
                load_a = load1()
                end = run["started"] + run["duration_us"] / 1e6
                drained = wait_drained(db_url, args.drain_limit)
                cpu = CpuMeter.spent(cpu_before, meter.snapshot())
                writes_after = pg_writes(db_url)
                sampler.running = False
                if spy is not None:
                    spy.wait(timeout=60)
                calls = fake_stats(fake_url)
                sends = sorted(c[2] for c in calls if c[0] == "sendMessage" and c[3] == 200)
                in_window = sum(1 for at in sends if run["started"] <= at <= end)
                per_update = sum(seeded["replies"][:-1]) / len(seeded["replies"][:-1])
                last = sends[-1] if sends else end
                left = backlog(db_url)
                run.update({
                    "load": load_a, "rss_idle": rss_idle, "rss_peak": sampler.peak, "drain_s": drained,
                    "drained": left == (0, 0), "left": left[0],
                    "sends": len(sends), "sends_in_window": in_window,
                    "e2e_window": in_window / per_update / args.duration,
                    "e2e_overall": len(sends) / per_update / max(last - run["started"], 1e-9),
                    "answers": sum(1 for c in calls if c[0] == "answerCallbackQuery"),
                    "baseline_rps": base["rps"], "baseline_load": base_load,
                    "statuses": statuses(db_url),
                })
                # CPU per update from the load's start until drained (or the drain limit), over the updates
                # whose replies all arrived by then
                run["cpu_ms"] = {role: seconds * 1000 / max(len(sends) / per_update, 1) for role, seconds in cpu.items()}
                if writes_before:
                    run["writes_per_update"] = {key: (writes_after[key] - value) / max(len(sends) / per_update, 1)
                                                for key, value in writes_before.items()}
                result.runs.append(run)
                print(f"  [{repeat + 1}] app: webhook accepted {run['rps']:,.0f}/s ({run['status_errors']} non-2xx, "
                      f"wrk p99 {run['p99_us'] / 1000:.1f} ms); end to end {run['e2e_window']:,.0f} updates/s in the "
                      f"window, {run['e2e_overall']:,.0f}/s until drained or the limit (+{drained:.1f}s, "
                      f"{left[0]:,} still pending); {run['e2e_window'] / base['rps']:.1%} of baseline; RSS peak "
                      f"{sampler.peak / 2**20:.0f} MB; load {load_a:.1f}; {run['statuses']}", flush=True)
                print(f"  [{repeat + 1}] CPU ms per update: {cpu_cell(run)}", flush=True)
                if run.get("writes_per_update"):
                    print(f"  [{repeat + 1}] PostgreSQL per update: {writes_cell(run)}", flush=True)
                per_second = [0] * max(1, int(end - run["started"]))
                for at in sends:
                    if run["started"] <= at < run["started"] + len(per_second):
                        per_second[int(at - run["started"])] += 1
                print(f"  [{repeat + 1}] replies per second in the window: {per_second}", flush=True)
                purge(db_url)
    return result


def bare_cell(lat: dict[str, Any]) -> str:
    if "bare_answer_p50" not in lat:
        return "—"
    return f"{lat['bare_answer_p50']:.1f} / {lat['bare_answer_p99']:.1f} ms"


def write_docs(results: list[Result], args: argparse.Namespace, command: str) -> None:
    lines = [
        "## Inbound: webhook → flow step → reply at the Bot API (bench/inbound.py)",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; load average (1 min) per row",
        f"- command: `{command}`",
        f"- load: wrk 4.1 ({args.connections} connections, 2 threads, {args.duration} s per run, closed loop); "
        f"baseline = a bare FastAPI endpoint that parses the same JSON (bench/bare_app.py), same uvicorn "
        f"settings, same wrk script and bodies, run just before the app in the same repeat",
        "- serve = `hoctap serve --no-demo` (uvicorn + uvloop + httptools, access log off as shipped; the baseline "
        "too), webhook "
        "mode, fake Bot API (bench/tgfake.py --lean) with no rate limit, TELEGRAM_RATE_PER_SECOND=100000, campaigns off; "
        "\"1 process\" = WORKER_PROCESSES=0 (the default), \"2 processes\" = WORKER_PROCESSES=1 (web app in one, "
        "inbox worker + senders + scheduler in the other), \"3 processes\" = WORKER_PROCESSES=2 (web app; inbox "
        "worker; senders + scheduler); RSS is the sum of the processes, shared library pages counted in each",
        "- the webhook's answer waits while more than 1,000 rows are queued behind it (bot.inbox.Backpressure, "
        "ninth session): \"accepted/s\" is held near what the app processes and sends, instead of the backlog "
        "growing for the whole run",
        "",
        "### (a) throughput, 64 connections, and (c) memory",
        "",
        "| database | run | load | baseline req/s | webhook accepted/s | end-to-end updates/s (in window) | "
        "end-to-end until drained | % of baseline (e2e) | drain after | RSS idle → peak | CPU ms per update "
        "(load start → drained); PostgreSQL: its writes per update (WAL of the server, row updates of the "
        "database and the share written in place, HOT) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for i, run in enumerate(r.runs, 1):
            lines.append(
                f"| {r.label} | {i} | {run['load']:.1f} | {run['baseline_rps']:,.0f} | {run['rps']:,.0f} | "
                f"{run['e2e_window']:,.0f} | {run['e2e_overall']:,.0f} | {run['e2e_window'] / run['baseline_rps']:.0%} | "
                f"{run['drain_s']:.0f} s{left_note(run)} | "
                f"{run['rss_idle'] / 2**20:.0f} → {run['rss_peak'] / 2**20:.0f} MB | {cpu_cell(run)}"
                f"{'; ' + writes_cell(run) if run.get('writes_per_update') else ''} |")
    lines += [
        "",
        f"### (b) latency, open loop at {args.rate:.0f} updates/s offered ({args.latency_duration} s)",
        "",
        "| database | load | offered rate achieved/s | webhook answer p50 / p99 / max | bare FastAPI answer p50 / p99 "
        "(same rate, same generator) | POST → reply delivered p50 / p99 / max | delivered |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for lat in r.latency:
            lines.append(
                f"| {r.label} | {lat['load']:.1f} | {lat['achieved']:,.0f} | {lat['answer_p50']:.1f} / "
                f"{lat['answer_p99']:.1f} / {lat['answer_max']:.0f} ms | {bare_cell(lat)} | {ms(lat['e2e_p50'])} / {ms(lat['e2e_p99'])} / "
                f"{ms(lat['e2e_max'])} | {lat['delivered']:,}/{lat['n']:,} (+{lat['waited']:.0f} s wait), "
                f"{lat['replies_per_s']:,.0f} replies/s |")
    lines += ["", "Seeded: " + "; ".join(f"{r.label} {r.families:,} families in {r.seed_s:.1f} s" for r in results)
              + ". Targets: ≥ 1,500 updates/s and ≥ 40% of the baseline end to end; p99 answer < 20 ms, "
              "p99 POST → reply < 100 ms at 500/s; RSS < 250 MB."]
    write_section("inbound.py", lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", action="append", default=None, help="PostgreSQL URL (a scratch "
                        "database is created next to it and dropped afterwards); SQLite runs first unless --no-sqlite")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--duration", type=int, default=30, help="seconds per throughput run (≤ 120)")
    parser.add_argument("--repeat", type=int, default=1, help="throughput runs per database (≤ 5)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--families", type=int, default=20_000, help="families for the throughput runs")
    parser.add_argument("--rate", type=float, default=500.0, help="offered rate of the latency run")
    parser.add_argument("--latency-duration", type=int, default=30, help="seconds of the latency run (≤ 120)")
    parser.add_argument("--latency-each-repeat", action="store_true")
    parser.add_argument("--rate-cap", type=float, default=3000.0, help="updates/s assumed at most (sizes N)")
    parser.add_argument("--drain-limit", type=float, default=60.0, help="seconds to wait for a backlog")
    parser.add_argument("--profile", action="store_true", help="py-spy the serve process (bench/out/)")
    parser.add_argument("--modes", default="one,three", help="one: serve as one process (WORKER_PROCESSES=0, the "
                        "default); two: WORKER_PROCESSES=1 (inbox worker, senders and scheduler in a child process); "
                        "three: WORKER_PROCESSES=2 (inbox worker and senders in a child each); comma-separated: "
                        "each, on a fresh seed")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    args.duration = max(5, min(args.duration, 120))
    args.latency_duration = max(5, min(args.latency_duration, 120))
    args.repeat = max(1, min(args.repeat, 5))
    if not shutil.which("wrk"):
        print("wrk is needed (apt-get install -y wrk)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="hoctap-inbound-"))
    print(f"machine: {machine()}; load {load()}; work dir {work}")
    results = []
    try:
        modes = {"one": "1 process", "two": "2 processes", "three": "3 processes"}
        for mode in args.modes.split(","):
            if not args.no_sqlite:
                results.append(bench_database(f"{sqlite_version()}, {modes[mode]}", "", args, work))
            for url in args.database_url or []:
                with pg_database(url) as db_url:
                    results.append(bench_database(f"{pg_version(url)}, {modes[mode]}", db_url, args, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not args.no_docs and results:
        command = "python bench/inbound.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        write_docs(results, args, redact(command.strip()))
        print("wrote docs/performance.md")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PTB_TIMEDELTA", "true")
    raise SystemExit(main())
