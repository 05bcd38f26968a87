"""`hoctap backup`: a populated SQLite database copied while a writer is active; the copy opens, counts match.

The backup functions of webhook/backup.py are called directly (the CLI is a thin layer over them).
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlmodel import Session, SQLModel, select

from models.db import make_engine
from models.settings import get_settings
from models.tables import InboxUpdate
from webhook.backup import backup_command, backup_sqlite, pg_guidance, restore_sqlite, table_counts


def populate(url: str, rows: int) -> None:
    engine = make_engine(url)
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        for n in range(rows):
            session.add(InboxUpdate(channel="telegram", update_id=str(n), chat_key=str(n % 50),
                                    payload={"update_id": n, "padding": "x" * 500}, status="done"))
        session.commit()
    engine.dispose()


def test_backup_while_writing_then_restore(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    populate(f"sqlite:///{db}", 3000)
    stop = threading.Event()
    written = [0]

    def writer() -> None:  # the server keeps storing updates during the copy
        conn = sqlite3.connect(str(db), timeout=30)
        n = 100_000
        while not stop.is_set() or written[0] == 0:
            conn.execute("INSERT INTO inboxupdate (channel, update_id, chat_key, payload, status, attempts,"
                         " received_at) VALUES ('telegram', ?, '1', '{}', 'pending', 0, '2026-11-24 00:00:00')",
                         (str(n),))
            conn.commit()
            n += 1
            written[0] += 1
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.05)
        result = backup_sqlite(db, tmp_path / "backups" / "hoctap.db")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert written[0] > 0, "the writer ran during the backup"
    copied = result.counts["inboxupdate"]
    assert 3000 <= copied <= 3000 + written[0]
    # the copy is a consistent, standalone file: it opens, passes its check, and reads the same rows
    with contextlib.closing(sqlite3.connect(str(result.path))) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = {r[0] for r in conn.execute("SELECT update_id FROM inboxupdate WHERE status = 'done'")}
    assert ids == {str(n) for n in range(3000)}
    assert not Path(str(result.path) + "-wal").exists()

    # restore over a damaged database: the counts are the backup's
    live_counts = table_counts(db)
    assert live_counts["inboxupdate"] == 3000 + written[0]
    db.write_bytes(b"not a database any more")
    restored = restore_sqlite(result.path, db)
    assert restored.counts == result.counts
    engine = make_engine(f"sqlite:///{db}")
    with Session(engine) as session:
        assert len(session.exec(select(InboxUpdate)).all()) == copied
    engine.dispose()


def test_backup_command_sqlite_and_postgres_guidance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = get_settings(data_dir=tmp_path, database_url="")
    populate(settings.db_url, 10)
    out = tmp_path / "copy.db"
    assert backup_command(settings, argparse.Namespace(out=str(out), restore=None)) == 0
    printed = capsys.readouterr().out
    assert "inboxupdate: 10" in printed and out.is_file()
    assert backup_command(settings, argparse.Namespace(out=str(settings.db_url.split("///")[1]), restore=None)) == 1

    pg = get_settings(data_dir=tmp_path, database_url="postgresql://hoctap:s3cret@db.example:5433/hoctap")
    assert backup_command(pg, argparse.Namespace(out="/backups/h.dump", restore=None)) == 0
    printed = capsys.readouterr().out
    assert "pg_dump --format=custom" in printed and "--file=/backups/h.dump hoctap" in printed
    assert "pg_restore" in printed and "s3cret" not in printed
    assert "--host=db.example --port=5433 --username=hoctap" in pg_guidance(pg.db_url, "")
