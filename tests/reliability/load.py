"""Load: the crash harness's update stream, as fast as the machine takes it, for a bounded time. Script only.

    python tests/reliability/load.py --duration 60            # the issue asks for 600 (10 minutes)
    python tests/reliability/load.py --duration 600 --database-url postgresql://root@127.0.0.1:5432/test
    python tests/reliability/load.py --rate 80                # open loop: 80 updates/s offered

`hoctap serve --no-demo` runs as a subprocess against FakeTelegram (webhook mode), no kills. New families
keep arriving (each the full recorded story: registration, answers, photos, submission), ``--concurrency``
of them at a time, each posting its next update as soon as the previous one is acknowledged (closed
loop), or at ``--rate`` updates per second in all. Reported: acknowledged updates per second, error
responses (anything but 200), webhook latency p50/p95/p99/max, the serve process's RSS every 5 s,
inbox processing rate and the backlog left when the offered load stops, and how long it took to drain.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
from sqlalchemy import func  # noqa: E402
from sqlmodel import Session, select  # noqa: E402

from models.db import make_engine  # noqa: E402
from models.tables import InboxUpdate, OutboxMessage  # noqa: E402
from tests.fakes.telegram_server import FakeTelegram  # noqa: E402
from tests.livehttp import free_port  # noqa: E402
from tests.reliability.crash_harness import (  # noqa: E402
    HEADERS,
    Config,
    Server,
    _drop_pg_schema,
    _fresh_pg_schema,
    prepare_schema,
    server_env,
    wait_drained,
)
from tests.reliability.stream import family_stream, record_template, seed_village  # noqa: E402


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


def run(*, duration: float, concurrency: int, rate: float, database_url: str, workdir: Path,
        schema: str) -> dict[str, Any]:
    template = record_template(workdir)
    db_url = database_url or f"sqlite:///{(workdir / 'data' / 'hoctap.db').as_posix()}"
    pg_schema = ""
    if db_url.startswith("postgresql"):
        base_url = db_url
        db_url, pg_schema = _fresh_pg_schema(db_url)
    engine = make_engine(db_url)
    prepare_schema(engine, schema)
    seed_village(engine)
    cfg = Config(workdir=workdir, database_url=db_url)
    report: dict[str, Any] = {"duration_s": duration, "concurrency": concurrency, "rate": rate or "closed loop",
                              "database": engine.dialect.name}
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    transport_errors: Counter[str] = Counter()  # no HTTP answer (a connection reset): delivered again
    rss: list[tuple[float, float]] = []
    done_series: list[tuple[float, int]] = []
    try:
        with FakeTelegram().running() as fake:
            server = Server(env=server_env(cfg, fake, db_url), cwd=workdir, port=free_port(),
                            log=workdir / "serve.log")
            server.start()
            server.wait_ready()
            assert server.proc is not None
            proc = psutil.Process(server.proc.pid)
            url = f"{server.url}/webhooks/telegram"
            numbers = itertools.count()
            big = 10**6  # update ids: family n's k-th update is k * big + n (ordered per family)

            async def main() -> None:
                started = time.monotonic()
                stop_at = started + duration
                tokens = asyncio.Semaphore(0)

                async def pacer() -> None:
                    while time.monotonic() < stop_at:
                        tokens.release()
                        await asyncio.sleep(1.0 / rate)

                async def sampler() -> None:
                    while time.monotonic() < stop_at:
                        rss.append((round(time.monotonic() - started, 1), proc.memory_info().rss / 2**20))
                        with Session(engine) as session:
                            done = session.exec(select(func.count()).select_from(InboxUpdate)
                                                .where(InboxUpdate.status != "pending")).one()
                        done_series.append((round(time.monotonic() - started, 1), int(done)))
                        await asyncio.sleep(5.0)

                async def worker(client: httpx.AsyncClient) -> None:
                    while time.monotonic() < stop_at:
                        n = next(numbers)
                        family = family_stream(template, n, len(template.steps), families=big)
                        for file_id, data in family.photos.items():
                            fake.add_file(file_id, data)
                        for update in family.updates:
                            if time.monotonic() >= stop_at:
                                return
                            if rate:
                                await tokens.acquire()
                            t0 = time.monotonic()
                            for _attempt in range(5):  # as Telegram does: deliver again what got no answer
                                try:
                                    resp = await client.post(url, json=update.body, headers=HEADERS)
                                except httpx.HTTPError as exc:
                                    transport_errors[type(exc).__name__] += 1
                                    await asyncio.sleep(0.5)
                                    continue
                                statuses[resp.status_code] += 1
                                if resp.status_code != 200:
                                    errors[f"status {resp.status_code}"] += 1
                                latencies.append(time.monotonic() - t0)
                                break
                            else:
                                errors["no answer after 5 deliveries"] += 1

                async with httpx.AsyncClient(timeout=30.0,
                                             limits=httpx.Limits(max_connections=concurrency)) as client:
                    tasks = [asyncio.create_task(worker(client)) for _ in range(concurrency)]
                    tasks.append(asyncio.create_task(sampler()))
                    if rate:
                        tasks.append(asyncio.create_task(pacer()))
                    await asyncio.gather(*tasks)
                report["families_started"] = next(numbers)

            asyncio.run(main())
            with Session(engine) as session:
                pending = session.exec(select(func.count()).select_from(InboxUpdate)
                                       .where(InboxUpdate.status == "pending")).one()
            report["backlog_at_stop"] = int(pending)
            report["rss_mb_during_drain_start"] = round(proc.memory_info().rss / 2**20, 1)
            try:
                report["drain_s"] = round(wait_drained(engine, 900.0), 1)
            except TimeoutError as exc:
                report["drain_s"] = f"not drained: {exc}"
            report["rss_mb_after_drain"] = round(proc.memory_info().rss / 2**20, 1)
            server.stop()
            with Session(engine) as session:
                inbox = Counter(session.exec(select(InboxUpdate.status)).all())
                outbox = Counter(session.exec(select(OutboxMessage.status)).all())
            report["inbox"] = dict(inbox)
            report["outbox"] = dict(outbox)
            report["messages_received_by_fake"] = len(fake.sent())
    finally:
        engine.dispose()
        if pg_schema:
            _drop_pg_schema(base_url, pg_schema)
    lat = sorted(latencies)
    acked = statuses.get(200, 0)
    report.update({
        "updates_acked": acked,
        "acked_per_s": round(acked / duration, 1),
        "error_responses": dict(errors),
        "connection_errors_redelivered": dict(transport_errors),
        "statuses": {str(k): v for k, v in statuses.items()},
        "latency_ms": {"p50": round(1000 * percentile(lat, 0.50), 1), "p95": round(1000 * percentile(lat, 0.95), 1),
                       "p99": round(1000 * percentile(lat, 0.99), 1), "max": round(1000 * (lat[-1] if lat else 0), 1)},
        "rss_mb": [(t, round(m, 1)) for t, m in rss],
        "processed_series": done_series,
    })
    if len(done_series) >= 2:
        (t0, d0), (t1, d1) = done_series[0], done_series[-1]
        report["processed_per_s_while_loaded"] = round((d1 - d0) / max(t1 - t0, 1e-9), 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of offered load (issue: 600)")
    parser.add_argument("--concurrency", type=int, default=32, help="families posting at once")
    parser.add_argument("--rate", type=float, default=0.0, help="updates/s offered in all; 0 = closed loop")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--workdir", default="")
    parser.add_argument("--schema", choices=["migrate", "models"], default="migrate")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hoctap-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = run(duration=args.duration, concurrency=args.concurrency, rate=args.rate,
                 database_url=args.database_url, workdir=workdir, schema=args.schema)
    out = json.dumps(report, ensure_ascii=False, indent=2)
    print(out)
    if args.json:
        Path(args.json).write_text(out, encoding="utf-8")
    bad = report["error_responses"] or report["inbox"].get("failed") or report["inbox"].get("pending")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
