"""One-time sign-in links for commune officers: created by the web (webhook.auth) and by the bot (/thongke)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from models.tables import LoginToken

LINK_TTL = timedelta(minutes=15)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def create_login_link(session: Session, officer_id: int, base_url: str, now: datetime | None = None) -> str:
    """A one-time sign-in link valid for 15 minutes; only its hash is stored. The caller commits."""
    now = now or datetime.now(UTC)
    token = secrets.token_urlsafe(32)
    session.add(LoginToken(officer_id=officer_id, token_hash=sha256_hex(token), expires_at=now + LINK_TTL))
    session.flush()
    return f"{base_url.rstrip('/')}/review/login/{token}"
