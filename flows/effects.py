"""What a conversation asks the host to do. Plain frozen dataclasses: the unit of work turns them into rows.

Effects are applied in order, in one transaction, after the flow returns. Where an effect refers to a row
created by an earlier effect of the same step (a person just registered, a village just proposed), it
leaves the id as None and the host uses the row it has just created.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flows.types import Say

SUBJECT_KINDS = ("household", "clan", "village", "unit", "person")


@dataclass(frozen=True)
class Subject:
    """Who an assessment or registration is about: ("household", 12), ("person", 3)..."""

    kind: str
    id: int

    def key(self) -> str:
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, key: str) -> Subject:
        kind, _, ident = key.partition(":")
        return cls(kind, int(ident))


@dataclass(frozen=True)
class ProposeVillage:
    """A village missing from the list, proposed in chat; pending until a leader or officer confirms it."""

    commune_code: int
    name: str


@dataclass(frozen=True)
class RegisterPerson:
    """Create the person (with consent) and link this chat to them; ``village_id`` None = the one just proposed."""

    name: str
    role: str  # household | clan_head | village_leader | unit_rep | officer
    commune_code: int
    village_id: int | None
    phone: str | None
    consent_at: datetime


@dataclass(frozen=True)
class CreateHousehold:
    """The household of the person just registered (or, as proxy, a family without a phone)."""

    head_name: str
    members: int
    phone: str | None
    commune_code: int
    village_id: int | None
    has_phone: bool = True
    head_is_me: bool = True


@dataclass(frozen=True)
class CreateUnit:
    """An agency, school or enterprise on the commune's territory, represented by the person just registered."""

    name: str
    kind: str  # agency | school | enterprise
    staff: int
    commune_code: int


@dataclass(frozen=True)
class RequestRole:
    """A role that stays pending until an officer grants it (village leader, commune officer)."""

    role: str
    commune_code: int
    village_id: int | None = None


@dataclass(frozen=True)
class GrantRole:
    """A role granted at once (household head, clan head, unit representative)."""

    role: str
    commune_code: int
    village_id: int | None = None


@dataclass(frozen=True)
class RegisterTitle:
    subject: Subject
    title: str
    year: int


@dataclass(frozen=True)
class CancelRegistration:
    subject: Subject
    title: str
    year: int


@dataclass(frozen=True)
class SaveAnswer:
    """One answer; ``proxy_by`` is the village leader's person id when entered on the family's behalf."""

    subject: Subject
    title: str
    year: int
    criterion: str
    value: Any
    proxy_by: int | None = None


@dataclass(frozen=True)
class AttachEvidence:
    subject: Subject
    title: str
    year: int
    criterion: str
    sha256: str
    width: int = 0
    height: int = 0
    taken_at: str | None = None


@dataclass(frozen=True)
class SubmitAssessment:
    subject: Subject
    title: str
    year: int
    total: float
    max: int
    passed: bool
    proxy_by: int | None = None


@dataclass(frozen=True)
class ConfirmSubmission:
    """The village leader confirms a household's submitted answers."""

    household_id: int
    title: str
    year: int


@dataclass(frozen=True)
class QuestionSubmission:
    """The village leader questions a household's answers; the family is told by a NotifyPerson."""

    household_id: int
    title: str
    year: int
    note: str


@dataclass(frozen=True)
class NotifyPerson:
    """A message for another person (sent to their chat identities)."""

    person_id: int
    say: Say
    reason: str = ""


@dataclass(frozen=True)
class CreateClan:
    name: str
    commune_code: int


@dataclass(frozen=True)
class AddClanMember:
    clan_id: int
    household_id: int


@dataclass(frozen=True)
class SendLoginLink:
    """An officer asked for the review pages: the host sends a one-time sign-in link when the person has a
    web account (a link is a credential, so it is made outside the pure flows)."""


Effect = (
    ProposeVillage | RegisterPerson | CreateHousehold | CreateUnit | RequestRole | GrantRole | RegisterTitle
    | CancelRegistration | SaveAnswer | AttachEvidence | SubmitAssessment | ConfirmSubmission
    | QuestionSubmission | NotifyPerson | CreateClan | AddClanMember | SendLoginLink
)
