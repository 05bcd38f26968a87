"""Officer sign-in: passwords, one-time links, signed session cookies, CSRF, rate limit, commune scoping."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import HTTPException, Request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import func
from sqlmodel import Session, select

from bot.login_links import sha256_hex
from models.settings import Settings
from models.tables import AuditLog, LoginToken, Officer, OfficerCommune

SESSION_COOKIE = "hoctap_session"
CSRF_COOKIE = "hoctap_csrf"
SESSION_MAX_AGE = 12 * 3600  # a working day; the officer signs in again the next morning
FAIL_LIMIT = 5
FAIL_WINDOW = timedelta(minutes=15)

_hasher = PasswordHasher()
# A fixed hash to verify against when the username is unknown, so timing does not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def utcnow() -> datetime:
    return datetime.now(UTC)


def request_now(request: Request) -> datetime:
    """The current time; tests may pin it with app.state.clock (a callable)."""
    clock = getattr(request.app.state, "clock", None)
    return clock() if clock else utcnow()


# ------------------------------------------------------------------------------------------------ secrets


def secret_key(settings: Settings) -> str:
    """settings.secret_key, or a random key kept in DATA_DIR/secret_key (created once, mode 0600)."""
    configured = settings.secret_key.get_secret_value()
    if configured:
        return configured
    path = Path(settings.data_dir) / "secret_key"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    path.write_text(key, encoding="utf-8")
    path.chmod(0o600)
    return key


def _app_secret(request: Request) -> str:
    cached = getattr(request.app.state, "secret_key", None)
    if cached is None:
        cached = secret_key(request.app.state.settings)
        request.app.state.secret_key = cached
    return str(cached)


# ------------------------------------------------------------------------------------------------ passwords


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """True when ``password`` matches; an empty stored hash (link-only account) never matches."""
    try:
        return bool(stored) and _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def authenticate(session: Session, username: str, password: str) -> Officer | None:
    officer = session.exec(select(Officer).where(Officer.username == username.strip().lower())).first()
    if officer is None or not officer.active:
        verify_password(_DUMMY_HASH, password)
        return None
    return officer if verify_password(officer.password_hash, password) else None


# ------------------------------------------------------------------------------------------------ rate limit


def _limit_key(username: str, ip: str) -> str:
    return f"{username.strip().lower()}|{ip}"


def too_many_failures(session: Session, username: str, ip: str, now: datetime) -> bool:
    """Five failed sign-ins for this username from this address in 15 minutes lock it for the rest of the window."""
    count = session.exec(
        select(func.count()).select_from(AuditLog).where(
            AuditLog.action == "login_failed",
            AuditLog.target == _limit_key(username, ip),
            AuditLog.at >= now - FAIL_WINDOW,
        )
    ).one()
    return int(count) >= FAIL_LIMIT


def record_failure(session: Session, username: str, ip: str, now: datetime) -> None:
    session.add(AuditLog(at=now, actor="anonymous", action="login_failed", target=_limit_key(username, ip)))


# ------------------------------------------------------------------------------------------------ one-time links


def consume_login_token(session: Session, token: str, now: datetime) -> Officer | None:
    """The officer of a valid, unused, unexpired link, marking it used; None otherwise. The caller commits."""
    row = session.exec(select(LoginToken).where(LoginToken.token_hash == sha256_hex(token))).first()
    if row is None or row.used_at is not None:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    if expires <= now:
        return None
    row.used_at = now
    session.add(row)
    officer = session.get(Officer, row.officer_id)
    return officer if officer is not None and officer.active else None


# ------------------------------------------------------------------------------------------------ API tokens


def new_api_token(session: Session, officer: Officer) -> str:
    """Create (or replace) the officer's API token; returns it once, stores its hash."""
    token = "hct_" + secrets.token_urlsafe(32)
    officer.api_token_hash = sha256_hex(token)
    session.add(officer)
    return token


def officer_from_bearer(session: Session, authorization: str | None) -> Officer | None:
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    token = authorization[7:].strip()
    if not token:
        return None
    officer = session.exec(select(Officer).where(Officer.api_token_hash == sha256_hex(token))).first()
    return officer if officer is not None and officer.active else None


# ------------------------------------------------------------------------------------------------ sessions


def _serializer(request: Request, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_app_secret(request), salt=salt)


def _secure(request: Request) -> bool:
    # Secure whenever the site is served over HTTPS; a plain-http local run (tests, a trainer's laptop) must still work.
    settings = request.app.state.settings
    return request.url.scheme == "https" or str(settings.public_base_url).startswith("https://")


def start_session(request: Request, response: Any, officer: Officer) -> None:
    token = _serializer(request, "session").dumps({"oid": officer.id, "sid": secrets.token_urlsafe(16)})
    response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_MAX_AGE, httponly=True, samesite="lax",
                        secure=_secure(request), path="/")


def end_session(response: Any) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


def session_officer_id(request: Request) -> int | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        data = _serializer(request, "session").loads(raw, max_age=SESSION_MAX_AGE)
    except BadSignature:
        return None
    oid = data.get("oid") if isinstance(data, dict) else None
    return oid if isinstance(oid, int) else None


# ------------------------------------------------------------------------------------------------ CSRF


def csrf_seed(request: Request) -> str:
    """The random value in the CSRF cookie, made on first use for this request (set by ensure_csrf_cookie)."""
    seed = getattr(request.state, "csrf_seed", None) or request.cookies.get(CSRF_COOKIE)
    if not seed:
        seed = secrets.token_urlsafe(24)
    request.state.csrf_seed = seed
    return seed


def csrf_token(request: Request) -> str:
    """The token a form must send back: an HMAC of the cookie's value (double submit, bound to our key)."""
    return hmac.new(_app_secret(request).encode(), csrf_seed(request).encode(), hashlib.sha256).hexdigest()


def ensure_csrf_cookie(request: Request, response: Any) -> None:
    seed = getattr(request.state, "csrf_seed", None)
    if seed and request.cookies.get(CSRF_COOKIE) != seed:
        response.set_cookie(CSRF_COOKIE, seed, httponly=True, samesite="lax", secure=_secure(request), path="/")


def check_csrf(request: Request, submitted: str | None) -> None:
    """403 unless the form carried the token matching the CSRF cookie."""
    seed = request.cookies.get(CSRF_COOKIE)
    if not seed or not submitted:
        raise HTTPException(status_code=403, detail="Thiếu mã bảo vệ biểu mẫu (CSRF). Anh/Chị tải lại trang rồi thử lại.")
    expected = hmac.new(_app_secret(request).encode(), seed.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, submitted):
        raise HTTPException(status_code=403, detail="Mã bảo vệ biểu mẫu (CSRF) không đúng. Anh/Chị tải lại trang rồi thử lại.")


# ------------------------------------------------------------------------------------------------ scoping


@dataclass(frozen=True)
class OfficerContext:
    officer: Officer
    communes: tuple[int, ...]

    def allows(self, commune_code: int | None) -> bool:
        return commune_code is not None and commune_code in self.communes


def officer_communes(session: Session, officer_id: int) -> tuple[int, ...]:
    rows = session.exec(
        select(OfficerCommune.commune_code).where(OfficerCommune.officer_id == officer_id).order_by(
            OfficerCommune.commune_code
        )
    ).all()
    return tuple(int(r) for r in rows)


def context_for(session: Session, officer: Officer) -> OfficerContext:
    assert officer.id is not None
    return OfficerContext(officer=officer, communes=officer_communes(session, officer.id))


def not_found() -> HTTPException:
    """What any resource outside the officer's communes answers: the same as one that does not exist."""
    return HTTPException(status_code=404, detail="Không tìm thấy.")
