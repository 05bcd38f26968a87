"""Reminder campaigns: audiences in set-based SQL, idempotent fan-out into the outbox, the APScheduler
trigger in the serve process, catch-up of missed runs, and `hoctap remind`.

A run never sends anything itself: it writes OutboxMessage rows (priority 10, one per chat identity,
idempotency key ``{campaign}:{year}:{person}:{identity}``) that the outbox sender delivers. Inserting skips
existing keys, so a repeated run, a run resumed after a crash, or two processes racing send nothing twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    DateTime,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal_column,
    null,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select
from sqlmodel import Session

from bot.campaigns import (
    Campaign,
    CampaignButton,
    CampaignConfig,
    CampaignError,
    QuietHours,
    as_utc,
    campaign_year,
    due_runs,
    load_campaigns,
    next_fire,
    occurrence,
    override_files,
)
from bot.outbox import PRIORITY_BULK
from flows.i18n import catalog, t
from flows.types import Button, Say
from models import jsonio
from models.settings import Settings
from models.tables import (
    Assessment,
    CampaignRun,
    CampaignYear,
    ChatIdentity,
    Clan,
    Commune,
    Household,
    OutboxMessage,
    Person,
    Registration,
    RoleGrant,
    Unit,
    Village,
)

log = logging.getLogger(__name__)

P = Person.__table__
CI = ChatIdentity.__table__
RG = RoleGrant.__table__
H = Household.__table__
CL = Clan.__table__
U = Unit.__table__
R = Registration.__table__
A = Assessment.__table__
CY = CampaignYear.__table__
V = Village.__table__
OB = OutboxMessage.__table__
CR = CampaignRun.__table__
CM = Commune.__table__

ROLE_TITLE = {"household": "gia_dinh", "clan_head": "dong_ho", "village_leader": "cong_dong", "unit_rep": "don_vi"}
TITLE_ORDER = ("gia_dinh", "dong_ho", "cong_dong", "don_vi", "cong_dan")
SUBJECT_ROLES = ("household", "clan_head", "village_leader", "unit_rep")
MAX_NAMES = 10
# a constant key for pg_try_advisory_lock: only the process holding it runs the scheduler
SCHEDULER_LOCK_KEY = 0x686F6374_0001


def default_config() -> CampaignConfig:
    return load_campaigns()


def settings_config(settings: Settings) -> CampaignConfig:
    """Defaults merged with DATA_DIR/campaigns/default.yaml and DATA_DIR/campaigns/<served code>.yaml."""
    return load_campaigns(override_files(settings.data_dir, settings.served_codes()))


# --- audiences (set-based SQL) ------------------------------------------------------------------------


def _lit(value: str) -> Any:
    # inline literal: a bound parameter in a UNION has no type PostgreSQL can infer
    return literal_column("'" + value.replace("'", "''") + "'")


def _subjects() -> Any:
    """(person_id, subject_type, subject_id): every subject a person answers for."""
    return union_all(
        select(H.c.head_person_id.label("person_id"), _lit("household").label("subject_type"),
               H.c.id.label("subject_id")).where(H.c.head_person_id.is_not(None)),
        select(CL.c.head_person_id, _lit("clan"), CL.c.id).where(CL.c.head_person_id.is_not(None)),
        select(RG.c.person_id, _lit("village"), RG.c.village_id).where(
            RG.c.role == "village_leader", RG.c.status == "granted", RG.c.village_id.is_not(None)),
        select(U.c.rep_person_id, _lit("unit"), U.c.id).where(U.c.rep_person_id.is_not(None)),
        select(P.c.id, _lit("person"), P.c.id),
    ).subquery("subj")


def _registered(year: int) -> Any:
    """(person_id, subject_type, subject_id, title) registered (status registered) for the year."""
    subj = _subjects()
    return (
        select(subj.c.person_id, subj.c.subject_type, subj.c.subject_id, R.c.title)
        .select_from(subj.join(R, and_(R.c.subject_type == subj.c.subject_type, R.c.subject_id == subj.c.subject_id)))
        .where(R.c.year == year, R.c.status == "registered")
        .subquery("reg")
    )


def _role_title() -> Any:
    return case(*((RG.c.role == role, _lit(title)) for role, title in ROLE_TITLE.items()), else_=null())


def audience_query(campaign: Campaign, year: int) -> Select[Any]:
    """Rows (person_id, title, status, scope) of the campaign's audience; several rows per person are fine."""
    consent = exists().where(P.c.id == RG.c.person_id, P.c.consent_at.is_not(None))
    if campaign.audience in ("people", "not_registered"):
        q = select(
            RG.c.person_id.label("person_id"), _role_title().label("title"),
            null().label("status"), null().label("scope"),
        ).where(RG.c.role.in_(campaign.roles), RG.c.status == "granted", consent)
        if campaign.audience == "not_registered":
            reg = _registered(year)
            q = q.where(~exists().where(reg.c.person_id == RG.c.person_id))
        return q.distinct()
    if campaign.audience in ("registered", "not_submitted"):
        reg = _registered(year)
        has_consent = exists().where(P.c.id == reg.c.person_id, P.c.consent_at.is_not(None))
        if campaign.audience == "registered":
            return select(reg.c.person_id, reg.c.title, null().label("status"), null().label("scope")).where(
                has_consent).distinct()
        joined = reg.outerjoin(A, and_(
            A.c.subject_type == reg.c.subject_type, A.c.subject_id == reg.c.subject_id,
            A.c.title == reg.c.title, A.c.year == year))
        return (
            select(reg.c.person_id, reg.c.title, A.c.status.label("status"), null().label("scope"))
            .select_from(joined)
            .where(has_consent, or_(A.c.id.is_(None), A.c.status.not_in(campaign.done_statuses or ("-",))))
            .distinct()
        )
    if campaign.audience == "village_leaders":
        return select(RG.c.person_id, null().label("title"), null().label("status"),
                      RG.c.village_id.label("scope")).where(
            RG.c.role == "village_leader", RG.c.status == "granted", RG.c.village_id.is_not(None)).distinct()
    if campaign.audience == "officers":
        return select(RG.c.person_id, null().label("title"), null().label("status"),
                      RG.c.commune_code.label("scope")).where(
            RG.c.role == "officer", RG.c.status == "granted", RG.c.commune_code.is_not(None)).distinct()
    raise CampaignError(f"unknown audience {campaign.audience!r}")


# --- unreachable report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unreachable:
    """Someone the bot could not reach: for the village leader to remind in person."""

    village_id: int | None
    commune_code: int | None
    name: str
    reason: str  # no_identity | blocked | undelivered | no_phone
    person_id: int | None = None
    household_id: int | None = None


def unreachable_report(session: Session, *, commune_code: int | None = None) -> list[Unreachable]:
    """People the bot cannot reach, ordered by village: no chat identity, blocked (Person.unreachable_at),
    or an outbox message that ended unreachable with nothing sent since; and households without a phone
    and without a linked person. One entry per person or household, the first reason wins."""
    has_role = exists().where(RG.c.person_id == P.c.id, RG.c.status == "granted", RG.c.role.in_(SUBJECT_ROLES))
    O2 = OB.alias("o2")
    later_sent = exists().where(O2.c.person_id == OB.c.person_id, O2.c.status == "sent", O2.c.id > OB.c.id)
    undelivered = exists().where(OB.c.person_id == P.c.id, OB.c.status == "unreachable", ~later_sent)
    no_identity = ~exists().where(CI.c.person_id == P.c.id)
    reason = case(
        (P.c.unreachable_at.is_not(None), _lit("blocked")),
        (no_identity, _lit("no_identity")),
        else_=_lit("undelivered"),
    )
    people = select(
        P.c.village_id, P.c.commune_code, P.c.name, reason.label("reason"),
        P.c.id.label("person_id"), null().label("household_id"),
    ).where(has_role, or_(P.c.unreachable_at.is_not(None), no_identity, undelivered))
    households = select(
        H.c.village_id, H.c.commune_code, H.c.head_name, _lit("no_phone"), null(), H.c.id,
    ).where(H.c.head_person_id.is_(None))
    if commune_code is not None:
        people = people.where(P.c.commune_code == commune_code)
        households = households.where(H.c.commune_code == commune_code)
    both = union_all(people, households).subquery("u")
    rows = session.execute(select(both).order_by(both.c.village_id, both.c.name)).all()
    return [Unreachable(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]


def unreachable_by_village(report: Iterable[Unreachable]) -> dict[int | None, list[Unreachable]]:
    out: dict[int | None, list[Unreachable]] = defaultdict(list)
    for item in report:
        out[item.village_id].append(item)
    return dict(out)


# --- digests data -------------------------------------------------------------------------------------


@dataclass
class VillageStats:
    name: str = ""
    registered: int = 0
    pending: list[str] = field(default_factory=list)  # head names of registered households not submitted


def village_stats(session: Session, year: int, done_statuses: Sequence[str]) -> dict[int, VillageStats]:
    """Per village: households registered for gia_dinh this year, and those that have not submitted."""
    reg = and_(R.c.subject_type == "household", R.c.subject_id == H.c.id, R.c.title == "gia_dinh",
               R.c.year == year, R.c.status == "registered")
    ass = and_(A.c.subject_type == "household", A.c.subject_id == H.c.id, A.c.title == "gia_dinh", A.c.year == year)
    q = (
        select(H.c.village_id, V.c.name, H.c.head_name, A.c.status)
        .select_from(H.join(V, V.c.id == H.c.village_id).join(R, reg).outerjoin(A, ass))
        .order_by(H.c.village_id, H.c.id)
    )
    stats: dict[int, VillageStats] = {}
    for village_id, village_name, head_name, status in session.execute(q):
        s = stats.setdefault(village_id, VillageStats(name=village_name))
        s.registered += 1
        if status not in done_statuses:
            s.pending.append(head_name)
    return stats


def commune_stats(session: Session, year: int) -> dict[int, Counter[str]]:
    """Per commune: assessments of the year counted by status."""
    q = select(A.c.commune_code, A.c.status, func.count()).where(A.c.year == year).group_by(
        A.c.commune_code, A.c.status)
    out: dict[int, Counter[str]] = defaultdict(Counter)
    for code, status, n in session.execute(q):
        out[code][status] += n
    return dict(out)


def first_names(names: Sequence[str], limit: int = MAX_NAMES) -> str:
    """ "An, Bình, Cúc và 4 người khác": the given name is the last word of a Vietnamese name."""
    short = [(n.split() or ["?"])[-1] for n in names]
    text_ = ", ".join(short[:limit])
    if len(short) > limit:
        text_ += t("remind.more", n=len(short) - limit)
    return text_


def fmt_date(value: date) -> str:
    return value.strftime("%d/%m/%Y")


# --- a run --------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    campaign: str
    year: int
    scheduled_for: datetime | None
    now: datetime
    dry_run: bool = False
    people: int = 0  # in the audience with at least one chat identity
    rows: int = 0  # outbox rows built (one per identity)
    queued: int = 0  # rows inserted now (existing keys skipped)
    skipped_existing: int = 0
    no_identity: int = 0
    no_identity_people: list[tuple[int, str, int | None]] = field(default_factory=list)  # id, name, village
    unreachable: int = 0  # skipped: Person.unreachable_at set
    skipped: int = 0  # digests with nothing to say
    per_channel: Counter[str] = field(default_factory=Counter)
    sample: Say | None = None
    not_before: datetime | None = None


@dataclass(slots=True)
class _Recipient:
    person_id: int
    name: str
    commune_code: int | None
    village_id: int | None
    unreachable: bool
    titles: list[str] = field(default_factory=list)
    statuses: set[str] = field(default_factory=set)
    scopes: list[int] = field(default_factory=list)
    identities: dict[int, tuple[str, str]] = field(default_factory=dict)  # identity id -> (channel, chat_id)


def _recipients(session: Session, campaign: Campaign, year: int) -> list[_Recipient]:
    aud = audience_query(campaign, year).subquery("aud")
    q = (
        select(aud.c.person_id, aud.c.title, aud.c.status, aud.c.scope, P.c.name, P.c.commune_code,
               P.c.village_id, P.c.unreachable_at, CI.c.id, CI.c.channel, CI.c.chat_id)
        .select_from(aud.join(P, P.c.id == aud.c.person_id).outerjoin(CI, CI.c.person_id == P.c.id))
        .order_by(aud.c.person_id, CI.c.id)
    )
    out: list[_Recipient] = []
    cur: _Recipient | None = None
    for pid, title, status, scope, name, commune, village, unreachable_at, ci_id, channel, chat_id in session.execute(q):
        if cur is None or cur.person_id != pid:
            cur = _Recipient(pid, name or "", commune, village, unreachable_at is not None)
            out.append(cur)
        if title and title not in cur.titles:
            cur.titles.append(title)
        if status:
            cur.statuses.add(status)
        if scope is not None and scope not in cur.scopes:
            cur.scopes.append(scope)
        if ci_id is not None:
            cur.identities[ci_id] = (channel, chat_id)
    return out


def _deadlines(session: Session, year: int) -> dict[int, tuple[datetime | None, datetime | None]]:
    rows = session.execute(select(CY.c.commune_code, CY.c.registration_deadline, CY.c.assessment_deadline)
                           .where(CY.c.year == year))
    return {code: (reg, ass) for code, reg, ass in rows}


def _title_rank(title: str) -> int:
    return TITLE_ORDER.index(title) if title in TITLE_ORDER else len(TITLE_ORDER)


def _titles_text(titles: Sequence[str]) -> str:
    ordered = sorted(titles, key=_title_rank)
    names = [f"\u201c{t(f'remind.title.{x}')}\u201d" if f"remind.title.{x}" in catalog() else x for x in ordered]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + t("remind.and") + names[-1]


def _buttons(buttons: Sequence[CampaignButton], title: str = "gia_dinh") -> tuple[Button, ...]:
    """Buttons with their catalog labels; ``{title}`` in a value becomes the person's first title."""
    return tuple(Button(t(b.label), b.value.replace("{title}", title)) for b in buttons)


class _ButtonJson(dict[int, list[dict[str, str]]]):
    """Buttons as JSON, computed once per tuple of buttons (keyed by identity: renderers reuse theirs)."""

    def get_json(self, buttons: tuple[Button, ...]) -> list[dict[str, str]]:
        value = self.get(id(buttons))
        if value is None:
            value = self[id(buttons)] = [{"label": b.label, "value": b.value} for b in buttons]
            self._keep.append(buttons)  # ids stay unique while the tuple lives
        return value

    def __init__(self) -> None:
        super().__init__()
        self._keep: list[tuple[Button, ...]] = []


def _tag(campaign: Campaign, scheduled_for: datetime | None) -> str:
    """The key prefix: the campaign id, plus the local date for campaigns that fire several times a year."""
    if campaign.per_occurrence and scheduled_for is not None:
        return f"{campaign.id}@{scheduled_for.astimezone(campaign.tz):%m-%d}"
    return campaign.id


_OUTBOX_COLS = ("idempotency_key, channel, chat_id, person_id, payload, priority, status, campaign, attempts, "
                "not_before, created_at")


def _insert_sql(dialect: str) -> Any:
    """One statement per batch: the batch travels as a single JSON array of
    [key, channel, chat_id, person_id, payload] and the database unpacks it, so the per-row cost stays
    in the database rather than in per-parameter Python processing. Existing keys are skipped."""
    table = OB.name
    if dialect == "postgresql":
        sql = (
            f"INSERT INTO {table} ({_OUTBOX_COLS}) "
            "SELECT e->>0, e->>1, e->>2, CAST(e->>3 AS INTEGER), e->4, :priority, 'queued', :campaign, 0, "
            ":not_before, :now FROM json_array_elements(CAST(:rows AS JSON)) AS e "
            "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
        )
    elif dialect == "sqlite":
        sql = (
            f"INSERT INTO {table} ({_OUTBOX_COLS}) "
            "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), "
            "json_extract(value, '$[3]'), json_extract(value, '$[4]'), :priority, 'queued', :campaign, 0, "
            ":not_before, :now FROM json_each(:rows) WHERE true "  # WHERE: SQLite's upsert parsing rule
            "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
        )
    else:  # pragma: no cover - hoctap supports SQLite and PostgreSQL
        raise RuntimeError(f"unsupported database {dialect}")
    return text(sql).bindparams(
        bindparam("not_before", type_=DateTime(timezone=True)), bindparam("now", type_=DateTime(timezone=True)),
    )


OutboxRow = tuple[str, str, str, int, dict[str, Any]]  # idempotency key, channel, chat_id, person_id, payload


def insert_outbox(
    session: Session, rows: Sequence[OutboxRow], *, campaign: str, not_before: datetime, now: datetime,
    priority: int = PRIORITY_BULK, batch_size: int = 5000, on_batch: Callable[[int], None] | None = None,
) -> int:
    """INSERT … ON CONFLICT (idempotency_key) DO NOTHING in batches; returns how many rows were new."""
    if session.get_bind().dialect.name == "postgresql":
        return _insert_outbox_copy(session, rows, campaign=campaign, not_before=not_before, now=now,
                                   priority=priority, batch_size=batch_size, on_batch=on_batch)
    stmt = _insert_sql(session.get_bind().dialect.name)
    inserted = 0
    for start in range(0, len(rows), batch_size):
        batch = jsonio.dumps(list(rows[start:start + batch_size]))
        result = session.execute(stmt, {"rows": batch, "campaign": campaign, "priority": priority,
                                        "not_before": not_before, "now": now})
        inserted += len(result.all())
        if on_batch is not None:
            on_batch(start + batch_size)
    return inserted


_STAGE = "_outbox_fanout"


def _insert_outbox_copy(
    session: Session, rows: Sequence[OutboxRow], *, campaign: str, not_before: datetime, now: datetime,
    priority: int, batch_size: int, on_batch: Callable[[int], None] | None,
) -> int:
    """PostgreSQL: each batch is COPYed into a temporary table (the cheapest way in: no JSON array to unpack,
    no parameters) and moved with one INSERT … SELECT … ON CONFLICT DO NOTHING. Same transaction as the session;
    the table lives until commit."""
    conn = session.connection()
    conn.exec_driver_sql(
        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (n serial, idempotency_key text, channel text, chat_id text, "
        "person_id integer, payload json) ON COMMIT DROP")
    move = text(
        f"INSERT INTO {OB.name} ({_OUTBOX_COLS}) "
        "SELECT idempotency_key, channel, chat_id, person_id, payload, :priority, 'queued', :campaign, 0, "
        f":not_before, :now FROM {_STAGE} ORDER BY n ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
    ).bindparams(bindparam("not_before", type_=DateTime(timezone=True)), bindparam("now", type_=DateTime(timezone=True)))
    raw: Any = conn.connection.driver_connection
    dumps = jsonio.dumps
    inserted = 0
    for start in range(0, len(rows), batch_size):
        with raw.cursor() as cur:
            cur.execute(f"TRUNCATE {_STAGE}")
            with cur.copy(f"COPY {_STAGE} (idempotency_key, channel, chat_id, person_id, payload) FROM STDIN") as copy:
                for key, channel, chat_id, person_id, payload in rows[start:start + batch_size]:
                    copy.write_row((key, channel, chat_id, person_id, dumps(payload)))
        result = conn.execute(move, {"campaign": campaign, "priority": priority, "not_before": not_before, "now": now})
        inserted += len(result.all())
        if on_batch is not None:
            on_batch(start + batch_size)
    return inserted


def run_campaign(
    session: Session,
    campaign: Campaign | str,
    year: int,
    now: datetime,
    dry_run: bool = False,
    *,
    config: CampaignConfig | None = None,
    scheduled_for: datetime | None = None,
    quiet_hours: str | None = None,
    batch_size: int = 5000,
    on_batch: Callable[[int], None] | None = None,
) -> RunResult:
    """Fan one campaign out into the outbox for ``year`` as of ``now`` (no wall clock). Does not commit.

    ``scheduled_for`` is the firing this run stands for (default: the campaign's latest firing in ``year``
    up to ``now``); it is recorded in CampaignRun. A dry run computes everything and writes nothing.
    """
    config = config or default_config()
    if isinstance(campaign, str):
        campaign = config.get(campaign)
    now = as_utc(now)
    if scheduled_for is None:
        scheduled_for = occurrence(campaign, year, now)
    quiet = QuietHours.parse(quiet_hours or config.quiet_hours)
    not_before = quiet.not_before(now, campaign.tz)
    result = RunResult(campaign.id, year, scheduled_for, now, dry_run=dry_run, not_before=not_before)

    deadlines = _deadlines(session, year)
    render = _renderer(session, campaign, year, config, deadlines)
    with _no_gc():
        rows = _build_rows(_recipients(session, campaign, year), render, _tag(campaign, scheduled_for), year,
                           result)
    if dry_run:
        return result
    result.queued = insert_outbox(session, rows, campaign=campaign.id, not_before=not_before, now=now,
                                 batch_size=batch_size, on_batch=on_batch)
    result.skipped_existing = result.rows - result.queued
    session.add(CampaignRun(
        campaign=campaign.id, year=year, scheduled_for=scheduled_for, started_at=now, finished_at=now,
        queued=result.queued, no_identity=result.no_identity, dry_run=False,
    ))
    session.flush()
    return result


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building 100,000s of small containers that form no cycles:
    otherwise its repeated full passes over a growing heap make the fan-out superlinear."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _build_rows(recipients: Iterable[_Recipient], render: Renderer, tag: str, year: int,
                result: RunResult) -> list[OutboxRow]:
    """Outbox rows (one per chat identity) for the recipients; counts go into ``result``."""
    rows: list[OutboxRow] = []
    button_json = _ButtonJson()
    for rec in recipients:
        if rec.unreachable:
            result.unreachable += 1
            continue
        if not rec.identities:
            result.no_identity += 1
            result.no_identity_people.append((rec.person_id, rec.name, rec.village_id))
            continue
        messages = render(rec)
        if not messages:
            result.skipped += 1
            continue
        result.people += 1
        for suffix, text_, buttons in messages:
            # Say.to_json() by hand: this loop runs once per person
            payload = {"text": text_, "buttons": button_json.get_json(buttons), "request_contact": False}
            if result.sample is None:
                result.sample = Say(text_, buttons)
            for ident_id, (channel, chat_id) in rec.identities.items():
                result.per_channel[channel] += 1
                rows.append((f"{tag}:{year}:{rec.person_id}:{ident_id}{suffix}", channel, chat_id,
                             rec.person_id, payload))
    result.rows = len(rows)
    return rows


def _deadline(config: CampaignConfig, campaign: Campaign, year: int, commune: int | None,
              deadlines: dict[int, tuple[datetime | None, datetime | None]]) -> str:
    reg, ass = deadlines.get(commune, (None, None)) if commune is not None else (None, None)
    chosen = {"registration": reg, "assessment": ass}.get(campaign.deadline)
    if chosen is not None:
        return fmt_date(as_utc(chosen).astimezone(campaign.tz).date())
    return fmt_date(config.default_deadline(campaign.deadline, year))


Message = tuple[str, str, tuple[Button, ...]]  # key suffix, text, buttons
Renderer = Callable[[_Recipient], list[Message]]


def _renderer(session: Session, campaign: Campaign, year: int, config: CampaignConfig,
              deadlines: dict[int, tuple[datetime | None, datetime | None]]) -> Renderer:
    """A function turning one recipient into messages (key suffix, text, buttons). Digests load their figures once."""
    buttons = _buttons(campaign.buttons)

    if campaign.audience == "village_leaders":
        stats = village_stats(session, year, campaign.done_statuses)
        unreachable = unreachable_by_village(unreachable_report(session))

        def village(rec: _Recipient) -> list[Message]:
            out = []
            for vid in rec.scopes:
                s = stats.get(vid, VillageStats())
                missing = unreachable.get(vid, [])
                if not s.pending and not missing:
                    continue
                name = s.name or _village_name(session, vid)
                msg = t(campaign.template, village=name, pending=len(s.pending), registered=s.registered,
                        year=year, names=first_names(s.pending) or "-",
                        deadline=_deadline(config, campaign, year, rec.commune_code, deadlines))
                if missing:
                    msg += "\n" + t("remind.village_digest_unreachable", count=len(missing),
                                    names=first_names([m.name for m in missing]))
                out.append((f":v{vid}", msg, buttons))
            return out

        return village

    if campaign.audience == "officers":
        per_commune = commune_stats(session, year)
        unreachable_count = Counter(u.commune_code for u in unreachable_report(session))
        names: dict[int, str] = dict(session.execute(select(CM.c.code, CM.c.name)).all())

        def officer(rec: _Recipient) -> list[Message]:
            out = []
            for code in rec.scopes:
                st = per_commune.get(code, Counter())
                msg = t(campaign.template, commune=names.get(code, str(code)), year=year,
                        awaiting=st["submitted"] + st["confirmed"] + st["in_review"],
                        returned=st["returned"], unreachable=unreachable_count.get(code, 0),
                        deadline=_deadline(config, campaign, year, code, deadlines))
                out.append((f":c{code}", msg, buttons))
            return out

        return officer

    # the text differs per person only by name: render each (template, titles, commune) once with a marker
    # in place of the name, then splice names in (100,000 people share a handful of variants)
    attention_set = set(campaign.attention_statuses)
    mark = "\x00"
    variants: dict[tuple[bool, tuple[str, ...], int | None], tuple[str, str, tuple[Button, ...]]] = {}

    def person(rec: _Recipient) -> list[Message]:
        attention = bool(campaign.attention_template) and bool(rec.statuses & attention_set)
        titles = tuple(sorted(rec.titles or ("gia_dinh",), key=_title_rank))
        key = (attention, titles, rec.commune_code)
        variant = variants.get(key)
        if variant is None:
            template = campaign.attention_template if attention else campaign.template
            rendered = t(str(template), name=mark, titles=_titles_text(titles), year=year,
                         deadline=_deadline(config, campaign, year, rec.commune_code, deadlines))
            head, _, tail = rendered.partition(mark)
            chosen = campaign.attention_buttons if attention and campaign.attention_buttons else campaign.buttons
            variant = variants[key] = (head, tail, _buttons(chosen, titles[0]))
        return [("", variant[0] + rec.name + variant[1], variant[2])]

    return person


def _village_name(session: Session, village_id: int) -> str:
    return session.execute(select(V.c.name).where(V.c.id == village_id)).scalar() or str(village_id)


# --- due runs and catch-up ----------------------------------------------------------------------------


def last_runs(session: Session) -> dict[str, datetime]:
    """Campaign id -> the latest scheduled_for with a (non dry-run) CampaignRun."""
    q = (select(CR.c.campaign, func.max(CR.c.scheduled_for))
         .where(CR.c.dry_run.is_(False), CR.c.scheduled_for.is_not(None)).group_by(CR.c.campaign))
    return {cid: as_utc(when) for cid, when in session.execute(q) if when is not None}


def run_due(engine: Engine, config: CampaignConfig, now: datetime, *, only: str | None = None,
            quiet_hours: str | None = None) -> list[RunResult]:
    """Run every campaign firing due at ``now`` (catch-up included), each in its own transaction."""
    campaigns = [c for c in config.enabled() if only is None or c.id == only]
    with Session(engine) as session:
        done = last_runs(session)
    results = []
    for campaign, scheduled in due_runs(campaigns, done, now):
        year = campaign_year(campaign, scheduled)
        with Session(engine, expire_on_commit=False) as session:
            # re-check inside the transaction: a manual run may have happened meanwhile
            if last_runs(session).get(campaign.id, datetime.min.replace(tzinfo=UTC)) >= scheduled:
                continue
            result = run_campaign(session, campaign, year, now, config=config, scheduled_for=scheduled,
                                  quiet_hours=quiet_hours)
            session.commit()
        log.info("campaign %s %s: %d queued, %d without chat, %d existing", campaign.id, year,
                 result.queued, result.no_identity, result.skipped_existing)
        results.append(result)
    return results


# --- the serve process --------------------------------------------------------------------------------


def _wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class SchedulerHandle:
    engine: Engine
    config: CampaignConfig
    quiet_hours: str
    clock: Callable[[], datetime] = _wall_clock
    retry_seconds: float = 60.0
    scheduler: Any = None  # AsyncIOScheduler once this process leads
    lock_conn: Connection | None = None
    task: asyncio.Task[None] | None = None
    run_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def leading(self) -> bool:
        return self.scheduler is not None

    def try_lock(self) -> bool:
        """On PostgreSQL, take the scheduler advisory lock on a dedicated connection (held until stop)."""
        if self.engine.dialect.name != "postgresql":
            return True
        conn = self.engine.connect()
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": SCHEDULER_LOCK_KEY}).scalar())
            conn.commit()  # the session-level lock outlives the transaction; do not sit idle in one
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self.lock_conn = conn
        return True

    def release(self) -> None:
        conn, self.lock_conn = self.lock_conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEDULER_LOCK_KEY})
            conn.commit()
        finally:
            conn.invalidate()  # never hand a connection that held the lock back to the pool
            conn.close()

    async def run_due(self, only: str | None = None) -> list[RunResult]:
        async with self.run_lock:
            return await asyncio.to_thread(run_due, self.engine, self.config, self.clock(), only=only,
                                           quiet_hours=self.quiet_hours)


async def _fire(handle: SchedulerHandle, campaign_id: str) -> None:
    try:
        await handle.run_due(only=campaign_id)
    except Exception:
        log.exception("campaign %s failed; it is caught up at the next start within its window", campaign_id)


def build_scheduler(handle: SchedulerHandle) -> Any:
    """An AsyncIOScheduler with one job per enabled campaign; it only triggers runs."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    tz = handle.config.enabled()[0].timezone if handle.config.enabled() else "Asia/Ho_Chi_Minh"
    sched = AsyncIOScheduler(timezone=ZoneInfo(tz))
    for campaign in handle.config.enabled():
        sched.add_job(
            _fire, campaign.trigger(), args=[handle, campaign.id], id=f"campaign:{campaign.id}",
            name=campaign.name, misfire_grace_time=int(campaign.window.total_seconds()), coalesce=True,
            max_instances=1, replace_existing=True,
        )
    return sched


async def _lead(handle: SchedulerHandle) -> None:
    # polling a database lock held by another process: there is no local event to wait for
    while not await asyncio.to_thread(handle.try_lock):  # noqa: ASYNC110
        await asyncio.sleep(handle.retry_seconds)
    handle.scheduler = build_scheduler(handle)
    handle.scheduler.start()
    try:
        await handle.run_due()  # catch up firings missed while no process was leading
    except Exception:
        log.exception("campaign catch-up failed")


_HANDLES: dict[int, SchedulerHandle] = {}


async def start_scheduler(runtime: Any, *, clock: Callable[[], datetime] | None = None,
                          config: CampaignConfig | None = None) -> SchedulerHandle:
    """Start the campaign scheduler for a Runtime (needs .settings and .engine); call in the lifespan."""
    settings: Settings = runtime.settings
    handle = SchedulerHandle(
        engine=runtime.engine, config=config or settings_config(settings), quiet_hours=settings.quiet_hours,
        clock=clock or _wall_clock,
    )
    _HANDLES[id(runtime)] = handle
    handle.task = asyncio.create_task(_lead(handle), name="hoctap-scheduler")
    return handle


async def stop_scheduler(runtime: Any) -> None:
    """Stop the scheduler (if this process leads) and release the advisory lock."""
    handle = _HANDLES.pop(id(runtime), None)
    if handle is None:
        return
    if handle.task is not None and not handle.task.done():
        handle.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await handle.task
    if handle.scheduler is not None:
        handle.scheduler.shutdown(wait=False)
        handle.scheduler = None
    async with handle.run_lock:
        await asyncio.to_thread(handle.release)


# --- CLI ----------------------------------------------------------------------------------------------


def _parse_now(value: str | None, tz: ZoneInfo) -> datetime:
    if not value:
        return _wall_clock()
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=tz) if parsed.tzinfo is None else parsed


def remind_command(settings: Settings, args: argparse.Namespace) -> int:
    """`hoctap remind CAMPAIGN --year Y [--dry-run] [--now ISO]` and `hoctap remind --list`."""
    try:
        config = settings_config(settings)
    except CampaignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tz = ZoneInfo(settings.timezone)
    try:
        now = _parse_now(getattr(args, "now", None), tz)
    except ValueError:
        print(f"error: --now {args.now!r} is not an ISO time, e.g. 2027-01-05T08:00", file=sys.stderr)
        return 2
    if getattr(args, "list", False):
        for c in config.campaigns.values():
            nxt = next_fire(c, now) if c.enabled else None
            when = nxt.astimezone(c.tz).strftime("%Y-%m-%d %H:%M %Z") if nxt else "off"
            print(f"{c.id:<22} {when:<26} {c.audience:<16} {c.name}")
        return 0
    if not args.campaign:
        print("error: name a campaign (hoctap remind --list shows them)", file=sys.stderr)
        return 2
    if args.campaign not in config.campaigns:
        print(f"error: unknown campaign {args.campaign!r}; campaigns: {', '.join(config.campaigns)}",
              file=sys.stderr)
        return 2
    campaign = config.campaigns[args.campaign]
    year = args.year or now.astimezone(campaign.tz).year

    from models.db import make_engine

    engine = make_engine(settings.db_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            result = run_campaign(session, campaign, year, now, dry_run=args.dry_run, config=config,
                                  quiet_hours=settings.quiet_hours)
            if args.dry_run:
                session.rollback()
            else:
                session.commit()
    finally:
        engine.dispose()
    _print_result(result, campaign)
    return 0


def _print_result(result: RunResult, campaign: Campaign) -> None:
    head = f"{result.campaign} {result.year}" + (" (dry run, nothing written)" if result.dry_run else "")
    print(head)
    print(f"  people reached: {result.people}; messages: {result.rows}")
    for channel, n in sorted(result.per_channel.items()):
        print(f"    {channel}: {n}")
    print(f"  without chat identity: {result.no_identity}; unreachable: {result.unreachable}; "
          f"nothing to report: {result.skipped}")
    if not result.dry_run:
        print(f"  queued: {result.queued}; already queued before: {result.skipped_existing}")
    if result.not_before and result.not_before > result.now:
        print(f"  held for quiet hours until {result.not_before.astimezone(campaign.tz):%Y-%m-%d %H:%M}")
    if result.sample is not None:
        print("  sample:")
        print("    " + result.sample.text.replace("\n", "\n    "))
        if result.sample.buttons:
            print("    " + " ".join(f"[{b.label}]" for b in result.sample.buttons))
