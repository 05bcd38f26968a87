"""`hoctap backup --out FILE` and restore guidance.

SQLite: the online backup API (sqlite3.Connection.backup) copies a consistent snapshot page by page while
the server keeps writing; the copy is then checked (PRAGMA integrity_check) and its table counts printed.
PostgreSQL: nothing is copied here; the command prints the pg_dump / pg_restore commands to run, because
pg_dump is the tool that gives a consistent dump of a live database (and is versioned with the server).

Media files (MEDIA_DIR, content-addressed and never rewritten) are backed up by copying the directory;
the command reminds where it is.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from models.settings import Settings

COUNTED = ("person", "household", "assessment", "evidence", "registration", "inboxupdate", "outboxmessage")


@dataclass(frozen=True)
class BackupResult:
    path: Path
    pages: int
    counts: dict[str, int]


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite:/// URL, or None for another database (or an in-memory one)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1].split("?", 1)[0]
    return None if not path or path == ":memory:" else Path(path)


def table_counts(path: Path, tables: tuple[str, ...] = COUNTED) -> dict[str, int]:
    """Row counts of the main tables of a SQLite file (tables that do not exist are left out)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables if t in present}


def backup_sqlite(source: Path, out: Path) -> BackupResult:
    """Copy a live SQLite database to ``out`` with the online backup API; checks the copy's integrity.

    The whole database is copied in ONE backup step, from one read snapshot: in WAL mode (ours) a reader
    does not block writers, so the server goes on storing updates meanwhile. (Copying a few pages per step
    instead restarts the copy whenever another connection writes, and under a steady stream of webhook
    inserts it never finished: the test below it hung that way.)
    """
    if not source.is_file():
        raise FileNotFoundError(f"no database at {source}")
    out = out.resolve()
    if out == source.resolve():
        raise ValueError("the backup must not overwrite the database")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(str(source), timeout=30)
    dst = sqlite3.connect(str(tmp))
    pages = 0

    def progress(status: int, remaining: int, total: int) -> None:
        nonlocal pages
        pages = total

    try:
        src.backup(dst, pages=-1, progress=progress)
        # a single file, readable without the -wal next to it
        dst.execute("PRAGMA journal_mode=DELETE")
        check = dst.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise RuntimeError(f"the copy failed its integrity check: {check}")
    finally:
        dst.close()
        src.close()
    tmp.replace(out)  # atomic: a FILE that exists is a complete backup
    return BackupResult(path=out, pages=pages, counts=table_counts(out))


def restore_sqlite(backup: Path, target: Path) -> BackupResult:
    """Put a backup in place of the database (the server must be stopped); returns the restored counts."""
    if not backup.is_file():
        raise FileNotFoundError(f"no backup at {backup}")
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(str(target) + suffix).unlink(missing_ok=True)  # stale WAL pages must not replay over the backup
    result = backup_sqlite(backup, target)
    return result


def pg_guidance(url: str, out: str) -> str:
    """The commands to back up and restore a PostgreSQL database (password left to PGPASSWORD/.pgpass)."""
    parts = urlsplit(url.replace("postgresql+psycopg://", "postgresql://"))
    db = unquote(parts.path.lstrip("/")) or "hoctap"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 5432
    user = unquote(parts.username or "postgres")
    dump = out or f"hoctap-{db}.dump"
    return "\n".join([
        "PostgreSQL: back up with pg_dump (consistent while hoctap keeps running; custom format, compressed):",
        f"  pg_dump --format=custom --no-owner --host={host} --port={port} --username={user} "
        f"--file={dump} {db}",
        "Restore into an empty database (stop hoctap serve first, or restore into a new database and switch):",
        f"  createdb --host={host} --port={port} --username={user} {db}_restored",
        f"  pg_restore --no-owner --exit-on-error --host={host} --port={port} --username={user} "
        f"--dbname={db}_restored {dump}",
        "Then set DATABASE_URL to the restored database and run `hoctap db upgrade`.",
        "The password is never put on the command line: use PGPASSWORD or ~/.pgpass.",
    ])


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")  # the command's output (ruff's T20 is for stray debugging prints)


def backup_command(settings: Settings, args: argparse.Namespace) -> int:
    """`hoctap backup [--out FILE] [--restore FILE]`: SQLite online backup or restore; pg_dump guidance."""
    url = settings.db_url
    out = getattr(args, "out", None) or ""
    restore = getattr(args, "restore", None) or ""
    path = sqlite_path(url)
    if path is None:
        _say(pg_guidance(url, out) if url.startswith("postgresql") else f"backup: unsupported database {url!r}")
        return 0 if url.startswith("postgresql") else 2
    try:
        if restore:
            result = restore_sqlite(Path(restore), path)
            _say(f"Restored {restore} → {result.path} ({result.pages} pages).")
        else:
            target = Path(out) if out else path.with_name(path.stem + ".backup.db")
            result = backup_sqlite(path, target)
            _say(f"Backed up {path} → {result.path} ({result.pages} pages, integrity ok).")
    except (OSError, ValueError, RuntimeError, sqlite3.Error) as exc:
        _say(f"backup failed: {exc}")
        return 1
    for table, count in result.counts.items():
        _say(f"  {table}: {count}")
    _say(f"Photos are files under {settings.media_path}: copy that directory too (files never change).")
    return 0
