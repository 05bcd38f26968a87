"""Engine and sessions. No module-level engine: callers build one with make_engine()."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.sql.expression import Executable
from sqlmodel import Session, create_engine

from models import jsonio


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for SQLite (WAL, foreign keys, busy timeout) or PostgreSQL. JSON columns go through
    models.jsonio (orjson where it gives the standard library's values)."""
    kwargs.setdefault("json_serializer", jsonio.dumps)
    kwargs.setdefault("json_deserializer", jsonio.loads)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connect_args = kwargs.pop("connect_args", {})
        connect_args.setdefault("check_same_thread", False)
        connect_args.setdefault("timeout", 30)
        engine = create_engine(url, connect_args=connect_args, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            # more of the hot pages (inbox, outbox, conversations, assessments) cached: 16 MiB per connection
            # instead of 2 MiB (no mmap: mapped pages would count in the process's RSS)
            cur.execute("PRAGMA cache_size=-16384")
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


class Prepared:
    """A Core statement compiled once per dialect and run on the session's own DBAPI connection.

    For the one-row statements of the inbound hot path (bot/uow.py), SQLAlchemy's per-execution work
    (execution context, compiled-cache lookup, result metadata) costs several times what the database does;
    this keeps SQLAlchemy's SQL, parameter and result conversions (JSON, timestamps, booleans: the type's own
    processors) and drops the rest. Runs inside the session's transaction (it commits or rolls back with
    it); it bypasses the ORM, so callers expire any loaded object whose row they change. No expanding
    (IN) parameters."""

    __slots__ = ("_build", "_compiled", "__weakref__")

    def __init__(self, build: Callable[[Dialect], Executable]) -> None:
        self._build = build
        self._compiled: weakref.WeakKeyDictionary[Dialect, _Compiled] = weakref.WeakKeyDictionary()
        _PREPARED.add(self)

    @staticmethod
    def compile_all(dialect: Dialect) -> int:
        """Compile every statement defined so far for ``dialect`` (a worker's warm-up: bot/uow.py
        warm_up); returns how many."""
        statements = list(_PREPARED)
        for prepared in statements:
            prepared._get(dialect)
        return len(statements)

    def _get(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect)
        if compiled is None:
            compiled = self._compiled[dialect] = _Compiled(self._build(dialect), dialect)
        return compiled

    def rows(self, session: Session | Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Execute with one set of parameters; the result rows (converted), [] for a statement without. On a
        Session, in its transaction; on a Connection, in the connection's."""
        conn = session if isinstance(session, Connection) else session.connection()
        compiled = self._get(conn.dialect)
        fetched, description = self._execute(conn, compiled, "", params)
        if description is None:
            return []
        return compiled.convert(fetched, description, conn.dialect)

    def plan(self, conn: Connection, params: dict[str, Any]) -> str:
        """The database's plan for the statement with these parameters (EXPLAIN on PostgreSQL, EXPLAIN QUERY
        PLAN on SQLite; nothing is executed), as text: which index a statement uses, for the tests."""
        prefix = "EXPLAIN " if conn.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
        fetched, _description = self._execute(conn, self._get(conn.dialect), prefix, params)
        return "\n".join(" ".join(str(value) for value in row) for row in fetched)

    @staticmethod
    def _execute(conn: Connection, compiled: _Compiled, prefix: str, params: dict[str, Any]) -> tuple[list[Any], Any]:
        """The compiled SQL (after ``prefix``) on the connection's own cursor: the raw rows and their description
        (None, and no rows, for a statement without a result)."""
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(prefix + compiled.sql, compiled.parameters(params))
            if cursor.description is None:
                return [], None
            return cursor.fetchall(), cursor.description
        finally:
            cursor.close()

    def many(self, session: Session, params: Sequence[dict[str, Any]]) -> None:
        """Execute once per parameter set (the driver's executemany); no result rows."""
        if not params:
            return
        conn = session.connection()
        compiled = self._get(conn.dialect)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(compiled.sql, [compiled.parameters(p) for p in params])
        finally:
            cursor.close()


_PREPARED: weakref.WeakSet[Prepared] = weakref.WeakSet()


def in_list(dialect: Dialect, column: str, name: str, sql_type: str) -> str:
    """SQL text for "``column`` is one of the list bound as ``:name``", for a Prepared statement (which takes no
    expanding IN lists): an array on PostgreSQL (``sql_type`` its elements' type), a JSON array read by
    json_each on SQLite. Bind the list with ``list_param``."""
    if dialect.name == "postgresql":
        return f"{column} = ANY(CAST(:{name} AS {sql_type}[]))"
    return f"{column} IN (SELECT value FROM json_each(:{name}))"


def list_param(dialect: Dialect, values: list[Any]) -> Any:
    """The parameter of an ``in_list``: the list itself on PostgreSQL, its JSON text on SQLite."""
    return values if dialect.name == "postgresql" else jsonio.dumps(values)


class _Compiled:
    __slots__ = ("sql", "names", "defaults", "binds", "types", "results")

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled: Any = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        self.names: list[str] | None = list(compiled.positiontup) if compiled.positional else None
        self.defaults: dict[str, Any] = compiled.construct_params(_check=False)
        self.binds: dict[str, Callable[[Any], Any]] = dict(compiled._bind_processors)
        self.types = [rc[3] for rc in compiled._result_columns]
        self.results: list[tuple[int, Callable[[Any], Any]]] | None = None  # known at the first result

    def parameters(self, params: dict[str, Any]) -> Any:
        values = {**self.defaults, **params}
        for name, process in self.binds.items():
            values[name] = process(values[name])
        if self.names is None:
            return values
        return tuple(values[name] for name in self.names)

    def convert(self, rows: list[Any], description: Any, dialect: Dialect) -> list[tuple[Any, ...]]:
        if self.results is None:
            # as SQLAlchemy does: some processors depend on the driver's type code (PostgreSQL numerics)
            processors = [type_._cached_result_processor(dialect, column[1])
                          for type_, column in zip(self.types, description, strict=False)]
            self.results = [(n, fn) for n, fn in enumerate(processors) if fn is not None]
        if not self.results:
            return [tuple(row) for row in rows]
        out = []
        for row in rows:
            values = list(row)
            for n, process in self.results:
                values[n] = process(values[n])
            out.append(tuple(values))
        return out
