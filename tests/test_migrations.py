"""Migrations create the schema from nothing and match the models exactly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from models import migrate
from models.db import make_engine


def test_upgrade_empty_database_then_models_match(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine)
        tables = set(inspect(engine).get_table_names())
        assert set(SQLModel.metadata.tables) <= tables
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diff == []
        # running it again is a no-op
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def _room_and_campaign_index(engine: Engine) -> tuple[dict[str, list[str]], str]:
    """(PostgreSQL: the storage options of the tables every answer rewrites), the campaign index's definition."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            options = {name: list(conn.execute(text(
                "SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = to_regclass(:name)"), {"name": name},
            ).scalar_one()) for name in ("assessment", "conversation")}
            index = conn.execute(text(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema()"
                " AND indexname = 'ix_outboxmessage_campaign'")).scalar_one()
        else:
            options = {}
            index = conn.execute(text(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_outboxmessage_campaign'")).scalar_one()
    return options, index


def test_answers_tables_leave_room_for_hot_updates_and_replies_stay_out_of_the_campaign_index(db_url: str) -> None:
    """Migrations and the models (create_all, as the tests build their schema) agree: PostgreSQL fills the pages
    of assessment and conversation to 70 %, and the outbox's campaign index holds only rows with a campaign."""
    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine)
        from_migrations = _room_and_campaign_index(engine)
        with engine.begin() as conn:
            SQLModel.metadata.drop_all(conn)
            conn.execute(text("DROP TABLE alembic_version"))
            SQLModel.metadata.create_all(conn)
        from_models = _room_and_campaign_index(engine)
    finally:
        engine.dispose()
    for options, index in (from_migrations, from_models):
        assert "campaign IS NOT NULL" in index, index
        if engine.dialect.name == "postgresql":
            assert options == {"assessment": ["fillfactor=70"], "conversation": ["fillfactor=70"]}
