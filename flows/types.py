"""The data that crosses the boundary between channels and flows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal["text", "button", "photo", "contact", "command", "unsupported"]


@dataclass(frozen=True)
class PhotoRef:
    """A photo already fetched, validated and stored by the channel (content-addressed)."""

    sha256: str
    width: int = 0
    height: int = 0
    taken_at: str | None = None  # ISO time from EXIF, when present


@dataclass(frozen=True)
class Event:
    """What a person did, whatever the channel.

    - text: free text in ``text``
    - button: a button press; ``value`` is the button's value, ``text`` its label when known
    - photo: ``photo`` is set (a photo the channel refused never reaches the flows)
    - contact: ``text`` is the shared phone number
    - command: ``text`` is the command without slash and lower case ("start", "huy"), ``value`` its payload
    - unsupported: a sticker, voice, video, file...; ``value`` names the kind
    """

    kind: EventKind
    text: str = ""
    value: str = ""
    photo: PhotoRef | None = None


@dataclass(frozen=True)
class Button:
    """An abstract button: channels render it (inline keyboard, numbered list, HTML button)."""

    label: str
    value: str


@dataclass(frozen=True)
class Say:
    """A message for the person. ``request_contact`` asks the channel for a share-phone keyboard."""

    text: str
    buttons: tuple[Button, ...] = ()
    request_contact: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "buttons": [{"label": b.label, "value": b.value} for b in self.buttons],
            "request_contact": self.request_contact,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Say:
        return cls(
            text=str(data.get("text", "")),
            buttons=tuple(Button(str(b["label"]), str(b["value"])) for b in data.get("buttons", ())),
            request_contact=bool(data.get("request_contact", False)),
        )


@dataclass
class ConversationState:
    """Plain data, stored as JSON with a readable step name ("idle", "assess", ...)."""

    step: str = "idle"
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "data": self.data}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ConversationState:
        if not data:
            return cls()
        return cls(step=str(data.get("step", "idle")), data=dict(data.get("data") or {}))
