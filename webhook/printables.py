"""Things to print: a village's invitation QR code (A4) and recognition certificates (HTML with print CSS)."""

from __future__ import annotations

import io

import segno
from sqlmodel import Session, select

from models.settings import Settings
from models.tables import ChannelCredential, Village


def telegram_bot_username(session: Session) -> str:
    """The bot's @username when the Telegram adapter stored it (ChannelCredential "telegram": {"username": ...})."""
    row = session.exec(select(ChannelCredential).where(ChannelCredential.channel == "telegram")).first()
    name = (row.data or {}).get("username") or (row.data or {}).get("bot_username") if row else None
    return str(name).lstrip("@") if name else ""


def invite_link(session: Session, settings: Settings, village: Village) -> str:
    """https://t.me/<bot>?start=v_<code> when the bot is known, else the simulator on this site."""
    bot = telegram_bot_username(session) if settings.telegram_enabled else ""
    if bot:
        return f"https://t.me/{bot}?start=v_{village.invite_code}"
    base = settings.public_base_url or ""
    return f"{base}/simulator?start=v_{village.invite_code}"


def qr_svg(data: str, *, scale: int = 8) -> str:
    """An inline SVG QR code (no XML declaration), medium error correction so a creased print still reads."""
    qr = segno.make(data, error="m")
    out = io.BytesIO()
    qr.save(out, kind="svg", scale=scale, border=2, xmldecl=False, svgns=True, title="Mã QR", nl=False,
            omitsize=True)
    return out.getvalue().decode("utf-8")
