"""Things to print: a village's invitation QR code (A4) and recognition certificates (giấy công nhận) as PDF, with
DejaVu Sans embedded from webhook/fonts so Vietnamese prints correctly on a machine with no fonts installed."""

from __future__ import annotations

import io
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import segno
from fpdf import FPDF
from sqlalchemy import func
from sqlmodel import Session, col, select

from models.settings import Settings
from models.tables import Assessment, ChannelCredential, Commune, Province, ReviewDecision, Village
from webhook import admin

VN = ZoneInfo("Asia/Ho_Chi_Minh")


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


# ------------------------------------------------------------------------------------------------ certificates

FONTS_DIR = Path(__file__).parent / "fonts"
FONT = "DejaVuSans"  # shipped in webhook/fonts (full Vietnamese coverage; licence in LICENSE-DejaVu.txt)
ISSUERS = {
    # key: (header line 1, signature "on behalf of", signer)
    "ubnd": ("ỦY BAN NHÂN DÂN", "TM. ỦY BAN NHÂN DÂN", "CHỦ TỊCH"),
    "hkh": ("HỘI KHUYẾN HỌC", "TM. BAN CHẤP HÀNH", "CHỦ TỊCH"),
}
SUBJECT_LABELS = {"household": "Gia đình ông/bà", "clan": "", "village": "", "unit": "", "person": "Ông/Bà"}
_KINDS = ("Thành phố", "Tỉnh", "Phường", "Xã", "Đặc khu", "Thị trấn")

RED = (176, 24, 32)
INK = (20, 28, 60)


@dataclass(frozen=True)
class Certificate:
    """What one giấy công nhận says; every string already in NFC."""

    subject_type: str
    name: str
    title: str  # "Gia đình học tập"
    year: int
    village: str
    commune: str  # "Xã Gia Lộc"
    province: str  # "Thành phố Hải Phòng"
    issued_on: date | None  # the day of the recognition decision (local)
    issuer: str = "ubnd"

    @property
    def subject_label(self) -> str:
        return SUBJECT_LABELS.get(self.subject_type, "")

    @property
    def address(self) -> str:
        parts = [self.village] if self.village and self.village != self.name else []
        parts += [_lower_kind(self.commune), _lower_kind(self.province, default="tỉnh")]
        return ", ".join(p for p in parts if p)

    @property
    def place_and_date(self) -> str:
        return f"{place_name(self.commune)}, {vn_long_date(self.issued_on)}"


def nfc(text: str) -> str:
    """Names typed in chat may arrive decomposed (e + U+0301 …); the font's precomposed glyphs need NFC."""
    return unicodedata.normalize("NFC", text or "").strip()


def place_name(commune: str) -> str:
    """ "Xã Gia Lộc" → "Gia Lộc" (the place line of an administrative document)."""
    for kind in _KINDS:
        if commune.startswith(kind + " "):
            return commune[len(kind) + 1:]
    return commune


def _lower_kind(name: str, default: str = "") -> str:
    """ "Xã Gia Lộc" → "xã Gia Lộc"; "Ninh Bình" → "tỉnh Ninh Bình" (default kind) inside an address."""
    if not name:
        return ""
    for kind in _KINDS:
        if name.startswith(kind + " "):
            return kind.lower() + name[len(kind):]
    return f"{default} {name}" if default else name


def vn_long_date(day: date | None) -> str:
    """ "ngày 05 tháng 01 năm 2028", "ngày 15 tháng 12 năm 2027" (Nghị định 30/2020: a 0 before days 1–9 and
    months 1–2); blanks to fill by hand when there is no date."""
    if day is None:
        return "ngày …… tháng …… năm ……"
    month = f"{day.month:02d}" if day.month <= 2 else str(day.month)
    return f"ngày {day.day:02d} tháng {month} năm {day.year}"


class _CertificatePDF(FPDF):
    def __init__(self) -> None:
        super().__init__(orientation="L", unit="mm", format="A4")
        for style, file in (("", "DejaVuSans.ttf"), ("B", "DejaVuSans-Bold.ttf"), ("I", "DejaVuSans-Oblique.ttf")):
            self.add_font(FONT, style, str(FONTS_DIR / file))
        self.set_auto_page_break(False)
        self.set_margins(0, 0, 0)
        self.set_lang("vi")
        self.set_creator("hoctap")
        self.set_title("Giấy công nhận")

    def centred(self, text: str, y: float, size: float, style: str = "", *, x: float = 20, width: float | None = None,
                color: tuple[int, int, int] = INK, min_size: float = 8) -> float:
        """One centred line inside [x, x + width] (default: inside the frame); shrinks the font to fit.
        Returns the text width."""
        text = nfc(text)
        width = self.w - 2 * x if width is None else width
        self.set_font(FONT, style, size)
        while self.get_string_width(text) > width - 4 and size > min_size:
            size -= 0.5
            self.set_font(FONT, style, size)
        self.set_text_color(*color)
        self.set_xy(x, y)
        self.cell(width, size * 0.45, text, align="C")
        return self.get_string_width(text)

    def lines_for(self, text: str, size: float, style: str, width: float, min_size: float) -> list[str]:
        """The text on one line if it fits at ``min_size`` or more, else split in two at the space nearest the
        middle (a long clan or unit name)."""
        text = nfc(text)
        self.set_font(FONT, style, min_size)
        words = text.split()
        if self.get_string_width(text) <= width - 4 or len(words) < 2:
            return [text]
        best = min(range(1, len(words)), key=lambda i: abs(len(" ".join(words[:i])) - len(" ".join(words[i:]))))
        return [" ".join(words[:best]), " ".join(words[best:])]

    def rule(self, centre: float, y: float, length: float) -> None:
        self.set_line_width(0.3)
        self.set_draw_color(*INK)
        self.line(centre - length / 2, y, centre + length / 2, y)

    def frame(self) -> None:
        self.set_draw_color(*RED)
        self.set_line_width(1.4)
        self.rect(8, 8, self.w - 16, self.h - 16)
        self.set_line_width(0.35)
        self.rect(11, 11, self.w - 22, self.h - 22)

    def certificate(self, c: Certificate) -> None:
        self.add_page()
        self.frame()
        org, on_behalf, signer = ISSUERS.get(c.issuer, ISSUERS["ubnd"])
        left_x, left_w = 14.0, 110.0
        right_x, right_w = 120.0, 163.0
        # header: issuer on the left, the national motto on the right (Nghị định 30/2020 layout)
        self.centred(org, 20, 12, x=left_x, width=left_w)
        w = self.centred(c.commune.upper(), 26.5, 12, "B", x=left_x, width=left_w)
        self.rule(left_x + left_w / 2, 31.5, min(w, 40))
        self.centred("CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM", 20, 12, "B", x=right_x, width=right_w)
        w = self.centred("Độc lập - Tự do - Hạnh phúc", 26.5, 12.5, "B", x=right_x, width=right_w)
        self.rule(right_x + right_w / 2, 31.5, w)

        self.centred("GIẤY CÔNG NHẬN", 50, 32, "B", color=RED)
        self.centred("Danh hiệu", 69, 14)
        self.centred(f"“{c.title.upper()}” NĂM {c.year}", 78, 20, "B", color=RED)
        y = 96.0
        if c.subject_label:
            self.centred(f"{c.subject_label}:", y, 14, "I")
            y += 9
        name_lines = self.lines_for(c.name, 26, "B", self.w - 40, 20)
        for line in name_lines:
            self.centred(line, y, 26 if len(name_lines) == 1 else 20, "B", min_size=12)
            y += 15 if len(name_lines) == 1 else 10
        y += 0 if len(name_lines) == 1 else 3
        self.centred(c.address, y, 14)

        # bottom: place and date, then the signature block, on the right
        sign_x, sign_w = 160.0, 125.0
        self.centred(c.place_and_date, 145, 13, "I", x=sign_x, width=sign_w)
        self.centred(on_behalf, 153, 12.5, "B", x=sign_x, width=sign_w)
        self.centred(signer, 159.5, 12.5, "B", x=sign_x, width=sign_w)
        self.centred("(Ký, ghi rõ họ tên, đóng dấu)", 166, 10.5, "I", x=sign_x, width=sign_w)
        self.set_font(FONT, "", 11)
        self.set_text_color(*INK)
        self.set_xy(24, 176)
        self.cell(100, 6, "Số vào sổ: ………………")


def certificates_pdf(certs: Sequence[Certificate]) -> bytes:
    """An A4 landscape PDF, one giấy công nhận per page, with DejaVu Sans embedded (subset)."""
    pdf = _CertificatePDF()
    for c in certs:
        pdf.certificate(c)
    if not certs:
        pdf.add_page()
        pdf.centred("Chưa có hồ sơ nào được công nhận.", 90, 16)
    return bytes(pdf.output())


def certificate_data(session: Session, rows: Sequence[Assessment], *, issuer: str = "ubnd") -> list[Certificate]:
    """Certificates for recognised assessments, in the given order; the date is the latest recognition decision."""
    if not rows:
        return []
    infos = admin.subject_infos(session, {(a.subject_type, a.subject_id) for a in rows})
    codes = sorted({a.commune_code for a in rows})
    vnames = admin.village_names(session, codes)
    communes = {c.code: c for c in session.exec(select(Commune).where(col(Commune.code).in_(codes)))}
    provinces = {p.code: p.name for p in session.exec(
        select(Province).where(col(Province.code).in_([c.province_code for c in communes.values()])))}
    decided: dict[int, datetime] = {}
    for aid, at in session.exec(
            select(ReviewDecision.assessment_id, func.max(ReviewDecision.created_at))
            .where(col(ReviewDecision.assessment_id).in_([a.id for a in rows]), ReviewDecision.decision == "recognise")
            .group_by(col(ReviewDecision.assessment_id))):
        decided[aid] = at
    out = []
    for a in rows:
        info = infos.get((a.subject_type, a.subject_id))
        commune = communes[a.commune_code]
        at = decided.get(a.id or 0)
        issued = admin.aware(at).astimezone(VN).date() if at is not None else None
        out.append(Certificate(
            subject_type=a.subject_type, name=nfc(info.name if info else ""), title=nfc(admin.title_name(a.title)),
            year=a.year, village=nfc(vnames.get(a.village_id or (info.village_id if info else 0) or 0, "")),
            commune=nfc(commune.name), province=nfc(provinces.get(commune.province_code, "")), issued_on=issued,
            issuer=issuer if issuer in ISSUERS else "ubnd"))
    return out
