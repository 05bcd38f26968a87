"""Crash safety: `hoctap serve` as a real process, a replayed update stream, SIGKILLs at random moments.

    python tests/reliability/crash_harness.py --updates 5000 --families 500 --kills 20
    python tests/reliability/crash_harness.py --database-url postgresql://root@127.0.0.1:5432/test

What runs (all on 127.0.0.1, bounded by --timeout, stops by itself):
- FakeTelegram (tests/fakes/telegram_server.py) in this process: the serve process's Bot API; it records
  every sendMessage;
- `hoctap serve --no-demo` as a subprocess in webhook mode (PUBLIC_BASE_URL set; the fake's setWebhook
  only records), its stdout/stderr appended to serve.log;
- a replayer posting each family's recorded updates (tests/reliability/stream.py) to /webhooks/telegram
  with the secret, families concurrently, one family's updates in order; anything not answered 200 is
  delivered again, as Telegram does; a few acknowledged updates are delivered twice on purpose;
- a killer that SIGKILLs the server at random moments and restarts it.
Then, once the inbox and outbox have drained, it checks: every update stored once and processed once;
each family's answers, photos, registration and conversation step exactly what the recording says its
prefix must leave; every outbox row sent; the fake received each reply (duplicates from the sender's
documented at-least-once window are counted, not hidden); each family can continue (one more message gets
a sane answer); and the serve log holds no message text, phone number or bot token.
Exit status 0 when nothing is lost and nothing is processed twice. Prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable as a script from anywhere
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import func, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlmodel import Session, col, select  # noqa: E402

from flows.i18n import t  # noqa: E402
from models import migrate  # noqa: E402
from models.db import make_engine  # noqa: E402
from models.tables import (  # noqa: E402
    Assessment,
    AuditLog,
    ChatIdentity,
    Conversation,
    Evidence,
    Household,
    InboxUpdate,
    OutboxMessage,
    Person,
    Registration,
)
from tests.fakes.telegram_server import FakeTelegram  # noqa: E402
from tests.livehttp import free_port  # noqa: E402
from tests.reliability.stream import (  # noqa: E402
    SECRET,
    TEMPLATE_NAME,
    Family,
    Template,
    allocate,
    family_stream,
    photo_sha,
    record_template,
    seed_village,
)

HEADERS = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
PROCESSED = "flow.processed"
SENDER_RATE = 1000  # TELEGRAM_RATE_PER_SECOND of the server under test


@dataclass
class Config:
    updates: int = 600
    families: int = 60
    kills: int = 5
    database_url: str = ""  # empty: a SQLite file in the work directory
    workdir: Path = Path("harness-run")
    seed: int = 1
    concurrency: int = 40  # families replayed at once
    duplicate_rate: float = 0.03  # acknowledged updates delivered a second time on purpose
    kill_after: tuple[float, float] = (0.1, 2.0)  # seconds after the server is ready
    timeout: float = 900.0
    drain_timeout: float = 900.0  # bounded; wait_drained also stops after 90 s without progress
    continue_check: bool = True
    schema: str = "migrate"  # migrate: Alembic, as production; models: create_all + stamp (see prepare_schema)
    template: Template | None = None
    worker_processes: int = 0  # WORKER_PROCESSES: the kills hit the web process, the workers die with it


@dataclass
class Stats:
    posts: int = 0
    acked: int = 0
    redeliveries: int = 0  # posts that were not acknowledged and had to be delivered again
    connection_errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    duplicates_posted: int = 0
    kills: int = 0
    kills_during_replay: int = 0
    restarts_seconds: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


# --- the serve process ------------------------------------------------------------------------------------


def hoctap_command() -> list[str]:
    script = Path(sys.executable).parent / "hoctap"
    return [str(script)] if script.exists() else [sys.executable, "-m", "webhook.cli"]


class Server:
    """`hoctap serve --no-demo` on a fixed loopback port; kill() is SIGKILL, nothing graceful."""

    def __init__(self, *, env: dict[str, str], cwd: Path, port: int, log: Path) -> None:
        self.env, self.cwd, self.port, self.log = env, cwd, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*hoctap_command(), "serve", "--no-demo", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def wait_ready(self, timeout: float = 180.0) -> None:  # a loaded 2-core machine: imports alone take 30 s
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"hoctap serve exited with {self.proc.returncode}; see {self.log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError("hoctap serve did not become ready")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def server_env(cfg: Config, fake: FakeTelegram, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TELEGRAM_", "ZALO_", "DATABASE_URL", "PUBLIC_BASE_URL", "MEDIA_DIR", "DATA_DIR"))}
    env.update({
        "DATA_DIR": str(cfg.workdir / "data"),
        "DATABASE_URL": db_url,
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_BASE_URL": fake.base_url,
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
        "PUBLIC_BASE_URL": "https://hoctap.example",
        "PER_CHAT_INTERVAL_SECONDS": "0",
        "TELEGRAM_RATE_PER_SECOND": str(SENDER_RATE),
        "DEMO": "false",
        "WORKER_PROCESSES": str(cfg.worker_processes),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
    })
    return env


# --- replay and kills --------------------------------------------------------------------------------------


async def post_until_acked(client: httpx.AsyncClient, url: str, body: dict[str, Any], stats: Stats,
                           deadline: float) -> None:
    """Deliver one update until it is answered 200, backing off like Telegram (bounded by ``deadline``)."""
    delay = 0.05
    while True:
        started = time.monotonic()
        stats.posts += 1
        try:
            resp = await client.post(url, json=body, headers=HEADERS)
            stats.statuses[resp.status_code] += 1
            if resp.status_code == 200:
                stats.latencies.append(time.monotonic() - started)
                stats.acked += 1
                return
        except httpx.HTTPError:
            stats.connection_errors += 1
        stats.redeliveries += 1
        if time.monotonic() > deadline:
            raise TimeoutError("an update could not be delivered before the deadline")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def replay(families: list[Family], url: str, cfg: Config, stats: Stats, deadline: float) -> None:
    rng = random.Random(cfg.seed)
    limit = asyncio.Semaphore(cfg.concurrency)
    timeout = httpx.Timeout(10.0, connect=2.0)
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=cfg.concurrency)) as client:

        async def one(family: Family) -> None:
            async with limit:
                for update in family.updates:
                    await post_until_acked(client, url, update.body, stats, deadline)
                    if rng.random() < cfg.duplicate_rate:  # Telegram may deliver an acknowledged update again
                        stats.duplicates_posted += 1
                        with contextlib.suppress(httpx.HTTPError):
                            resp = await client.post(url, json=update.body, headers=HEADERS)
                            stats.statuses[resp.status_code] += 1

        await asyncio.gather(*(one(f) for f in families))


async def killer(server: Server, cfg: Config, stats: Stats, replaying: asyncio.Event) -> None:
    rng = random.Random(cfg.seed + 1)
    for _ in range(cfg.kills):
        await asyncio.sleep(rng.uniform(*cfg.kill_after))
        await asyncio.to_thread(server.kill)
        stats.kills += 1
        stats.kills_during_replay += int(replaying.is_set())
        started = time.monotonic()
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(server.wait_ready)
        stats.restarts_seconds.append(round(time.monotonic() - started, 2))


def drained(engine: Engine) -> tuple[int, int]:
    with Session(engine) as session:
        inbox = session.exec(select(func.count()).select_from(InboxUpdate)
                             .where(InboxUpdate.status == "pending")).one()
        outbox = session.exec(select(func.count()).select_from(OutboxMessage)
                              .where(col(OutboxMessage.status).in_(("queued", "sending")))).one()
    return int(inbox), int(outbox)


def wait_drained(engine: Engine, timeout: float, *, stall: float = 90.0) -> float:
    """Wait until nothing is pending; gives up after ``timeout`` or ``stall`` seconds without progress."""
    started = last_progress = time.monotonic()
    last = drained(engine)
    while last != (0, 0):
        now = time.monotonic()
        if now - started > timeout or now - last_progress > stall:
            raise TimeoutError(f"not drained after {now - started:.0f}s: pending inbox/outbox {last}")
        time.sleep(0.25)
        current = drained(engine)
        if current != last:
            last_progress = time.monotonic()
        last = current
    return time.monotonic() - started


# --- checks ------------------------------------------------------------------------------------------------


def verify(engine: Engine, fake: FakeTelegram, template: Template, families: list[Family],
           lengths: list[int]) -> dict[str, Any]:
    """Compare the database and the fake's record with what each family's prefix must leave."""
    problems: list[str] = []
    figures: Counter[str] = Counter()
    figures.update(dict.fromkeys(("duplicates_sent", "chats_out_of_order", "replies_lost", "outbox_unconfirmed",
                                  "unconfirmed_delivered", "unconfirmed_not_delivered"), 0))
    expected_ids = {str(u.update_id) for f in families for u in f.updates}
    with Session(engine) as session:
        inbox = session.exec(select(InboxUpdate.update_id, InboxUpdate.status)
                             .where(InboxUpdate.channel == "telegram")).all()
        stored = Counter(uid for uid, _ in inbox)
        figures["inbox_rows"] = len(inbox)
        figures["lost_updates"] = len(expected_ids - set(stored))
        figures["updates_stored_twice"] = sum(1 for n in stored.values() if n > 1)
        for status, n in Counter(s for _, s in inbox).items():
            figures[f"inbox_{status}"] = n
        processed = Counter(session.exec(select(AuditLog.target).where(AuditLog.action == PROCESSED)).all())
        figures["updates_processed_twice"] = sum(1 for n in processed.values() if n > 1)
        outbox = session.exec(select(OutboxMessage)).all()
        figures["outbox_rows"] = len(outbox)
        figures["outbox_not_sent"] = sum(1 for r in outbox if r.status not in ("sent", "unconfirmed"))
        figures["outbox_unconfirmed"] = sum(1 for r in outbox if r.status == "unconfirmed")
        figures["outbox_reminders"] = sum(1 for r in outbox if r.campaign)
        figures["outbox_rows_sent_more_than_once_attempted"] = sum(1 for r in outbox if r.attempts > 1)
        rows_by_chat: dict[str, list[OutboxMessage]] = {}
        for row in outbox:
            rows_by_chat.setdefault(row.chat_id, []).append(row)
        fake_by_chat: dict[str, list[str]] = {}
        for params in fake.sent():
            fake_by_chat.setdefault(str(params.get("chat_id")), []).append(str(params.get("text", "")))

        for family, length in zip(families, lengths, strict=True):
            exp = template.expects[length - 1]
            where = f"family {family.n} (prefix {length})"
            identity = session.exec(select(ChatIdentity).where(ChatIdentity.chat_id == str(family.chat_id))).first()
            person = session.get(Person, identity.person_id) if identity and identity.person_id else None
            if bool(person) != exp.person:
                problems.append(f"{where}: person {'missing' if exp.person else 'unexpected'}")
                continue
            if person is not None:
                if person.name != family.name or not (person.phone or "").endswith(family.phone[2:]):
                    problems.append(f"{where}: person's name or phone differs")
                household = session.exec(select(Household).where(Household.head_person_id == person.id)).all()
                if len(household) != 1:
                    problems.append(f"{where}: {len(household)} households")
                    continue
                subject_id = household[0].id
                regs = session.exec(select(Registration).where(Registration.subject_type == "household",
                                                               Registration.subject_id == subject_id)).all()
                if (len(regs) == 1) != exp.registered or len(regs) > 1:
                    problems.append(f"{where}: {len(regs)} registrations")
                assessment = session.exec(select(Assessment).where(Assessment.subject_type == "household",
                                                                   Assessment.subject_id == subject_id)).first()
                answers = dict(assessment.answers or {}) if assessment else {}
                status = assessment.status if assessment else None
                if answers != exp.answers or status != exp.status:
                    figures["families_with_wrong_answers"] += 1
                    problems.append(f"{where}: answers {answers} status {status}, expected {exp.answers} {exp.status}")
                evidence = session.exec(select(Evidence).where(Evidence.assessment_id == assessment.id)).all() \
                    if assessment else []
                shas = sorted(e.sha256 for e in evidence)
                want = sorted(photo_sha(family.n, k) for k in range(exp.photos))
                figures["photos_stored"] += len(shas)
                figures["photos_expected"] += len(want)
                if shas != want:
                    figures["families_with_wrong_photos"] += 1
                    problems.append(f"{where}: {len(shas)} photos, expected {len(want)}")
                figures["answers_stored"] += len(answers)
                figures["submitted"] += int(status == "submitted")
            conversation = session.exec(select(Conversation).where(Conversation.identity_id == identity.id)).first() \
                if identity else None
            step = str((conversation.state or {}).get("step", "idle")) if conversation else "idle"
            if step != exp.step:
                problems.append(f"{where}: conversation at {step!r}, expected {exp.step!r}")
            # replies: one outbox row per reply, each received by the fake; extra copies are the window
            rows = rows_by_chat.get(str(family.chat_id), [])
            replies = [r for r in rows if not r.campaign]
            if len(replies) != exp.replies:
                problems.append(f"{where}: {len(replies)} replies queued, expected {exp.replies}")
            received = Counter(fake_by_chat.get(str(family.chat_id), []))
            queued = Counter(str(r.payload.get("text", "")) for r in rows)
            unconfirmed = Counter(str(r.payload.get("text", "")) for r in rows if r.status == "unconfirmed")
            missing = queued - received
            extra = received - queued
            # a row whose call was in flight when the server died is not sent again: the fake may or may not
            # have received it; any other row missing at the fake is a lost message
            unconfirmed_missing = missing & unconfirmed
            figures["unconfirmed_delivered"] += sum((unconfirmed - unconfirmed_missing).values())
            figures["unconfirmed_not_delivered"] += sum(unconfirmed_missing.values())
            figures["replies_lost"] += sum((missing - unconfirmed_missing).values())
            figures["duplicates_sent"] += sum(extra.values())
            if missing - unconfirmed_missing:
                problems.append(f"{where}: {sum((missing - unconfirmed_missing).values())} queued messages "
                                "never reached Telegram")
            if extra:
                problems.append(f"{where}: {sum(extra.values())} messages reached Telegram twice")
            expected_texts = Counter(x.replace(TEMPLATE_NAME, family.name) for x in template.texts[: exp.replies])
            if expected_texts - queued:
                problems.append(f"{where}: replies differ from the recording: {list(expected_texts - queued)[:2]}")
            got = [x for x in fake_by_chat.get(str(family.chat_id), []) if x in expected_texts]
            order = [x.replace(TEMPLATE_NAME, family.name) for x in template.texts[: exp.replies]]
            if not _in_order(_first_deliveries(got, expected_texts), order):
                figures["chats_out_of_order"] += 1
                problems.append(f"{where}: messages reached Telegram out of order")
    figures["families"] = len(families)
    figures["updates"] = len(expected_ids)
    lost = figures["lost_updates"] + figures["updates_processed_twice"] + figures["updates_stored_twice"]
    if lost:
        problems.append(f"inbox: {figures['lost_updates']} lost, {figures['updates_stored_twice']} stored twice, "
                        f"{figures['updates_processed_twice']} processed twice")
    if figures["outbox_not_sent"]:
        problems.append(f"outbox: {figures['outbox_not_sent']} rows not sent")
    if figures.get("inbox_failed"):
        problems.append(f"inbox: {figures['inbox_failed']} rows failed")
    return {"figures": dict(figures), "problems": problems}


def _in_order(got: list[str], order: list[str]) -> bool:
    """The deliveries in the expected order, gaps allowed: ``got`` is a subsequence of ``order``. A message whose
    call a kill interrupted may never have arrived (counted apart, above); the replies repeat some texts (the
    photo prompts), so the expected order cannot be filtered by the set of texts delivered — one undelivered copy
    of a repeated text made that comparison report a chat out of order when it was not."""
    expected = iter(order)
    return all(any(x == y for y in expected) for x in got)


def _first_deliveries(texts: list[str], wanted: Counter[str]) -> list[str]:
    """The first deliveries of each expected message, in arrival order (later copies: the window)."""
    seen: Counter[str] = Counter()
    out = []
    for x in texts:
        if seen[x] < wanted[x]:
            seen[x] += 1
            out.append(x)
    return out


async def continue_each(families: list[Family], url: str, fake: FakeTelegram, stats: Stats,
                        wait_seconds: float = 90.0) -> dict[str, Any]:
    """Every family sends one more message (/trangthai); each gets a sane answer (not the error message)."""
    before = {f.chat_id: len(fake.sent(f.chat_id)) for f in families}
    base = 10**9
    deadline = time.monotonic() + wait_seconds
    async with httpx.AsyncClient(timeout=10.0) as client:
        for i, family in enumerate(families):
            from tests.fakes import telegram_server as tg

            body = tg.text_update(base + i, family.chat_id, "/trangthai")
            await post_until_acked(client, url, body, stats, deadline)
    answered: dict[int, list[str]] = {}
    while time.monotonic() < deadline:
        answered = {f.chat_id: fake.sent_texts(f.chat_id)[before[f.chat_id]:] for f in families}
        if all(answered.values()):
            break
        await asyncio.sleep(0.25)
    error = t("common.error")
    silent = [c for c, texts in answered.items() if not texts]
    errors = [c for c, texts in answered.items() if any(x == error or not x.strip() for x in texts)]
    return {"families_continued": len(families) - len(silent) - len(errors), "silent": len(silent),
            "error_answers": len(errors)}


def scan_log(log: Path, families: list[Family], token: str) -> list[str]:
    """Personal data and secrets that must never reach the serve log."""
    content = log.read_text(encoding="utf-8", errors="replace")
    needles = {token, token.split(":", 1)[-1], SECRET}
    for f in families:
        local = "0" + f.phone[2:]
        needles |= {f.name, f.phone, "+" + f.phone, local, f"{local[:4]} {local[4:7]} {local[7:]}", f.phone[2:]}
    return sorted(n for n in needles if n and n in content)


# --- the whole run -------------------------------------------------------------------------------------------


def _fresh_pg_schema(url: str) -> tuple[str, str]:
    schema = "harness_" + uuid.uuid4().hex[:10]
    admin = make_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}", schema


def _drop_pg_schema(url: str, schema: str) -> None:
    admin = make_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def prepare_schema(engine: Engine, how: str) -> None:
    """Alembic's upgrade (what `hoctap serve` does), or the models' tables stamped as the newest revision.

    "models" exists for when models/tables.py is ahead of the migrations (tests/test_migrations.py then
    fails on its own): the crash semantics can still be tested; serve's own upgrade is then a no-op.
    """
    if how == "migrate":
        migrate.upgrade(engine)
        return
    from alembic import command
    from sqlmodel import SQLModel

    SQLModel.metadata.create_all(engine)
    with engine.begin() as conn:
        command.stamp(migrate.alembic_config(connection=conn), "head")


def run(cfg: Config, *, fresh_schema: bool = False) -> dict[str, Any]:
    """Run the harness; returns the report (figures, problems, timings)."""
    started = time.monotonic()
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    template = cfg.template or record_template(cfg.workdir)
    lengths = allocate(template, families=cfg.families, updates=cfg.updates, seed=cfg.seed)
    families = [family_stream(template, n, length, families=cfg.families) for n, length in enumerate(lengths)]
    db_url = cfg.database_url or f"sqlite:///{(cfg.workdir / 'data' / 'hoctap.db').as_posix()}"
    schema = ""
    if fresh_schema and db_url.startswith("postgresql"):
        base_url = db_url
        db_url, schema = _fresh_pg_schema(db_url)
    engine = make_engine(db_url)
    prepare_schema(engine, cfg.schema)
    seed_village(engine)
    log = cfg.workdir / "serve.log"
    log.write_bytes(b"")
    report: dict[str, Any] = {"config": {"updates": sum(lengths), "families": cfg.families, "kills": cfg.kills,
                                         "database": engine.dialect.name, "seed": cfg.seed}}
    stats = Stats()
    try:
        with FakeTelegram().running() as fake:
            for family in families:
                for file_id, data in family.photos.items():
                    fake.add_file(file_id, data)
            server = Server(env=server_env(cfg, fake, db_url), cwd=cfg.workdir, port=free_port(), log=log)
            server.start()
            server.wait_ready()
            deadline = time.monotonic() + cfg.timeout
            url = f"{server.url}/webhooks/telegram"

            async def main() -> None:
                replaying = asyncio.Event()
                replaying.set()
                kill_task = asyncio.create_task(killer(server, cfg, stats, replaying))
                replay_started = time.monotonic()
                await replay(families, url, cfg, stats, deadline)
                report["replay_seconds"] = round(time.monotonic() - replay_started, 1)
                replaying.clear()
                await kill_task

            try:
                asyncio.run(main())
                report["drain_seconds"] = round(wait_drained(engine, cfg.drain_timeout), 1)
                report.update(verify(engine, fake, template, families, lengths))
                if cfg.continue_check:
                    report["continue"] = asyncio.run(continue_each(families, url, fake, stats))
                    wait_drained(engine, cfg.drain_timeout)
                    if report["continue"]["families_continued"] != len(families):
                        report["problems"].append(f"continue: {report['continue']}")
            finally:
                server.stop()
            leaked = scan_log(log, families, fake.token)
            report["log_leaks"] = leaked
            if leaked:
                report.setdefault("problems", []).append(f"serve log holds personal data or secrets: {leaked[:5]}")
            report["settled_unconfirmed"] = sum(
                int(m) for m in re.findall(r"(\d+) row\(s\) left in flight by a stopped sender",
                                           log.read_text(errors="replace")))
    finally:
        engine.dispose()
        if schema:
            _drop_pg_schema(base_url, schema)
    report["stats"] = {k: v for k, v in asdict(stats).items() if k not in ("latencies", "statuses")}
    report["stats"]["statuses"] = {str(k): v for k, v in stats.statuses.items()}
    lat = sorted(stats.latencies)
    if lat:
        report["stats"]["p99_ack_ms"] = round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1)
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=5000)
    parser.add_argument("--families", type=int, default=500)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--database-url", default="", help="default: a SQLite file in --workdir")
    parser.add_argument("--workdir", default="", help="default: a new temporary directory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--schema", choices=["migrate", "models"], default="migrate",
                        help="migrate: Alembic as in production; models: create_all + stamp head")
    parser.add_argument("--worker-processes", type=int, default=0, choices=[0, 1, 2], help="WORKER_PROCESSES")
    args = parser.parse_args(argv)
    import tempfile

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hoctap-harness-"))
    cfg = Config(updates=args.updates, families=args.families, kills=args.kills, database_url=args.database_url,
                 workdir=workdir, seed=args.seed, concurrency=args.concurrency, timeout=args.timeout,
                 schema=args.schema, worker_processes=args.worker_processes)
    report = run(cfg, fresh_schema=True)
    out = json.dumps(report, ensure_ascii=False, indent=2, default=str)
    print(out)
    if args.json:
        Path(args.json).write_text(out, encoding="utf-8")
    return 1 if report.get("problems") else 0


if __name__ == "__main__":
    raise SystemExit(main())
