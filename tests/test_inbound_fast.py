"""The inbound hot path's own machinery (issue #10): prepared statements, the one-read unit of work, the
inbox writer's fixed-shape INSERTs, clearing "unreachable" from the row already read. Real databases."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import bindparam, insert, select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from sqlmodel import select as orm_select

from bot.inbox import Inbound, InboxWorker, store_update, store_updates
from bot.uow import _SAVE_ANSWERS, ensure_commune
from flows.types import Event
from models.db import Prepared
from models.tables import Assessment, AuditLog, ChatIdentity, InboxUpdate, OutboxMessage, Person
from tests.review_seed import GIA_LOC
from tests.test_uow import Chat, _seed, _signup

AT = datetime(2026, 11, 10, 2, 0, tzinfo=UTC)
AUDIT = AuditLog.__table__  # type: ignore[attr-defined]
_INSERT = Prepared(lambda _d: insert(AUDIT).values(at=bindparam("at"), actor=bindparam("actor"),
                                                   action=bindparam("action"), target=bindparam("target"),
                                                   detail=bindparam("detail")))
_SELECT = Prepared(lambda _d: select(AUDIT.c.at, AUDIT.c.detail, AUDIT.c.id.is_not(None))
                   .where(AUDIT.c.target == bindparam("target")).order_by(AUDIT.c.id))


def test_prepared_statements_convert_like_sqlalchemy_and_share_the_transaction(engine: Engine) -> None:
    with Session(engine) as session:
        _INSERT.rows(session, {"at": AT, "actor": "t", "action": "a", "target": "x", "detail": {"k": ["v", 1]}})
        _INSERT.many(session, [{"at": AT, "actor": "t", "action": "a", "target": "x", "detail": {"n": n}}
                               for n in range(3)])
        rows = _SELECT.rows(session, {"target": "x"})
        assert [r[1] for r in rows] == [{"k": ["v", 1]}, {"n": 0}, {"n": 1}, {"n": 2}]
        assert rows[0][2] is True
        assert rows[0][0].replace(tzinfo=UTC) == AT
        # the ORM reads what the prepared statements wrote (same transaction, same conversions)
        orm = session.exec(orm_select(AuditLog).where(AuditLog.target == "x").order_by(AuditLog.id)).all()
        assert [a.detail for a in orm] == [r[1] for r in rows]
        session.rollback()  # ... and a rollback takes it all back
    with Session(engine) as session:
        assert _SELECT.rows(session, {"target": "x"}) == []


def test_store_updates_in_fixed_shapes_keeps_order_and_reports_new_rows(engine: Engine) -> None:
    with Session(engine) as session:
        assert store_update(session, "telegram", 5, "c5", {"update_id": 5})
        session.commit()
    # 85 rows = 64 + 16 + 4 + 1 statements; one repeat inside the batch, one already stored
    batch: list[tuple[str, str | int, str, dict[str, Any]]] = [
        ("telegram", n, f"c{n % 7}", {"update_id": n}) for n in range(1, 85)
    ]
    batch.insert(40, ("telegram", 30, "c2", {"update_id": 30}))
    with Session(engine) as session:
        new = store_updates(session, batch)
        session.commit()
    assert len(new) == 85
    assert new[4] is False  # update 5 was there
    assert new[29] is True and new[40] is False  # the first of the two 30s is new, the repeat is not
    assert sum(new) == 83
    with Session(engine) as session:
        stored = session.exec(orm_select(InboxUpdate).order_by(InboxUpdate.id)).all()
    ids = [int(r.update_id) for r in stored]
    assert ids[0] == 5 and ids[1:] == [n for n in range(1, 85) if n != 5]  # ids in the order given
    assert all(r.payload == {"update_id": int(r.update_id)} and r.status == "pending" for r in stored)


async def _text(payload: dict[str, Any]) -> Inbound:
    return Inbound(chat_id=str(payload["chat"]), event=Event(kind="text", text=payload["text"]))


def test_inbox_clears_unreachable_only_for_the_person_who_wrote(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        writer = Person(name="A", unreachable_at=AT, unreachable_reason="blocked")
        other = Person(name="B", unreachable_at=AT, unreachable_reason="blocked")
        session.add_all([writer, other])
        session.flush()
        session.add_all([ChatIdentity(channel="telegram", user_id="71", chat_id="71", person_id=writer.id),
                         ChatIdentity(channel="telegram", user_id="72", chat_id="72", person_id=other.id)])
        store_update(session, "telegram", 1, "71", {"chat": 71, "text": "/trogiup"})
        session.commit()
    worker = InboxWorker(engine=engine)
    worker.add_channel("telegram", _text, ordered_ids=True)
    assert asyncio.run(worker.run_once()) == 1
    with Session(engine) as session:
        a, b = session.get(Person, writer.id), session.get(Person, other.id)
        assert a is not None and b is not None
        assert (a.unreachable_at, a.unreachable_reason) == (None, None)
        assert b.unreachable_at is not None and b.unreachable_reason == "blocked"
        assert len(session.exec(orm_select(OutboxMessage)).all()) >= 1


def test_answers_saved_by_the_fast_path_reach_an_orm_copy_in_the_same_session(session: Session) -> None:
    _seed(session)
    chat = Chat(session, "1101")
    _signup(chat)
    chat.press("Đăng ký")
    chat.press("Tự đánh giá")
    chat.text("co")  # the first answer creates the row (through the ORM)
    loaded = session.exec(orm_select(Assessment)).one()  # an ORM copy, kept in the session
    before = dict(loaded.answers)
    chat.text("khong")  # the next ones update it in place (no photo asked: the flow reads the row first)
    assert "Câu 3/10" in chat.said()
    assert len(loaded.answers) == len(before) + 1  # expired by the UPDATE, reloaded on access
    assert session.exec(orm_select(Assessment)).one().answers == loaded.answers


def test_a_locked_assessment_ignores_answers_on_the_fast_path(session: Session) -> None:
    _seed(session)
    chat = Chat(session, "1102")
    _signup(chat)
    chat.press("Đăng ký")
    chat.press("Tự đánh giá")
    chat.text("co")
    row = session.exec(orm_select(Assessment)).one()
    row.status = "in_review"  # the commune took it while the family was answering
    session.add(row)
    session.commit()
    answers = dict(row.answers)
    chat.text("khong")
    session.expire_all()
    assert session.exec(orm_select(Assessment)).one().answers == answers


def test_two_answers_to_one_assessment_saved_at_once_are_both_kept(engine: Engine) -> None:
    """PostgreSQL commits several batches at once: two chats answering the same assessment (a family member and
    the village leader on the family's behalf) both read the answers, then both save one more; the second save
    waits for the first one's row lock and must keep its answer (a merge at the UPDATE, not the whole dict read
    before). SQLite's writers take turns, so there the answers read are current."""
    if engine.dialect.name != "postgresql":
        pytest.skip("concurrent writers: PostgreSQL")
    with Session(engine) as session:
        ensure_commune(session, GIA_LOC)
        row = Assessment(commune_code=GIA_LOC, subject_type="household", subject_id=1, title="gia_dinh", year=2026,
                         answers={"q0": 1})
        session.add(row)
        session.commit()
        ident = row.id
    first, second = Session(engine), Session(engine)
    try:
        _SAVE_ANSWERS.rows(first, {"b_id": ident, "answers": {"q0": 1, "q1": True}, "delta": {"q1": True},
                                   "answered_by": None, "now": AT})
        failures: list[BaseException] = []

        def save_second() -> None:
            try:
                _SAVE_ANSWERS.rows(second, {"b_id": ident, "answers": {"q0": 1, "q2": False}, "delta": {"q2": False},
                                            "answered_by": None, "now": AT})
                second.commit()
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        waiting = threading.Thread(target=save_second)
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive(), "the second save should wait for the first one's row lock"
        first.commit()
        waiting.join(10)
        assert not waiting.is_alive() and failures == []
    finally:
        first.close()
        second.close()
    with Session(engine) as session:
        assert session.get(Assessment, ident).answers == {"q0": 1, "q1": True, "q2": False}


def test_staged_answers_of_many_assessments_reach_their_own_rows(engine: Engine) -> None:
    """PostgreSQL: bot.uow.Deferred writes a batch's answers in ONE UPDATE, the deltas going as one JSON
    document made an array on the server. Each assessment gets its own delta (merged into what it had), in the
    order staged, quotes and diacritics intact; answered_by and the proxy columns per row."""
    from bot.uow import Deferred

    if engine.dialect.name != "postgresql":
        pytest.skip("answers are staged on PostgreSQL only")
    with Session(engine) as session:
        ensure_commune(session, GIA_LOC)
        rows = [Assessment(commune_code=GIA_LOC, subject_type="household", subject_id=n, title="gia_dinh", year=2026,
                           answers={"q0": n}) for n in range(1, 5)]
        leaders = [Person(name="Trưởng thôn Một"), Person(name="Trưởng thôn Hai")]
        session.add_all([*rows, *leaders])
        session.commit()
        ids, proxies = [row.id for row in rows], [None, leaders[0].id, None, leaders[1].id]
    deltas = [{"q1": 'nói "có"'}, {"q1": None, "q2": ["a", "b\\c"]}, {"q0": "Đã đọc {sách}"}, {"q3": 3.5}]
    deferred = Deferred()
    with Session(engine) as session:
        for n, (ident, delta) in enumerate(reversed(list(zip(ids, deltas, strict=True)))):
            for criterion, value in delta.items():
                deferred.save_answer(ident, criterion, value, answered_by=None, proxy_by=proxies[n], now=AT)
        deferred.flush_answers(session)
        session.commit()
    with Session(engine) as session:
        stored = {row.id: row for row in session.exec(orm_select(Assessment).where(Assessment.id.in_(ids))).all()}  # type: ignore[union-attr]
        assert [stored[i].answers for i in ids] == [{"q0": n + 1, **delta} for n, delta in enumerate(deltas)]
        # staged in reverse: the last id without a proxy, the one before by the first leader, ...
        assert [(stored[i].proxy, stored[i].proxy_by) for i in reversed(ids)] == [
            (False, None), (True, proxies[1]), (False, None), (True, proxies[3])]
        assert all(stored[i].updated_at == AT for i in ids)
