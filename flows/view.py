"""The read-only questions a conversation may ask about the world. The host implements this Protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol

from flows.criteria import CriteriaSet
from flows.effects import Subject

# assessment statuses in which the family may still change answers (the commune has not started review)
EDITABLE = ("draft", "submitted", "confirmed", "questioned", "returned")


@dataclass(frozen=True)
class Role:
    role: str  # household | clan_head | village_leader | unit_rep | officer
    status: str  # granted | pending
    commune_code: int | None = None
    village_id: int | None = None


@dataclass(frozen=True)
class PersonInfo:
    id: int
    name: str
    phone: str | None
    commune_code: int | None
    village_id: int | None
    roles: tuple[Role, ...] = ()
    household_id: int | None = None
    clan_id: int | None = None  # the clan this person heads
    unit_id: int | None = None  # the agency, school or enterprise this person represents

    def has(self, role: str) -> bool:
        return any(r.role == role and r.status == "granted" for r in self.roles)

    def pending(self, role: str) -> bool:
        return any(r.role == role and r.status == "pending" for r in self.roles)


@dataclass(frozen=True)
class VillageInfo:
    id: int
    name: str
    commune_code: int
    invite_code: str
    status: str = "active"


@dataclass(frozen=True)
class AssessmentInfo:
    status: str = "draft"  # draft | submitted | confirmed | questioned | in_review | returned | recognised | rejected
    answers: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, int] = field(default_factory=dict)  # criterion id → number of photos
    note: str = ""  # the latest reason given by the commune when it returned the file
    total: float | None = None
    proxy: bool = False
    leader_note: str = ""  # what the village leader asked when questioning the submission


@dataclass(frozen=True)
class UnitInfo:
    id: int
    name: str
    kind: str  # agency | school | enterprise
    staff: int
    commune_code: int
    rep_person_id: int | None = None


@dataclass(frozen=True)
class HouseholdInfo:
    id: int
    head_name: str
    village_id: int | None
    commune_code: int
    head_person_id: int | None = None
    has_phone: bool = True
    village_name: str = ""
    status: str = "none"  # the gia_dinh assessment status this year; "none" when not started
    total: float | None = None


@dataclass(frozen=True)
class ClanInfo:
    id: int
    name: str
    commune_code: int
    members: tuple[HouseholdInfo, ...] = ()


@dataclass(frozen=True)
class TitleFigures:
    title: str
    subjects: int  # households / clans / villages in the commune
    registered: int
    submitted: int
    recognised: int
    target: float | None  # percent


class View(Protocol):
    """Everything a conversation may read. Implementations must not change anything."""

    def me(self) -> PersonInfo | None:
        """The person behind this chat, or None before registration (or without consent)."""
        ...

    def campaign_year(self, now: datetime) -> int:
        """The campaign year for ``now``: the calendar year in Asia/Ho_Chi_Minh."""
        ...

    def criteria(self, title: str) -> CriteriaSet:
        """The criteria set in force for a title (with local supplements)."""
        ...

    def served(self) -> tuple[int, ...]:
        """Province or commune codes this deployment serves (searched first)."""
        ...

    def villages(self, commune_code: int) -> list[VillageInfo]:
        """Villages of a commune (active and pending)."""
        ...

    def village(self, village_id: int) -> VillageInfo | None: ...

    def village_by_code(self, invite_code: str) -> VillageInfo | None: ...

    def registrations(self, subject: Subject, year: int) -> list[str]:
        """Titles the subject is registered for (not cancelled) in that year."""
        ...

    def registration_deadline(self, commune_code: int, year: int) -> date:
        """The last day a registration may be cancelled."""
        ...

    def assessment(self, subject: Subject, title: str, year: int) -> AssessmentInfo:
        """The current answers and status (an empty draft when none)."""
        ...

    def computed(self, subject: Subject, title: str, year: int) -> dict[str, Any]:
        """Values of computed criteria, keyed by the criterion's ``computed`` name (absent: unknown)."""
        ...

    def household(self, household_id: int, year: int) -> HouseholdInfo | None: ...

    def village_households(self, village_id: int, year: int) -> list[HouseholdInfo]: ...

    def search_households(self, commune_code: int, query: str, year: int) -> list[HouseholdInfo]: ...

    def clan(self, clan_id: int, year: int) -> ClanInfo | None: ...

    def unit(self, unit_id: int) -> UnitInfo | None:
        """An agency, school or enterprise (don_vi subject)."""
        ...

    def commune_figures(self, commune_code: int, year: int) -> list[TitleFigures]: ...

    def public_base_url(self) -> str: ...

    def invite_link(self, invite_code: str) -> str:
        """A link that opens the bot with the village code (or "" when the channel has none)."""
        ...
