"""Shared helpers of the benchmarks: machine description, load average, docs sections, scratch databases,
subprocesses on free loopback ports. Not a benchmark itself."""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "performance.md"
PY = sys.executable


def machine() -> str:
    cpu = "unknown CPU"
    ram = "RAM unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        ram = f"{mem_kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPUs (nproc), {cpu}, {ram}, Python {platform.python_version()}, {platform.system()}"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f}/{five:.1f}/{fifteen:.1f}"


def load1() -> float:
    return os.getloadavg()[0]


def write_section(name: str, lines: list[str]) -> None:
    """Replace the section between `<!-- bench/NAME: start/end -->` in docs/performance.md, or append it."""
    start, end = f"<!-- bench/{name}: start -->", f"<!-- bench/{name}: end -->"
    section = "\n".join([start, *lines, end])
    current = DOCS.read_text(encoding="utf-8") if DOCS.exists() else "# Performance\n"
    if start in current and end in current:
        current = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _m: section, current, flags=re.S)
    else:
        current = current.rstrip("\n") + "\n\n" + section + "\n"
    DOCS.write_text(current, encoding="utf-8")


def redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//…@", url)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def pg_database(url: str) -> Iterator[str]:
    """A fresh PostgreSQL database next to the one in ``url`` (CREATE DATABASE), dropped afterwards."""
    import psycopg

    name = "hoctap_bench_" + uuid.uuid4().hex[:8]
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _db = conninfo.rpartition("/")
    db_url = f"{base}/{name}"
    try:
        yield db_url
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def pg_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return "PostgreSQL " + str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]


def sqlite_version() -> str:
    import sqlite3

    return "SQLite " + sqlite3.sqlite_version


@contextmanager
def process(args: list[str], *, env: dict[str, str] | None = None, log: Path | None = None,
            ready_url: str | None = None, timeout: float = 60.0) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess (own process group), waited for until ``ready_url`` answers; terminated on exit."""
    out: Any = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                            cwd=ROOT, start_new_session=True)
    try:
        if ready_url:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{args[:4]} exited with {proc.returncode} (log: {log})")
                try:
                    if httpx.get(ready_url, timeout=1.0).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ready_url} not ready after {timeout}s (log: {log})")
                time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log:
            out.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
