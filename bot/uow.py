"""The unit of work for one inbound event: flows in, rows out, in the caller's single transaction.

    load identity + conversation → DbView → flows.engine.handle → apply effects → save state → outbox rows

Nothing here commits: the caller commits once, so state, effects and outbox rows land together (or not at
all). With ``idempotency_base`` (e.g. "telegram:update:123456"), a redelivered update writes nothing twice.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    insert,
    text,
    true,
    update,
)
from sqlalchemy import select as core_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.orm.attributes import flag_modified
from sqlmodel import Session, col, select
from vietnam_provinces import Province as VnProvince
from vietnam_provinces import Ward

from bot import media
from bot.login_links import create_login_link
from bot.outbox import PRIORITY_REPLY, utcnow
from bot.view_db import AssessmentKey, AssessmentRow, DbView, Preload, criteria_sets, load_assessments
from flows import communes as commune_index
from flows import effects as fx
from flows.effects import Subject
from flows.engine import handle
from flows.i18n import catalog, t
from flows.types import ConversationState, Event, Say
from flows.view import PersonInfo, Role
from models import jsonio
from models.db import Prepared
from models.tables import (
    Assessment,
    AuditLog,
    ChatIdentity,
    Clan,
    ClanMember,
    Commune,
    Conversation,
    Evidence,
    Household,
    Officer,
    OutboxMessage,
    Person,
    Province,
    Registration,
    RoleGrant,
    Unit,
    Village,
)

log = logging.getLogger(__name__)

PROCESSED = "flow.processed"


def warm_up(engine: Engine, settings: Any = None, *, most: int = 32) -> dict[str, int]:
    """Load what the first flow steps would otherwise load inside the inbox worker's first transaction,
    where SQLite's write lock is held and the webhook's inserts wait for it: the message catalog, the
    criteria sets (the national ones and those of up to ``most`` communes served or in the database),
    the commune index, and the compiled hot-path statements. Measured (bench/inbound.py, SQLite, 3 processes):
    the first batch held the lock for ~130 ms, and the webhook answers waiting behind it were a large part of
    the latency run's p99. Importing this module (the flow engine) is part of it: the worker calls this from
    a thread before its first pass. Returns what was loaded, for the log."""
    catalog()
    sets: set[tuple[str, ...]] = {()}
    codes = list(settings.served_codes()) if settings is not None and hasattr(settings, "served_codes") else []
    with Session(engine) as session:
        query = core_select(Commune.__table__.c.code, Commune.__table__.c.province_code)  # type: ignore[attr-defined]
        if codes:
            query = query.where(Commune.__table__.c.code.in_(codes[:most]))  # type: ignore[attr-defined]
        for code, province in session.connection().execute(query.limit(most)).all():
            sets.add((str(province), f"{province}/{code}"))
    for local in sets:
        criteria_sets(local)
    commune_index.warm()
    return {"criteria_sets": len(sets), "statements": Prepared.compile_all(engine.dialect)}


def process_event(session: Session, *, channel: str, chat_id: str, event: Event, now: datetime,
                  settings: Any = None, idempotency_base: str | None = None, user_id: str | None = None,
                  display_name: str = "", clear_unreachable: bool = False,
                  deferred: Deferred | None = None, preloaded: _Loaded | None = None) -> list[Say]:
    """Run one event through the flows and stage every change in ``session``; returns the replies.

    ``clear_unreachable``: the person behind the chat wrote to us, so they can be written to again (their
    ``unreachable_at`` is cleared, in the same transaction; bot.inbox asks for it). ``deferred``: the
    conversation's new state, the outbox rows and the audit row are collected there instead, for the caller
    to write with ``deferred.write(session)`` in the same transaction (bot.inbox: one statement each per
    batch of chats, not per update)."""
    user_id = user_id or chat_id
    session.flush()  # pending ORM changes first: the reads below go to the database, not the session
    loaded = preloaded or _load(session, channel=channel, user_id=user_id, base=idempotency_base)
    if loaded is None:  # no identity yet (or never on this channel)
        if idempotency_base is not None and _already_processed(session, idempotency_base):
            return []
        row = _identity(session, channel=channel, user_id=user_id, chat_id=chat_id, display_name=display_name)
        identity = _Identity(row.id or 0, channel, user_id, row.chat_id, row.person_id, row)
        conversation_id, stored_state, unreachable, preload = None, None, False, None
    else:
        if loaded.processed:
            return []
        identity = loaded.identity
        if identity.chat_id != chat_id:
            _CHAT_ID.rows(session, {"b_id": identity.id, "chat_id": chat_id})
            _expire(session, ChatIdentity, identity.id)
            identity.chat_id = chat_id
        conversation_id, stored_state, unreachable, preload = (loaded.conversation_id, loaded.state,
                                                               loaded.unreachable, loaded.preload)
    state = ConversationState.from_json(stored_state)
    view = DbView(session, identity, settings, preload=preload)
    # PostgreSQL: answers are staged for the batch (one UPDATE) and written before anything reads them
    staged = deferred if deferred is not None and session.get_bind().dialect.name == "postgresql" else None
    if staged is not None:
        view.before_read = functools.partial(staged.flush_answers, session)
    step = handle(state, event, view, now)

    applier = _Applier(session, identity, now, settings, view=view,
                       fast=all(type(e) is fx.SaveAnswer for e in step.effects), deferred=staged)
    if deferred is not None and (loaded is None or not applier.fast):
        deferred.others_changed = True  # rows that other chats' loads read may have changed (see load_many)
    base = idempotency_base or f"{channel}:{chat_id}:{secrets.token_hex(8)}"
    for effect in step.effects:
        applier.apply(effect)
    session.flush()  # the effects' ORM rows (ids for the rows below; Core statements follow)
    state_json = step.state.to_json()
    if conversation_id is not None and deferred is not None:
        deferred.states.append({"b_id": conversation_id, "state": state_json, "now": now})
    elif conversation_id is not None:
        _SAVE_STATE.rows(session, {"b_id": conversation_id, "state": state_json, "now": now})
        _expire(session, Conversation, conversation_id)
    else:
        _NEW_STATE.rows(session, {"identity_id": identity.id, "state": state_json, "now": now})

    person_id = identity.person_id
    replies = [_reply(key=f"{base}:{n}", channel=channel, chat_id=identity.chat_id, person_id=person_id, say=say,
                      now=now) for n, say in enumerate(step.outputs)]
    for n, (target, say) in enumerate(applier.notifications):
        for other in session.exec(select(ChatIdentity).where(ChatIdentity.person_id == target)).all():
            replies.append(_reply(key=f"{base}:notify:{n}:{other.id}", channel=other.channel,
                                  chat_id=other.chat_id, person_id=target, say=say, now=now))
    audit = {"at": now, "actor": f"chat:{channel}", "action": PROCESSED, "target": base,
             "detail": {"step": step.state.step, "effects": [type(e).__name__ for e in step.effects]}}
    if deferred is not None:
        deferred.replies.extend(replies)
        deferred.audits.append(audit)
    else:
        _ENQUEUE.many(session, replies)
        _AUDIT.rows(session, audit)
    # only the person read above can be unreachable (one registered in this step is not)
    if clear_unreachable and unreachable and identity.person_id == identity.person_id_loaded:
        _REACHABLE.rows(session, {"b_id": identity.person_id})
        _expire(session, Person, identity.person_id)
    return list(step.outputs)


class Deferred:
    """Rows of several process_event calls, written together (see process_event's ``deferred``).

    Safe to hold back until the end of a batch because nothing in the batch reads them: a chat has one
    update per batch (its state is read again only by its next update), outbox rows are read by the sender
    after the commit, and an update's audit row only by a redelivery of that same update. Rows go in the
    order they were staged, so each chat's replies keep their order."""

    def __init__(self) -> None:
        self.states: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.audits: list[dict[str, Any]] = []
        # set by a step that did more than save answers (or made a new identity): it may have changed what
        # another chat's process_event reads first (a person, roles, households), so loads made before it
        # for the rest of the batch (load_many) are not to be used
        self.others_changed = False
        # PostgreSQL: answers saved by the batch's steps, assessment id → merged delta, answered_by, proxy_by;
        # written by flush_answers before anything reads an assessment again (DbView, _Applier._assessment)
        self.answers: dict[int, dict[str, Any]] = {}
        self.now: datetime | None = None  # the steps' time, for the answers' updated_at

    def save_answer(self, assessment_id: int, criterion: str, value: Any, answered_by: int | None,
                    proxy_by: int | None, now: datetime) -> None:
        """Stage what _SAVE_ANSWERS(_PROXY) would do; two saves to one assessment merge as two UPDATEs would."""
        self.now = now
        staged = self.answers.setdefault(assessment_id, {"delta": {}, "answered_by": None, "proxy_by": None})
        staged["delta"][criterion] = value
        staged["answered_by"] = answered_by
        if proxy_by is not None:
            staged["proxy_by"] = proxy_by

    def flush_answers(self, session: Session) -> None:
        """Write the staged answers: ONE UPDATE for all the batch's assessments."""
        if not self.answers:
            return
        ids = list(self.answers)
        staged = [self.answers[i] for i in ids]
        _SAVE_ANSWERS_MANY.rows(session, {
            "ids": ids, "deltas": jsonio.dumps([a["delta"] for a in staged]),
            "answered_by": [a["answered_by"] for a in staged], "proxy_by": [a["proxy_by"] for a in staged],
            "now": self.now or utcnow()})
        for assessment_id in ids:
            _expire(session, Assessment, assessment_id)
        self.answers = {}

    def write(self, session: Session) -> None:
        """Write and forget what was staged: one statement per table on PostgreSQL (arrays through unnest: one
        execution on the server instead of one per row), one executemany per table on SQLite."""
        self.flush_answers(session)
        if session.get_bind().dialect.name == "postgresql":
            bulk_update(session, _table(Conversation), self.states, key="b_id", columns=("state", "updated_at"),
                        names={"updated_at": "now"})
            bulk_insert(session, _table(OutboxMessage), self.replies, _OUTBOX_COLUMNS, conflict="idempotency_key")
            bulk_insert(session, _table(AuditLog), self.audits, ("at", "actor", "action", "target", "detail"))
        else:
            _SAVE_STATE.many(session, self.states)
            _ENQUEUE.many(session, self.replies)
            _AUDIT.many(session, self.audits)
        for state in self.states:
            _expire(session, Conversation, state["b_id"])
        self.states, self.replies, self.audits = [], [], []


class _Identity:
    """The chat identity as the hot path needs it; the ORM row is loaded only for effects that change it."""

    __slots__ = ("id", "channel", "user_id", "chat_id", "person_id", "person_id_loaded", "_row")

    def __init__(self, id: int, channel: str, user_id: str, chat_id: str, person_id: int | None,
                 row: ChatIdentity | None = None) -> None:
        self.id, self.channel, self.user_id, self.chat_id = id, channel, user_id, chat_id
        self.person_id = self.person_id_loaded = person_id
        self._row = row

    def row(self, session: Session) -> ChatIdentity:
        if self._row is None:
            self._row = session.get(ChatIdentity, self.id)
            assert self._row is not None
        return self._row


class _Loaded:
    __slots__ = ("identity", "conversation_id", "state", "preload", "unreachable", "processed")

    def __init__(self, identity: _Identity, conversation_id: int | None, state: Any, preload: Preload,
                 unreachable: bool, processed: bool) -> None:
        self.identity, self.conversation_id, self.state = identity, conversation_id, state
        self.preload, self.unreachable, self.processed = preload, unreachable, processed


def _load_statement(_dialect: Any, *, many: bool = False) -> Any:
    """Identity, conversation, person (with commune, roles, what they head) and "already processed", in one
    statement: one row per role grant that is not revoked (or one row without). ``many`` (PostgreSQL): the
    same for a batch of chats at once, keyed by arrays of (channel, user_id, idempotency base); each row then
    starts with its chat's channel and user_id."""
    ci, cv, p, cm, rg = (t.__table__ for t in (ChatIdentity, Conversation, Person, Commune, RoleGrant))  # type: ignore[attr-defined]
    al, h, c, u = (t.__table__ for t in (AuditLog, Household, Clan, Unit))  # type: ignore[attr-defined]
    keys = None
    base: Any = bindparam("base")
    if many:
        keys = func.unnest(bindparam("channels", type_=postgresql.ARRAY(String)),
                           bindparam("user_ids", type_=postgresql.ARRAY(String)),
                           bindparam("bases", type_=postgresql.ARRAY(String))).table_valued(
            "channel", "user_id", "base").render_derived(name="k")
        base = keys.c.base
    processed = (
        core_select(al.c.id).where(al.c.action == PROCESSED, al.c.target == base).limit(1)
        .scalar_subquery()
    )
    household = core_select(func.min(h.c.id)).where(h.c.head_person_id == p.c.id).scalar_subquery()
    clan = core_select(func.min(c.c.id)).where(c.c.head_person_id == p.c.id).scalar_subquery()
    unit = core_select(func.min(u.c.id)).where(u.c.rep_person_id == p.c.id).scalar_subquery()
    columns = (
        ci.c.id, ci.c.chat_id, ci.c.person_id, cv.c.id, cv.c.state, p.c.id, p.c.name, p.c.phone,
        p.c.commune_code, p.c.village_id, p.c.unreachable_at.is_not(None), cm.c.code, cm.c.province_code,
        rg.c.role, rg.c.status, rg.c.commune_code, rg.c.village_id, household, clan, unit, processed,
    )
    joined = (
        ci.outerjoin(cv, cv.c.identity_id == ci.c.id)
        .outerjoin(p, p.c.id == ci.c.person_id)
        .outerjoin(cm, cm.c.code == p.c.commune_code)
        .outerjoin(rg, and_(rg.c.person_id == p.c.id, rg.c.status != "revoked"))
    )
    if keys is not None:
        return (
            core_select(keys.c.channel, keys.c.user_id, *columns)
            .select_from(keys.join(joined, and_(ci.c.channel == keys.c.channel, ci.c.user_id == keys.c.user_id)))
            .order_by(rg.c.id)
        )
    return (
        core_select(*columns)
        .select_from(joined)
        .where(ci.c.channel == bindparam("channel"), ci.c.user_id == bindparam("user_id"))
        .order_by(rg.c.id)
    )


_LOAD = Prepared(_load_statement)


_LOAD_MANY = Prepared(lambda d: _load_statement(d, many=True))


def _load(session: Session, *, channel: str, user_id: str, base: str | None) -> _Loaded | None:
    rows = _LOAD.rows(session, {"channel": channel, "user_id": user_id, "base": base})
    return _loaded(rows, channel, user_id) if rows else None


def load_many(session: Session, keys: list[tuple[str, str, str]]) -> dict[tuple[str, str], _Loaded]:
    """PostgreSQL: what ``process_event`` reads first, for the chats of a batch in two statements: (channel,
    user_id) → loaded, for each (channel, user_id, idempotency base) of ``keys`` whose chat identity exists
    (pass the result to process_event as ``preloaded``). One round trip for the batch instead of one per
    update; see bot.inbox for when a batch's loads stop being valid. A chat met twice in ``keys`` is loaded
    for its first (channel, user_id, base) only."""
    seen: set[tuple[str, str]] = set()
    keys = [k for k in keys if (k[0], k[1]) not in seen and not seen.add((k[0], k[1]))]  # type: ignore[func-returns-value]
    if not keys:
        return {}
    rows = _LOAD_MANY.rows(session, {"channels": [k[0] for k in keys], "user_ids": [k[1] for k in keys],
                                     "bases": [k[2] for k in keys]})
    grouped: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for row in rows:
        grouped.setdefault((row[0], row[1]), []).append(row[2:])
    loads = {key: _loaded(chat_rows, key[0], key[1]) for key, chat_rows in grouped.items()}
    # and the assessment each chat is answering, all in a second statement. One that two chats of the batch
    # answer (a family member and the village leader) is read by neither: the second step must see the
    # first's answer, so each reads it in its own step
    wanted = {key: a for key, loaded in loads.items() if (a := _answering(loaded.state)) is not None}
    counts: dict[AssessmentKey, int] = {}
    for a in wanted.values():
        counts[a] = counts.get(a, 0) + 1
    read = load_assessments(session, sorted(a for a, n in counts.items() if n == 1))
    for key, a in wanted.items():
        if a in read:
            loads[key].preload = dataclasses.replace(loads[key].preload, assessments={a: read[a]})
    return loads


def _answering(state: Any) -> AssessmentKey | None:
    """The assessment a stored conversation state is in the middle of answering (flows.engine keeps it as
    ``a`` in the data of its "assess" and "evidence" steps), or None."""
    if not isinstance(state, dict) or not isinstance(state.get("data"), dict):
        return None
    a = state["data"].get("a")
    try:
        subject = Subject.parse(a["subject"])
        return subject.kind, subject.id, str(a["title"]), int(a["year"])
    except (KeyError, TypeError, ValueError):
        return None


def _loaded(rows: list[tuple[Any, ...]], channel: str, user_id: str) -> _Loaded:
    (identity_id, chat_id, person_id, conversation_id, state, pid, name, phone, commune_code, village_id,
     unreachable, commune, province, *_role, household, clan, unit, processed) = rows[0]
    me = None
    local: tuple[str, ...] = ()
    if pid is not None:
        roles = tuple(Role(r[13], r[14], r[15], r[16]) for r in rows if r[13] is not None)
        me = PersonInfo(pid, name, phone, commune_code, village_id, roles, household, clan, unit)
        if commune is not None:
            local = (str(province), f"{province}/{commune}")
    identity = _Identity(identity_id, channel, user_id, chat_id, person_id)
    return _Loaded(identity, conversation_id, state, Preload(me, local), bool(unreachable), processed is not None)


def _table(model: Any) -> Any:
    return model.__table__


_SAVE_STATE = Prepared(lambda _d: update(_table(Conversation)).where(_table(Conversation).c.id == bindparam("b_id"))
                       .values(state=bindparam("state"), updated_at=bindparam("now")))
_NEW_STATE = Prepared(lambda _d: insert(_table(Conversation)).values(identity_id=bindparam("identity_id"),
                                                                     state=bindparam("state"),
                                                                     updated_at=bindparam("now")))
_CHAT_ID = Prepared(lambda _d: update(_table(ChatIdentity)).where(_table(ChatIdentity).c.id == bindparam("b_id"))
                    .values(chat_id=bindparam("chat_id")))
_REACHABLE = Prepared(lambda _d: update(_table(Person))
                      .where(_table(Person).c.id == bindparam("b_id"), _table(Person).c.unreachable_at.is_not(None))
                      .values(unreachable_at=None, unreachable_reason=None))
_AUDIT = Prepared(lambda _d: insert(_table(AuditLog)).values(
    at=bindparam("at"), actor=bindparam("actor"), action=bindparam("action"), target=bindparam("target"),
    detail=bindparam("detail")))


def _answers_value(dialect: Any) -> Any:
    """The saved answers. On PostgreSQL the one new answer (``delta``) is merged into the row as it is at the
    UPDATE, not as it was read: batches commit concurrently there (and several processes may run), and a
    second chat answering the same assessment (a family member, the village leader on the family's behalf)
    must not overwrite the first one's answer with what it read before. On SQLite writers take turns, so the
    answers read in the step are current and are written whole."""
    if dialect.name != "postgresql":
        return bindparam("answers", type_=JSON)
    return _merged_answers(bindparam("delta", type_=JSON))


def _merged_answers(delta: Any) -> Any:
    """PostgreSQL: the assessment's answers as they are at the UPDATE, with ``delta`` (JSON) merged in."""
    return cast(cast(_table(Assessment).c.answers, JSONB).op("||")(cast(delta, JSONB)), JSON)


_SAVE_ANSWERS = Prepared(lambda d: update(_table(Assessment)).where(_table(Assessment).c.id == bindparam("b_id"))
                         .values(answers=_answers_value(d), answered_by=bindparam("answered_by"),
                                 updated_at=bindparam("now"), proposal=None))
_SAVE_ANSWERS_PROXY = Prepared(lambda d: update(_table(Assessment))
                               .where(_table(Assessment).c.id == bindparam("b_id"))
                               .values(answers=_answers_value(d), answered_by=bindparam("answered_by"),
                                       updated_at=bindparam("now"), proposal=None, proxy=True,
                                       proxy_by=bindparam("proxy_by")))


def _arrays(table: Any, rows: list[dict[str, Any]], columns: tuple[str, ...], names: dict[str, str]) -> tuple[
        list[str], list[str], dict[str, Any]]:
    """unnest's arguments (one array per column: typed, or built on the server from one JSON document for a JSON
    column), the select list and the parameters, for ``rows`` (dicts keyed by ``names.get(column, column)``)."""
    arrays, values, params = [], [], {}
    for n, name in enumerate(columns):
        column = table.c[name]
        key = names.get(name, name)
        values.append(f'v."{name}"')
        if isinstance(column.type, JSON):
            # the column's values as ONE JSON document, made an array on the server (in order; None stays SQL
            # NULL): a text[] parameter is an array literal that psycopg builds in Python, escaping every quote
            # of every JSON value with a regex — 39 % of the PostgreSQL inbox worker's GIL samples
            arrays.append(f"ARRAY(SELECT CASE WHEN json_typeof(e) = 'null' THEN NULL ELSE e END"
                          f" FROM json_array_elements(CAST(:p{n} AS json)) WITH ORDINALITY AS t(e, i) ORDER BY i)")
            params[f"p{n}"] = jsonio.dumps([row[key] for row in rows])
            continue
        arrays.append(f"CAST(:p{n} AS {column.type.compile(dialect=postgresql.dialect())}[])")
        params[f"p{n}"] = [row[key] for row in rows]
    return arrays, values, params


def bulk_insert(session: Session, table: Any, rows: list[dict[str, Any]], columns: tuple[str, ...], *,
                conflict: str | None = None) -> None:
    """PostgreSQL: INSERT the rows in ONE statement (INSERT … SELECT FROM unnest, in the rows' order), ON
    CONFLICT (``conflict``) DO NOTHING when given."""
    if not rows:
        return
    arrays, values, params = _arrays(table, rows, columns, {})
    quoted = ", ".join(f'"{c}"' for c in columns)
    sql = (f'INSERT INTO "{table.name}" ({quoted}) SELECT {", ".join(values)} FROM unnest({", ".join(arrays)})'
           f" WITH ORDINALITY AS v({quoted}, n) ORDER BY v.n")
    if conflict:
        sql += f' ON CONFLICT ("{conflict}") DO NOTHING'
    session.connection().execute(text(sql), params)


def bulk_update(session: Session, table: Any, rows: list[dict[str, Any]], *, key: str, columns: tuple[str, ...],
                names: dict[str, str] | None = None) -> None:
    """PostgreSQL: UPDATE the rows whose id is ``row[key]`` in ONE statement (UPDATE … FROM unnest); a batch
    that names one row twice falls back to one UPDATE each, in order (one statement could not order them)."""
    if not rows:
        return
    names = names or {}
    if len({row[key] for row in rows}) < len(rows):
        for row in rows:
            bulk_update(session, table, [row], key=key, columns=columns, names=names)
        return
    arrays, values, params = _arrays(table, rows, ("id", *columns), {"id": key, **names})
    quoted = ", ".join(f'"{c}"' for c in ("id", *columns))
    sets = ", ".join(f'"{c}" = {v}' for c, v in zip(columns, values[1:], strict=True))
    session.connection().execute(text(
        f'UPDATE "{table.name}" AS t SET {sets} FROM unnest({", ".join(arrays)}) AS v({quoted}) WHERE t.id = v.id'),
        params)


def _save_answers_many_statement(_dialect: Any) -> Any:
    """PostgreSQL: _SAVE_ANSWERS / _SAVE_ANSWERS_PROXY for many assessments in one UPDATE … FROM unnest: each
    row's delta merged into the answers as they are at the UPDATE; proxy set where a proxy_by is given."""
    a = _table(Assessment)
    # the deltas as ONE JSON document made an array on the server, as _arrays does for the JSON columns: a
    # text[] parameter would be an array literal that psycopg escapes quote by quote in Python
    deltas = text("ARRAY(SELECT e FROM jsonb_array_elements(CAST(:deltas AS jsonb)) WITH ORDINALITY AS t(e, i)"
                  " ORDER BY i)").bindparams(bindparam("deltas", type_=Text))
    d = func.unnest(bindparam("ids", type_=postgresql.ARRAY(Integer)), deltas,
                    bindparam("answered_by", type_=postgresql.ARRAY(Integer)),
                    bindparam("proxy_by", type_=postgresql.ARRAY(Integer))).table_valued(
        "id", "delta", "answered_by", "proxy_by").render_derived(name="d")
    return (update(a).where(a.c.id == d.c.id)
            .values(answers=_merged_answers(d.c.delta),
                    answered_by=d.c.answered_by, updated_at=bindparam("now"), proposal=None,
                    proxy=case((d.c.proxy_by.is_(None), a.c.proxy), else_=true()),
                    proxy_by=func.coalesce(d.c.proxy_by, a.c.proxy_by)))


_SAVE_ANSWERS_MANY = Prepared(_save_answers_many_statement)
_OUTBOX_COLUMNS = ("idempotency_key", "channel", "chat_id", "person_id", "payload", "priority", "status", "campaign",
                   "attempts", "not_before", "created_at")


def _enqueue_statement(dialect: Any) -> Any:
    """bot.outbox.enqueue's INSERT … ON CONFLICT (idempotency_key) DO NOTHING, for many rows at once."""
    table = _table(OutboxMessage)
    insert_of = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
    return (insert_of(table).values({name: bindparam(name) for name in _OUTBOX_COLUMNS})
            .on_conflict_do_nothing(index_elements=["idempotency_key"]))


_ENQUEUE = Prepared(_enqueue_statement)


def _reply(*, key: str, channel: str, chat_id: str, person_id: int | None, say: Say, now: datetime) -> dict[str, Any]:
    """The row bot.outbox.enqueue would queue for a reply (priority reply, not before ``now``)."""
    return {"idempotency_key": key, "channel": channel, "chat_id": str(chat_id), "person_id": person_id,
            "payload": say.to_json(), "priority": PRIORITY_REPLY, "status": "queued", "campaign": None,
            "attempts": 0, "not_before": now, "created_at": utcnow()}


def _expire(session: Session, model: Any, row_id: int | None) -> None:
    """A row changed behind the ORM's back: forget a loaded copy, if any (the next access reloads it)."""
    if not session.identity_map:
        return
    loaded = session.identity_map.get(session.identity_key(model, row_id))  # type: ignore[arg-type]
    if loaded is not None:
        session.expire(loaded)


def _already_processed(session: Session, base: str) -> bool:
    row = session.exec(select(AuditLog.id).where(AuditLog.action == PROCESSED, AuditLog.target == base)).first()
    return row is not None


def _identity(session: Session, *, channel: str, user_id: str, chat_id: str, display_name: str) -> ChatIdentity:
    identity = session.exec(
        select(ChatIdentity).where(ChatIdentity.channel == channel, ChatIdentity.user_id == user_id)
    ).first()
    if identity is None:
        identity = ChatIdentity(channel=channel, user_id=user_id, chat_id=chat_id, display_name=display_name[:100])
        session.add(identity)
        session.flush()
    elif identity.chat_id != chat_id:
        identity.chat_id = chat_id
        session.add(identity)
    return identity


def ensure_commune(session: Session, code: int) -> Commune:
    """The Commune row (and its Province) for an official code, created from vietnam-provinces if missing."""
    commune = session.get(Commune, code)
    if commune is not None:
        return commune
    ward = next((w for w in Ward.iter_all() if int(w.code) == code), None)
    if ward is None:
        raise ValueError(f"unknown commune code {code}")
    pcode = int(ward.province_code)
    if session.get(Province, pcode) is None:
        province = next(p for p in VnProvince.iter_all() if int(p.code) == pcode)
        session.add(Province(code=pcode, name=province.name))
        session.flush()
    commune = Commune(code=code, name=ward.name, province_code=pcode)
    session.add(commune)
    session.flush()
    return commune


class _Applier:
    """Turns effects into rows. Remembers rows created earlier in the same step (person, village)."""

    def __init__(self, session: Session, identity: _Identity, now: datetime, settings: Any = None, *,
                 view: DbView | None = None, fast: bool = False, deferred: Deferred | None = None) -> None:
        self.deferred = deferred  # PostgreSQL: fast answer saves are staged there (Deferred.save_answer)
        self.settings = settings
        self.session = session
        self.identity = identity
        self.now = now
        self.proposed_village: Village | None = None
        self.notifications: list[tuple[int, Say]] = []
        self.view = view
        # every effect of the step is a SaveAnswer: answers go straight to rows the view has just read, with
        # one UPDATE each and no ORM load (the hot path: a family answering question after question)
        self.fast = fast

    @property
    def person_id(self) -> int | None:
        return self.identity.person_id

    def audit(self, action: str, target: str = "", **detail: Any) -> None:
        self.session.add(AuditLog(at=self.now, actor=f"person:{self.person_id}" if self.person_id else "chat",
                                  action=action, target=target, detail=detail))

    def apply(self, effect: fx.Effect) -> None:
        method = getattr(self, f"_{type(effect).__name__}")
        method(effect)

    # ---------------------------------------------------------------- people
    def _ProposeVillage(self, e: fx.ProposeVillage) -> None:
        ensure_commune(self.session, e.commune_code)
        village = Village(commune_code=e.commune_code, name=e.name, invite_code=secrets.token_hex(4),
                          status="pending", proposed_by=self.person_id)
        self.session.add(village)
        self.session.flush()
        self.proposed_village = village
        self.audit("village.proposed", f"village:{village.id}", name=e.name)

    def _RegisterPerson(self, e: fx.RegisterPerson) -> None:
        ensure_commune(self.session, e.commune_code)
        village_id = e.village_id
        if village_id is None and self.proposed_village is not None:
            village_id = self.proposed_village.id
        person = Person(name=e.name, phone=e.phone, commune_code=e.commune_code, village_id=village_id,
                        consent_at=e.consent_at)
        self.session.add(person)
        self.session.flush()
        row = self.identity.row(self.session)
        row.person_id = self.identity.person_id = person.id
        self.session.add(row)
        if self.proposed_village is not None:
            self.proposed_village.proposed_by = person.id
            self.session.add(self.proposed_village)
        self.audit("person.registered", f"person:{person.id}", role=e.role, consent_at=e.consent_at.isoformat())

    def _role(self, role: str, status: str, commune_code: int, village_id: int | None) -> None:
        if self.person_id is None:
            return
        if village_id is None and self.proposed_village is not None and role == "village_leader":
            village_id = self.proposed_village.id
        exists = self.session.exec(
            select(RoleGrant).where(RoleGrant.person_id == self.person_id, RoleGrant.role == role,
                                    RoleGrant.status != "revoked")
        ).first()
        if exists is None:
            self.session.add(RoleGrant(person_id=self.person_id, role=role, status=status, commune_code=commune_code,
                                       village_id=village_id, created_at=self.now,
                                       decided_at=self.now if status == "granted" else None))

    def _GrantRole(self, e: fx.GrantRole) -> None:
        self._role(e.role, "granted", e.commune_code, e.village_id)

    def _RequestRole(self, e: fx.RequestRole) -> None:
        self._role(e.role, "pending", e.commune_code, e.village_id)
        self.audit("role.requested", f"person:{self.person_id}", role=e.role)

    def _CreateHousehold(self, e: fx.CreateHousehold) -> None:
        ensure_commune(self.session, e.commune_code)
        village_id = e.village_id
        if village_id is None and self.proposed_village is not None:
            village_id = self.proposed_village.id
        household = Household(commune_code=e.commune_code, village_id=village_id,
                              head_person_id=self.person_id if e.head_is_me else None, head_name=e.head_name,
                              members=e.members, phone=e.phone, has_phone=e.has_phone)
        self.session.add(household)
        self.session.flush()
        if not e.head_is_me:
            self.audit("household.added_by_leader", f"household:{household.id}")

    # ---------------------------------------------------------------- subjects
    def _subject_place(self, subject: Subject) -> tuple[int, int | None]:
        """(commune code, village id) of a subject."""
        if subject.kind == "household":
            h = self.session.get(Household, subject.id)
            if h is not None:
                return h.commune_code, h.village_id
        elif subject.kind == "clan":
            c = self.session.get(Clan, subject.id)
            if c is not None:
                return c.commune_code, None
        elif subject.kind == "village":
            v = self.session.get(Village, subject.id)
            if v is not None:
                return v.commune_code, v.id
        elif subject.kind == "unit":
            u = self.session.get(Unit, subject.id)
            if u is not None:
                return u.commune_code, None
        elif subject.kind == "person":
            p = self.session.get(Person, subject.id)
            if p is not None and p.commune_code is not None:
                return p.commune_code, p.village_id
        raise ValueError(f"unknown subject {subject.key()}")

    def _RegisterTitle(self, e: fx.RegisterTitle) -> None:
        commune_code, _ = self._subject_place(e.subject)
        row = self.session.exec(
            select(Registration).where(Registration.subject_type == e.subject.kind, Registration.subject_id == e.subject.id,
                                       Registration.title == e.title, Registration.year == e.year)
            .order_by(col(Registration.id).desc())
        ).first()
        if row is not None and row.status == "registered":
            return
        if row is not None:
            row.status, row.cancelled_at = "registered", None
        else:
            row = Registration(commune_code=commune_code, subject_type=e.subject.kind, subject_id=e.subject.id,
                               title=e.title, year=e.year, registered_by=self.person_id, created_at=self.now)
        self.session.add(row)

    def _CancelRegistration(self, e: fx.CancelRegistration) -> None:
        rows = self.session.exec(
            select(Registration).where(Registration.subject_type == e.subject.kind, Registration.subject_id == e.subject.id,
                                       Registration.title == e.title, Registration.year == e.year,
                                       Registration.status == "registered")
        ).all()
        for row in rows:
            row.status, row.cancelled_at = "cancelled", self.now
            self.session.add(row)

    def _assessment(self, subject: Subject, title: str, year: int) -> Assessment:
        if self.deferred is not None:
            self.deferred.flush_answers(self.session)  # the row as the batch's earlier steps left it
        row = self.session.exec(
            select(Assessment).where(Assessment.subject_type == subject.kind, Assessment.subject_id == subject.id,
                                     Assessment.title == title, Assessment.year == year)
        ).first()
        if row is None:
            commune_code, village_id = self._subject_place(subject)
            row = Assessment(commune_code=commune_code, village_id=village_id, subject_type=subject.kind,
                             subject_id=subject.id, title=title, year=year, answers={}, created_at=self.now,
                             updated_at=self.now)
            self.session.add(row)
            self.session.flush()
        return row

    def _SaveAnswer(self, e: fx.SaveAnswer) -> None:
        loaded = self.view.assessment_rows.get((e.subject.kind, e.subject.id, e.title, e.year)) if (
            self.fast and self.view is not None) else None
        if loaded is not None:
            self._save_answer_fast(loaded, e)
            return
        row = self._assessment(e.subject, e.title, e.year)
        if row.status in ("in_review", "recognised", "rejected"):
            log.warning("answer to a locked assessment %s ignored", row.id)
            return
        row.answers = {**(row.answers or {}), e.criterion: e.value}  # a new dict: JSON columns track assignment
        # the review pages' stored proposal was for the old answers; flagged so that it is written even when the
        # loaded object says None already (the dashboard stores proposals on a connection of its own)
        row.proposal = None
        flag_modified(row, "proposal")
        row.answered_by = self.person_id
        row.updated_at = self.now
        if e.proxy_by is not None:
            row.proxy, row.proxy_by = True, e.proxy_by
        self.session.add(row)

    def _save_answer_fast(self, row: AssessmentRow, e: fx.SaveAnswer) -> None:
        """_SaveAnswer on a row read in this step (same checks and values, one UPDATE)."""
        if row.status in ("in_review", "recognised", "rejected"):
            log.warning("answer to a locked assessment %s ignored", row.id)
            return
        row.answers = {**row.answers, e.criterion: e.value}
        if self.deferred is not None:
            self.deferred.save_answer(row.id, e.criterion, e.value, self.person_id, e.proxy_by, self.now)
            return
        params = {"b_id": row.id, "answers": row.answers, "delta": {e.criterion: e.value},
                  "answered_by": self.person_id, "now": self.now}
        if e.proxy_by is not None:
            _SAVE_ANSWERS_PROXY.rows(self.session, {**params, "proxy_by": e.proxy_by})
        else:
            _SAVE_ANSWERS.rows(self.session, params)
        _expire(self.session, Assessment, row.id)

    def _AttachEvidence(self, e: fx.AttachEvidence) -> None:
        row = self._assessment(e.subject, e.title, e.year)
        exists = self.session.exec(
            select(Evidence.id).where(Evidence.assessment_id == row.id, Evidence.criterion == e.criterion,
                                      Evidence.sha256 == e.sha256)
        ).first()
        if exists is None:
            path = thumb = ""
            media_dir = getattr(self.settings, "media_path", None)
            if media_dir is not None:  # where bot/media.py stored the file when the channel received it
                path = media.photo_path(media_dir, e.sha256) or ""
                thumb = media.thumb_path(e.sha256) if path else ""
            self.session.add(Evidence(assessment_id=row.id or 0, criterion=e.criterion, sha256=e.sha256,
                                      path=path, thumb_path=thumb, width=e.width, height=e.height,
                                      taken_at=e.taken_at, sent_by=self.person_id, created_at=self.now))

    def _SubmitAssessment(self, e: fx.SubmitAssessment) -> None:
        row = self._assessment(e.subject, e.title, e.year)
        if row.status in ("in_review", "recognised", "rejected"):
            return
        row.status, row.total, row.passed = "submitted", e.total, e.passed
        row.submitted_at = row.updated_at = self.now
        if e.proxy_by is not None:
            row.proxy, row.proxy_by = True, e.proxy_by
        self.session.add(row)
        self.audit("assessment.submitted", f"assessment:{row.id}", total=e.total, proxy_by=e.proxy_by)

    def _ConfirmSubmission(self, e: fx.ConfirmSubmission) -> None:
        row = self._assessment(Subject("household", e.household_id), e.title, e.year)
        if row.status not in ("submitted", "questioned"):
            log.warning("confirmation of assessment %s in status %s ignored", row.id, row.status)
            return
        row.status, row.confirmed_by, row.confirmed_at = "confirmed", self.person_id, self.now
        self.session.add(row)
        self.audit("assessment.confirmed", f"assessment:{row.id}")

    def _QuestionSubmission(self, e: fx.QuestionSubmission) -> None:
        row = self._assessment(Subject("household", e.household_id), e.title, e.year)
        if row.status in ("in_review", "recognised", "rejected"):  # the commune has it now: too late to question
            log.warning("question on a locked assessment %s ignored", row.id)
            return
        row.status = "questioned"
        row.leader_note, row.leader_note_by, row.leader_note_at = e.note[:500], self.person_id, self.now
        row.updated_at = self.now
        self.session.add(row)
        self.audit("assessment.questioned", f"assessment:{row.id}", note=e.note)

    def _NotifyPerson(self, e: fx.NotifyPerson) -> None:
        self.notifications.append((e.person_id, e.say))

    def _SendLoginLink(self, e: fx.SendLoginLink) -> None:
        """A one-time sign-in link for an officer with a web account (linked by person, else by phone)."""
        person = self.session.get(Person, self.person_id) if self.person_id else None
        base = str(getattr(self.settings, "public_base_url", "") or "")
        if person is None or not base:
            return
        officer = self.session.exec(select(Officer).where(Officer.person_id == person.id, Officer.active)).first()
        if officer is None and person.phone:
            officer = self.session.exec(
                select(Officer).where(Officer.phone == person.phone, Officer.person_id.is_(None), Officer.active)  # type: ignore[union-attr]
            ).first()
            if officer is not None:
                officer.person_id = person.id
                self.session.add(officer)
        if officer is None or officer.id is None:
            return
        link = create_login_link(self.session, officer.id, base, self.now)
        self.notifications.append((person.id or 0, Say(t("officer.login_link", url=link))))
        self.audit("officer.login_link", f"officer:{officer.id}")

    def _CreateUnit(self, e: fx.CreateUnit) -> None:
        ensure_commune(self.session, e.commune_code)
        unit = Unit(commune_code=e.commune_code, name=e.name, kind=e.kind, staff=e.staff,
                    rep_person_id=self.person_id, created_at=self.now)
        self.session.add(unit)
        self.session.flush()
        self.audit("unit.created", f"unit:{unit.id}", name=e.name, kind=e.kind)

    def _CreateClan(self, e: fx.CreateClan) -> None:
        ensure_commune(self.session, e.commune_code)
        clan = Clan(commune_code=e.commune_code, name=e.name, head_person_id=self.person_id, created_at=self.now)
        self.session.add(clan)
        self.session.flush()
        self.audit("clan.created", f"clan:{clan.id}", name=e.name)

    def _AddClanMember(self, e: fx.AddClanMember) -> None:
        exists = self.session.exec(
            select(ClanMember.id).where(ClanMember.clan_id == e.clan_id, ClanMember.household_id == e.household_id)
        ).first()
        if exists is None:
            self.session.add(ClanMember(clan_id=e.clan_id, household_id=e.household_id, created_at=self.now))
