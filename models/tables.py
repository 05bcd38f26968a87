"""SQLModel tables. Timestamps are timezone-aware UTC; JSON columns hold plain data."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def ts_field(*, nullable: bool = True, index: bool = False) -> Any:
    """A timezone-aware timestamp column."""
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable, index=index))


def created_field() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


def json_field(default: Any = None) -> Any:
    factory = dict if default is None else default
    return Field(default_factory=factory, sa_column=Column(JSON, nullable=False))


# --- administrative units -------------------------------------------------------------------------


class Province(SQLModel, table=True):
    """A province (tỉnh / thành phố trung ương); code from vietnam-provinces."""

    code: int = Field(primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False})
    name: str


class Commune(SQLModel, table=True):
    """A commune (xã / phường / đặc khu) that the deployment serves; code from vietnam-provinces."""

    code: int = Field(primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False})
    name: str
    province_code: int = Field(foreign_key="province.code", index=True)
    is_demo: bool = False
    # targets per year: {"2026": {"gia_dinh": 70, "dong_ho": 60, "cong_dong": 60, "don_vi": 70}}
    targets: dict[str, Any] = json_field()
    created_at: datetime = created_field()


class Village(SQLModel, table=True):
    """A village (thôn) or residential group (tổ dân phố) inside a commune."""

    id: int | None = Field(default=None, primary_key=True)
    commune_code: int = Field(foreign_key="commune.code", index=True)
    name: str
    invite_code: str = Field(unique=True, index=True)
    status: str = "active"  # active | pending (proposed in chat, waiting for a leader or officer)
    proposed_by: int | None = None  # person id; no FK: person also points at village
    created_at: datetime = created_field()


# --- people and chat identities -------------------------------------------------------------------


class Person(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    phone: str | None = None  # normalised +84...; personal data, never logged
    commune_code: int | None = Field(default=None, foreign_key="commune.code", index=True)
    village_id: int | None = Field(default=None, foreign_key="village.id", index=True)
    consent_at: datetime | None = ts_field()
    unreachable_at: datetime | None = ts_field()  # blocked the bot, window closed...
    unreachable_reason: str | None = None
    created_at: datetime = created_field()


class ChatIdentity(SQLModel, table=True):
    """One chat account (channel + platform user id) links to one person."""

    __table_args__ = (UniqueConstraint("channel", "user_id"),)
    id: int | None = Field(default=None, primary_key=True)
    channel: str  # telegram | zalo | zalo_oa | web
    user_id: str
    chat_id: str = Field(index=True)  # where to send; equals user_id for private chats
    person_id: int | None = Field(default=None, foreign_key="person.id", index=True)
    display_name: str = ""
    created_at: datetime = created_field()


class RoleGrant(SQLModel, table=True):
    """A role held by a person; leader and officer roles stay pending until an officer grants them."""

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True)
    role: str  # household | clan_head | village_leader | unit_rep | officer | admin
    status: str = "granted"  # granted | pending | revoked
    commune_code: int | None = Field(default=None, foreign_key="commune.code", index=True)
    village_id: int | None = Field(default=None, foreign_key="village.id")
    granted_by: int | None = Field(default=None, foreign_key="person.id")
    created_at: datetime = created_field()
    decided_at: datetime | None = ts_field()


# --- subjects -------------------------------------------------------------------------------------


class Household(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    commune_code: int = Field(foreign_key="commune.code", index=True)
    village_id: int | None = Field(default=None, foreign_key="village.id", index=True)
    head_person_id: int | None = Field(default=None, foreign_key="person.id", index=True)
    head_name: str
    members: int = 1
    phone: str | None = None
    has_phone: bool = True  # False: entered by the village leader on the family's behalf
    created_at: datetime = created_field()


class Clan(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    commune_code: int = Field(foreign_key="commune.code", index=True)
    name: str
    head_person_id: int | None = Field(default=None, foreign_key="person.id", index=True)
    created_at: datetime = created_field()


class ClanMember(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("clan_id", "household_id"),)
    id: int | None = Field(default=None, primary_key=True)
    clan_id: int = Field(foreign_key="clan.id", index=True)
    household_id: int = Field(foreign_key="household.id", index=True)
    created_at: datetime = created_field()


class Unit(SQLModel, table=True):
    """An agency, school or enterprise on the commune's territory."""

    id: int | None = Field(default=None, primary_key=True)
    commune_code: int = Field(foreign_key="commune.code", index=True)
    name: str
    kind: str = "agency"  # agency | school | enterprise
    rep_person_id: int | None = Field(default=None, foreign_key="person.id")
    staff: int = 0
    created_at: datetime = created_field()


# --- the yearly cycle -----------------------------------------------------------------------------


class CampaignYear(SQLModel, table=True):
    """Settings of one campaign year for a commune: deadlines, criteria versions."""

    __table_args__ = (UniqueConstraint("commune_code", "year"),)
    id: int | None = Field(default=None, primary_key=True)
    commune_code: int = Field(foreign_key="commune.code", index=True)
    year: int
    registration_deadline: datetime | None = ts_field()
    assessment_deadline: datetime | None = ts_field()
    criteria_versions: dict[str, Any] = json_field()


class Registration(SQLModel, table=True):
    """Đăng ký phấn đấu: a subject strives for a title in a year."""

    __table_args__ = (
        Index("ix_registration_subject", "subject_type", "subject_id", "title", "year"),
        Index("ix_registration_commune_year", "commune_code", "year"),
    )
    id: int | None = Field(default=None, primary_key=True)
    commune_code: int = Field(foreign_key="commune.code")
    subject_type: str  # household | clan | village | unit | person
    subject_id: int
    title: str  # gia_dinh | dong_ho | cong_dong | don_vi | cong_dan
    year: int
    status: str = "registered"  # registered | cancelled
    registered_by: int | None = Field(default=None, foreign_key="person.id")
    created_at: datetime = created_field()
    cancelled_at: datetime | None = ts_field()


# PostgreSQL pages of the tables whose rows every answer rewrites (an assessment's answers, a conversation's state)
# are filled to 70 % on insert: an UPDATE that changes no indexed column writes its new row version on the same
# page if there is room, with no new index entries (a "HOT" update), and the old versions are pruned as the page
# is next read. Full pages made 50-70 % of those updates write an entry in every index of the table instead
# (bench/inbound.py, docs/performance.md, tenth session). SQLite writes the row in place and ignores this.
_HOT_ROOM = {"fillfactor": 70}


class Assessment(SQLModel, table=True):
    """A self-assessment of one subject for one title and year; answers per criterion id."""

    __table_args__ = (
        UniqueConstraint("subject_type", "subject_id", "title", "year"),
        # the dashboard's scan of a commune's year, the queue's count and its page in submission order (the
        # submitted_at and id of the matching rows come from the index; only the page's rows are read)
        Index("ix_assessment_commune_year_status_sub", "commune_code", "year", "status", "submitted_at", "id"),
        # every answer rewrites the row: room on its page lets PostgreSQL write the new version there without
        # new entries in the four indexes (a HOT update; see _HOT_ROOM)
        {"postgresql_with": _HOT_ROOM},
    )
    id: int | None = Field(default=None, primary_key=True)
    commune_code: int = Field(foreign_key="commune.code")
    village_id: int | None = Field(default=None, foreign_key="village.id", index=True)
    subject_type: str
    subject_id: int
    title: str
    year: int
    criteria_version: str = ""
    answers: dict[str, Any] = json_field()
    # draft | submitted | confirmed (village leader) | questioned | in_review | returned | recognised | rejected
    status: str = "draft"
    answered_by: int | None = Field(default=None, foreign_key="person.id")
    proxy: bool = False  # entered by a village leader on the family's behalf
    proxy_by: int | None = Field(default=None, foreign_key="person.id")
    total: float | None = None
    passed: bool | None = None
    # the review pages' proposal for these answers, "fingerprint|total|max|passed" (webhook/admin.py): written by
    # the dashboard only while the answers are still those it scored, emptied whenever the answers are saved
    proposal: str | None = None
    submitted_at: datetime | None = ts_field()
    confirmed_by: int | None = Field(default=None, foreign_key="person.id")
    confirmed_at: datetime | None = ts_field()
    # the village leader's latest question to the family (status "questioned"); kept after a new submission
    leader_note: str | None = None
    leader_note_by: int | None = Field(default=None, foreign_key="person.id")
    leader_note_at: datetime | None = ts_field()
    created_at: datetime = created_field()
    updated_at: datetime = created_field()


class Evidence(SQLModel, table=True):
    """A photo attached to a criterion of an assessment; the file is stored content-addressed."""

    __table_args__ = (UniqueConstraint("assessment_id", "criterion", "sha256"),)
    id: int | None = Field(default=None, primary_key=True)
    assessment_id: int = Field(foreign_key="assessment.id", index=True)
    criterion: str
    sha256: str = Field(index=True)
    path: str = ""  # relative to MEDIA_DIR
    thumb_path: str = ""
    width: int = 0
    height: int = 0
    size_bytes: int = 0
    taken_at: str | None = None
    gps: str | None = None
    sent_by: int | None = Field(default=None, foreign_key="person.id")
    created_at: datetime = created_field()


class ReviewDecision(SQLModel, table=True):
    """Append-only: a later decision supersedes, never overwrites."""

    id: int | None = Field(default=None, primary_key=True)
    assessment_id: int = Field(foreign_key="assessment.id", index=True)
    decision: str  # recognise | return | reject | review_started
    reason: str = ""
    officer_id: int | None = Field(default=None, foreign_key="officer.id")
    created_at: datetime = created_field()


# --- officers (web sign-in) -----------------------------------------------------------------------


class Officer(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(unique=True, index=True)
    name: str
    phone: str | None = None
    password_hash: str = ""
    person_id: int | None = Field(default=None, foreign_key="person.id")
    is_admin: bool = False
    api_token_hash: str | None = Field(default=None, index=True)
    active: bool = True
    created_at: datetime = created_field()


class OfficerCommune(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("officer_id", "commune_code"),)
    id: int | None = Field(default=None, primary_key=True)
    officer_id: int = Field(foreign_key="officer.id", index=True)
    commune_code: int = Field(foreign_key="commune.code", index=True)


class LoginToken(SQLModel, table=True):
    """A one-time sign-in link; only the hash is stored."""

    id: int | None = Field(default=None, primary_key=True)
    officer_id: int = Field(foreign_key="officer.id", index=True)
    token_hash: str = Field(unique=True)
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    used_at: datetime | None = ts_field()


# --- messaging ------------------------------------------------------------------------------------


_PENDING = text("status = 'pending'")


class InboxUpdate(SQLModel, table=True):
    """A raw inbound update, unique per channel + update id: a redelivery is stored and processed once."""

    __table_args__ = (
        UniqueConstraint("channel", "update_id"),
        # the pending rows in order: a partial index (done rows are most of the table and stay, for the
        # redelivery check), as small as the backlog; queries name the literal 'pending' (bot/inbox.py)
        Index("ix_inbox_pending", "id", sqlite_where=_PENDING, postgresql_where=_PENDING),
        # a chat's pending rows (its head) and whole history (simulator); no index starts with channel, so
        # that neither planner reads a channel's every pending row to sort them when the oldest are wanted
        Index("ix_inbox_chat", "chat_key", "channel", "status", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    channel: str
    update_id: str
    chat_key: str = ""  # per-chat ordering key
    payload: dict[str, Any] = json_field()
    status: str = "pending"  # pending | done | failed | ignored
    attempts: int = 0
    error: str | None = None
    received_at: datetime = created_field()
    processed_at: datetime | None = ts_field()


_QUEUED = text("status = 'queued'")
_SENDING = text("status = 'sending'")
_HAS_CAMPAIGN = text("campaign IS NOT NULL")


class OutboxMessage(SQLModel, table=True):
    """An outgoing message with an idempotency key: sent once, survives restarts."""

    __table_args__ = (
        # the rows waiting to go, in the claim's order: a partial index (sent rows are most of the table and
        # stay), as small as the queue; a claim or a mark writes no entry into it. Queries name the literal
        # 'queued' (bot/outbox.py). It cannot serve a statement about rows sending, or sending and queued: the
        # claim's per-chat heads are left to ix_outbox_chat whatever the statistics say
        Index("ix_outbox_ready", "channel", "priority", "not_before", "id",
              sqlite_where=_QUEUED, postgresql_where=_QUEUED),
        # the rows in flight, for the lease sweep (bot/outbox.py settle_unconfirmed): a handful at any time
        Index("ix_outbox_sending", "channel", "not_before", sqlite_where=_SENDING, postgresql_where=_SENDING),
        # per-chat order and interval: a chat's earlier unsent rows, its queued rows; a chat's history
        Index("ix_outbox_chat", "channel", "chat_id", "status", "id"),
        # the reminder rows by campaign (review's delivery counts): the replies, most rows, have none and are not
        # in it, so their INSERT, claim and mark write no entry here (each writes one in most of the others)
        Index("ix_outboxmessage_campaign", "campaign", sqlite_where=_HAS_CAMPAIGN, postgresql_where=_HAS_CAMPAIGN),
    )
    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(unique=True)
    channel: str
    chat_id: str
    person_id: int | None = Field(default=None, foreign_key="person.id", index=True)
    payload: dict[str, Any] = json_field()  # flows.types.Say.to_json()
    priority: int = 0  # 0 = reply in a conversation, 10 = bulk (reminders)
    status: str = "queued"  # queued | sending | sent | failed | unreachable | unconfirmed
    campaign: str | None = None
    attempts: int = 0
    not_before: datetime = created_field()
    last_error: str | None = None
    created_at: datetime = created_field()
    sent_at: datetime | None = ts_field()
    platform_message_id: str | None = None


class Conversation(SQLModel, table=True):
    """Conversation state per chat identity: {"step": ..., "data": {...}}."""

    __table_args__ = {"postgresql_with": _HOT_ROOM}
    id: int | None = Field(default=None, primary_key=True)
    identity_id: int = Field(foreign_key="chatidentity.id", unique=True)
    state: dict[str, Any] = json_field()
    updated_at: datetime = created_field()


class CampaignRun(SQLModel, table=True):
    """One run of a reminder campaign (who triggered it, how many queued)."""

    id: int | None = Field(default=None, primary_key=True)
    campaign: str = Field(index=True)
    year: int
    commune_code: int | None = None
    scheduled_for: datetime | None = ts_field()
    started_at: datetime = created_field()
    finished_at: datetime | None = ts_field()
    queued: int = 0
    no_identity: int = 0
    dry_run: bool = False


class ChannelCredential(SQLModel, table=True):
    """Rotating credentials (Zalo OA access/refresh tokens) kept in the database."""

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(unique=True)
    data: dict[str, Any] = json_field()
    updated_at: datetime = created_field()


class AuditLog(SQLModel, table=True):
    # (action, target) answers "was this update already processed?" once per inbound event
    __table_args__ = (Index("ix_auditlog_action_target", "action", "target"),)
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = created_field()
    actor: str  # "person:12", "officer:3", "system"
    action: str
    target: str = ""
    detail: dict[str, Any] = json_field()
