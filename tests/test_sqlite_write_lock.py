"""bot.outbox.write_lock on SQLite: the turns are taken across processes too (WORKER_PROCESSES), through an
flock next to the database file, so a process waits for another's write transaction without sleeping in
SQLite's busy handler. PostgreSQL has no such lock (row locks and SKIP LOCKED instead)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bot.outbox import write_lock
from models.db import make_engine
from tests.conftest import PG_URL

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(bool(PG_URL), reason="SQLite only: write_lock is a no-op on PostgreSQL")


def test_the_write_lock_is_held_across_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hoctap.db'}"
    engine = make_engine(url)
    holder = textwrap.dedent(f"""
        import time
        from bot.outbox import write_lock
        from models.db import make_engine
        with write_lock(make_engine({url!r})):
            print("held", flush=True)
            time.sleep(0.8)
            print(time.time(), flush=True)
    """)
    with subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, cwd=ROOT, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        asked = time.time()
        with write_lock(engine):
            got = time.time()
        released = float(proc.stdout.readline())
    assert got >= released > asked  # waited for the other process's turn to end, and no longer than needed
    assert got - released < 0.5
    assert (tmp_path / "hoctap.db-writelock").exists()
    engine.dispose()
