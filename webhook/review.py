"""Commune review pages under /review: sign-in, dashboard, queue, submissions and decisions, villages, exports,
printables, campaigns. Server-rendered Jinja2; every resource is looked up within the officer's communes (404 else).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import case, func
from sqlmodel import Session, col, select

from bot.campaigns import Campaign, CampaignConfig, CampaignError, next_fire
from bot.scheduler import settings_config
from flows.criteria import format_number
from models.tables import (
    Assessment,
    CampaignRun,
    Commune,
    Evidence,
    Officer,
    OutboxMessage,
    Person,
    RoleGrant,
    Village,
)
from webhook import admin, auth
from webhook.admin import ReviewError
from webhook.exports import export_filename, export_workbook
from webhook.printables import ISSUERS, certificate_data, certificates_pdf, invite_link, qr_svg

TEMPLATES_DIR = Path(__file__).parent / "templates"
VN = ZoneInfo("Asia/Ho_Chi_Minh")
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))

router = APIRouter(prefix="/review", include_in_schema=False)


# ------------------------------------------------------------------------------------------------ formatting


def vn_datetime(value: datetime | None, with_time: bool = True) -> str:
    value = admin.aware(value)
    if value is None:
        return ""
    local = value.astimezone(VN)
    return local.strftime("%d/%m/%Y %H:%M" if with_time else "%d/%m/%Y")


def vn_number(value: Any) -> str:
    if value is None:
        return "—"
    return format_number(float(value))


def vn_percent(value: Any) -> str:
    return "—" if value is None else f"{format_number(round(float(value), 1))}%"


def exif_time(value: str | None) -> str:
    """EXIF/ISO "2027-10-02T08:15:00" → "02/10/2027 08:15" (the camera's own clock, no time zone)."""
    if not value:
        return ""
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "T", 1) if "T" not in value else value)
    except ValueError:
        return value
    return parsed.strftime("%d/%m/%Y %H:%M")


templates.env.filters["vndt"] = vn_datetime
templates.env.filters["exiftime"] = exif_time
templates.env.filters["vnnum"] = vn_number
templates.env.filters["vnpct"] = vn_percent
templates.env.globals["TITLE_NAMES"] = admin.TITLE_NAMES
templates.env.globals["STATUS_NAMES"] = admin.STATUS_NAMES


# ------------------------------------------------------------------------------------------------ dependencies


def get_db(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session


DB = Annotated[Session, Depends(get_db)]


class _Redirect(HTTPException):
    def __init__(self, location: str) -> None:
        super().__init__(status_code=303, detail="Cần đăng nhập.", headers={"Location": location})


def current_officer(request: Request, session: DB) -> auth.OfficerContext:
    """The signed-in officer with their communes; a visitor is sent to the sign-in page."""
    oid = auth.session_officer_id(request)
    officer = session.get(Officer, oid) if oid else None
    if officer is None or not officer.active:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise _Redirect(f"/review/login?next={quote(target)}")
    return auth.context_for(session, officer)


Ctx = Annotated[auth.OfficerContext, Depends(current_officer)]


def csrf_form(request: Request, csrf: Annotated[str | None, Form()] = None) -> None:
    auth.check_csrf(request, csrf)


CSRF = Depends(csrf_form)


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    context.setdefault("csrf", auth.csrf_token(request))
    context.setdefault("ctx", None)
    context.setdefault("commune", None)
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    auth.ensure_csrf_cookie(request, response)
    return response


def pick_commune(session: Session, ctx: auth.OfficerContext, code: int | None) -> Commune:
    """The commune asked for (must be the officer's), else their first one."""
    if code is None:
        if not ctx.communes:
            raise auth.not_found()
        code = ctx.communes[0]
    if not ctx.allows(code):
        raise auth.not_found()
    commune = session.get(Commune, code)
    if commune is None:
        raise auth.not_found()
    return commune


def scoped_assessment(session: Session, ctx: auth.OfficerContext, assessment_id: int) -> Assessment:
    row = session.get(Assessment, assessment_id)
    if row is None or not ctx.allows(row.commune_code):
        raise auth.not_found()
    return row


def scoped_village(session: Session, ctx: auth.OfficerContext, village_id: int) -> Village:
    row = session.get(Village, village_id)
    if row is None or not ctx.allows(row.commune_code):
        raise auth.not_found()
    return row


def scoped_evidence(session: Session, ctx: auth.OfficerContext, evidence_id: int) -> Evidence:
    row = session.get(Evidence, evidence_id)
    if row is None:
        raise auth.not_found()
    scoped_assessment(session, ctx, row.assessment_id)
    return row


def _year(session: Session, ctx: auth.OfficerContext, year: int | None, request: Request) -> int:
    return year or admin.default_year(session, ctx.communes, auth.request_now(request))


def _base(request: Request, session: Session, ctx: auth.OfficerContext, commune: Commune, year: int,
          active: str) -> dict[str, Any]:
    communes = list(session.exec(select(Commune).where(col(Commune.code).in_(list(ctx.communes)))))
    return {"ctx": ctx, "officer": ctx.officer, "commune": commune, "communes": communes, "year": year,
            "active": active}


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/review") and not target.startswith("//"):
        return target
    return "/review/"


# ------------------------------------------------------------------------------------------------ sign-in


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/review/") -> HTMLResponse:  # noqa: A002 - the query name
    return render(request, "review/login.html", {"next": _safe_next(next), "error": ""})


@router.post("/login", response_class=HTMLResponse, dependencies=[CSRF])
def login_submit(
    request: Request, session: DB, username: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/review/",  # noqa: A002
) -> Response:
    now = auth.request_now(request)
    ip = request.client.host if request.client else "?"
    username = username.replace("\x00", "")  # PostgreSQL refuses a NUL in text (no user name has one)
    if auth.too_many_failures(session, username, ip, now):
        return render(request, "review/login.html", {
            "next": _safe_next(next), "username": username,
            "error": "Đăng nhập sai quá 5 lần. Anh/Chị đợi 15 phút rồi thử lại, hoặc nhờ quản trị viên gửi đường dẫn đăng nhập một lần."},
            status_code=429)
    officer = auth.authenticate(session, username, password)
    if officer is None:
        auth.record_failure(session, username, ip, now)
        session.commit()
        return render(request, "review/login.html", {
            "next": _safe_next(next), "username": username,
            "error": "Tên đăng nhập hoặc mật khẩu chưa đúng."}, status_code=401)
    session.add(admin.AuditLog(at=now, actor=f"officer:{officer.id}", action="login", target="password"))
    session.commit()
    response = RedirectResponse(_safe_next(next), status_code=303)
    auth.start_session(request, response, officer)
    return response


@router.get("/login/{token}", response_class=HTMLResponse)
def login_link_page(request: Request, token: str) -> HTMLResponse:
    # A GET never signs in: chat apps fetch links for previews, which would burn a single-use link.
    return render(request, "review/login_link.html", {"token": token})


@router.post("/login/{token}", response_class=HTMLResponse, dependencies=[CSRF])
def login_link_submit(request: Request, token: str, session: DB) -> Response:
    now = auth.request_now(request)
    officer = auth.consume_login_token(session, token, now)
    if officer is None:
        session.rollback()
        return render(request, "review/login.html", {
            "next": "/review/", "error": "Đường dẫn đăng nhập đã dùng hoặc đã hết hạn (15 phút). "
                                         "Anh/Chị xin đường dẫn mới qua bot, hoặc đăng nhập bằng mật khẩu."},
            status_code=400)
    session.add(admin.AuditLog(at=now, actor=f"officer:{officer.id}", action="login", target="link"))
    session.commit()
    response = RedirectResponse("/review/", status_code=303)
    auth.start_session(request, response, officer)
    return response


@router.post("/logout", dependencies=[CSRF])
def logout(request: Request) -> Response:
    response = RedirectResponse("/review/login", status_code=303)
    auth.end_session(response)
    return response


# ------------------------------------------------------------------------------------------------ dashboard


@router.get("/", response_class=HTMLResponse)
def dashboard_page(request: Request, session: DB, ctx: Ctx, year: int | None = None,
                   commune: int | None = None) -> HTMLResponse:
    chosen = pick_commune(session, ctx, commune)
    year = _year(session, ctx, year, request)
    board = admin.dashboard(session, chosen, year)
    return render(request, "review/dashboard.html", {**_base(request, session, ctx, chosen, year, "dashboard"),
                                                     "board": board})


# ------------------------------------------------------------------------------------------------ queue


QUEUE_PAGE = 50  # submissions per queue page: a commune at season's peak has thousands waiting


@router.get("/queue", response_class=HTMLResponse)
def queue_page(
    request: Request, session: DB, ctx: Ctx, year: int | None = None, commune: int | None = None,
    title: str = "", village: Annotated[str, Query()] = "", state: str = "pending",
    page: Annotated[str, Query()] = "1",
) -> HTMLResponse:
    chosen = pick_commune(session, ctx, commune)
    year = _year(session, ctx, year, request)
    village_id = int(village) if village.isdigit() else None
    if village_id is not None:
        scoped_village(session, ctx, village_id)
    filters = {"year": year, "title": title if title in admin.TITLES else "", "village_id": village_id,
               "state": state if state in admin.QUEUE_STATES else "pending"}
    total = admin.queue_count(session, (chosen.code,), **filters)  # type: ignore[arg-type]
    pages = max(1, -(-total // QUEUE_PAGE))
    number = min(max(1, int(page) if page.isdigit() and len(page) < 7 else 1), pages)
    items = admin.queue(session, (chosen.code,), **filters, limit=QUEUE_PAGE,  # type: ignore[arg-type]
                        offset=(number - 1) * QUEUE_PAGE)
    villages = list(session.exec(select(Village).where(Village.commune_code == chosen.code).order_by(Village.name)))
    query = {"commune": chosen.code, "year": year, "title": filters["title"], "village": village_id or "",
             "state": filters["state"]}
    link = "/review/queue?" + "&".join(f"{k}={quote(str(v))}" for k, v in query.items() if v != "") + "&page="
    return render(request, "review/queue.html", {
        **_base(request, session, ctx, chosen, year, "queue"), "items": items, "villages": villages,
        "title": title, "village_id": village_id, "state": state, "states": admin.QUEUE_STATE_LABELS,
        "titles": admin.TITLES, "total": total, "page": number, "pages": pages,
        "first": (number - 1) * QUEUE_PAGE + 1 if items else 0, "last": (number - 1) * QUEUE_PAGE + len(items),
        "page_link": link})


# ------------------------------------------------------------------------------------------------ one submission


def _submission(request: Request, session: Session, ctx: auth.OfficerContext, assessment: Assessment,
                error: str = "", status_code: int = 200, reason: str = "") -> HTMLResponse:
    view = admin.submission_view(session, assessment)
    return render(request, "review/submission.html", {
        **_base(request, session, ctx, view.commune, assessment.year, "queue"), "view": view, "a": assessment,
        "error": error, "reason": reason, "done": request.query_params.get("done", ""),
        "STATUS_LABELS": admin.STATUS_LABELS}, status_code=status_code)


@router.get("/assessments/{assessment_id}", response_class=HTMLResponse)
def submission_page(request: Request, assessment_id: int, session: DB, ctx: Ctx) -> HTMLResponse:
    return _submission(request, session, ctx, scoped_assessment(session, ctx, assessment_id))


@router.post("/assessments/{assessment_id}/decisions", response_class=HTMLResponse, dependencies=[CSRF])
def decide(
    request: Request, assessment_id: int, session: DB, ctx: Ctx, decision: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    assessment = scoped_assessment(session, ctx, assessment_id)
    try:
        admin.record_decision(session, assessment, officer=ctx.officer, decision=decision, reason=reason,
                              now=auth.request_now(request))
    except ReviewError as exc:
        session.rollback()
        return _submission(request, session, ctx, scoped_assessment(session, ctx, assessment_id), error=str(exc),
                           status_code=400, reason=reason)
    session.commit()
    return RedirectResponse(f"/review/assessments/{assessment_id}?done={decision}", status_code=303)


def _recognised(session: Session, ctx: auth.OfficerContext, assessment_id: int) -> Assessment:
    """A recognised assessment of the officer's communes; anything else has no certificate (404)."""
    assessment = scoped_assessment(session, ctx, assessment_id)
    if assessment.status != "recognised":
        raise auth.not_found()
    return assessment


def _pdf(data: bytes, filename: str) -> Response:
    return Response(data, media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="{filename}"', "Cache-Control": "private"})


@router.get("/assessments/{assessment_id}/certificate", response_class=HTMLResponse)
def certificate_page(request: Request, assessment_id: int, session: DB, ctx: Ctx,
                     issuer: str = "ubnd") -> HTMLResponse:
    assessment = _recognised(session, ctx, assessment_id)
    return _certificates(request, session, ctx, [assessment], issuer,
                         pdf_url=f"/review/assessments/{assessment_id}/certificate.pdf?issuer={quote(issuer)}")


@router.get("/assessments/{assessment_id}/certificate.pdf")
def certificate_pdf(assessment_id: int, session: DB, ctx: Ctx, issuer: str = "ubnd") -> Response:
    assessment = _recognised(session, ctx, assessment_id)
    data = certificates_pdf(certificate_data(session, [assessment], issuer=issuer))
    return _pdf(data, f"giay-cong-nhan-{assessment.year}-{assessment_id}.pdf")


def _certificates(request: Request, session: Session, ctx: auth.OfficerContext, rows: list[Assessment],
                  issuer: str, *, pdf_url: str) -> HTMLResponse:
    certs = certificate_data(session, rows, issuer=issuer)
    return render(request, "review/certificates.html", {"certs": certs, "ctx": ctx, "pdf_url": pdf_url,
                                                        "issuers": ISSUERS})


def _recognised_rows(request: Request, session: Session, ctx: auth.OfficerContext, year: int | None,
                     commune: int | None, title: str, village: str) -> tuple[list[Assessment], int, str]:
    """Recognised assessments of one commune and year (title and village optional), by title, village and name."""
    chosen = pick_commune(session, ctx, commune)
    year = _year(session, ctx, year, request)
    q = select(Assessment).where(Assessment.commune_code == chosen.code, Assessment.year == year,
                                 Assessment.status == "recognised")
    if title in admin.TITLES:
        q = q.where(Assessment.title == title)
    if village.isdigit():
        q = q.where(Assessment.village_id == scoped_village(session, ctx, int(village)).id)
    rows = list(session.exec(q.order_by(col(Assessment.id))))
    infos = admin.subject_infos(session, {(a.subject_type, a.subject_id) for a in rows})
    vnames = admin.village_names(session, (chosen.code,))
    order = {t: i for i, t in enumerate(admin.TITLES)}

    def key(a: Assessment) -> tuple[int, str, str]:
        info = infos.get((a.subject_type, a.subject_id))
        return (order.get(a.title, 99), vnames.get(a.village_id or 0, "~"), info.name if info else "")

    rows.sort(key=key)
    query = f"year={year}&commune={chosen.code}" + (f"&title={title}" if title in admin.TITLES else "") + (
        f"&village={village}" if village.isdigit() else "")
    return rows, year, query


@router.get("/print/certificates", response_class=HTMLResponse)
def certificates_page(request: Request, session: DB, ctx: Ctx, year: int | None = None, commune: int | None = None,
                      title: str = "", village: Annotated[str, Query()] = "", issuer: str = "ubnd") -> HTMLResponse:
    rows, _, query = _recognised_rows(request, session, ctx, year, commune, title, village)
    return _certificates(request, session, ctx, rows, issuer,
                         pdf_url=f"/review/print/certificates.pdf?{query}&issuer={quote(issuer)}")


@router.get("/print/certificates.pdf")
def certificates_pdf_route(request: Request, session: DB, ctx: Ctx, year: int | None = None,
                           commune: int | None = None, title: str = "", village: Annotated[str, Query()] = "",
                           issuer: str = "ubnd") -> Response:
    rows, year, _ = _recognised_rows(request, session, ctx, year, commune, title, village)
    name = f"giay-cong-nhan-{year}" + (f"-{title.replace('_', '-')}" if title in admin.TITLES else "") + ".pdf"
    return _pdf(certificates_pdf(certificate_data(session, rows, issuer=issuer)), name)


# ------------------------------------------------------------------------------------------------ photos


def _media_file(request: Request, relative: str) -> FileResponse:
    root = Path(request.app.state.settings.media_path).resolve()
    path = (root / relative).resolve()
    if not relative or not path.is_relative_to(root) or not path.is_file():
        raise auth.not_found()
    return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/evidence/{evidence_id}/thumb")
def evidence_thumb(request: Request, evidence_id: int, session: DB, ctx: Ctx) -> FileResponse:
    row = scoped_evidence(session, ctx, evidence_id)
    return _media_file(request, row.thumb_path or row.path)


@router.get("/evidence/{evidence_id}/photo")
def evidence_photo(request: Request, evidence_id: int, session: DB, ctx: Ctx) -> FileResponse:
    row = scoped_evidence(session, ctx, evidence_id)
    return _media_file(request, row.path or row.thumb_path)


# ------------------------------------------------------------------------------------------------ villages


@router.get("/villages", response_class=HTMLResponse)
def villages_page(request: Request, session: DB, ctx: Ctx, commune: int | None = None,
                  year: int | None = None) -> HTMLResponse:
    return _villages(request, session, ctx, pick_commune(session, ctx, commune), year)


def _villages(request: Request, session: Session, ctx: auth.OfficerContext, chosen: Commune, year: int | None,
              report: admin.ImportReport | None = None, status_code: int = 200) -> HTMLResponse:
    year = _year(session, ctx, year, request)
    board = admin.dashboard(session, chosen, year)
    return render(request, "review/villages.html", {
        **_base(request, session, ctx, chosen, year, "villages"), "board": board,
        "villages": list(session.exec(select(Village).where(Village.commune_code == chosen.code).order_by(Village.name))),
        "grants": admin.pending_grants(session, (chosen.code,)), "report": report}, status_code=status_code)


@router.post("/villages/import", response_class=HTMLResponse, dependencies=[CSRF])
async def villages_import(request: Request, session: DB, ctx: Ctx, file: Annotated[UploadFile, File()],
                          commune: Annotated[int | None, Form()] = None) -> HTMLResponse:
    chosen = pick_commune(session, ctx, commune)
    data = await file.read()
    try:
        report = admin.import_villages(session, chosen.code, data)
    except ReviewError as exc:
        session.rollback()
        report = admin.ImportReport(errors=[str(exc)])
        return _villages(request, session, ctx, chosen, None, report, status_code=400)
    session.add(admin.AuditLog(actor=f"officer:{ctx.officer.id}", action="villages_import",
                               target=f"commune:{chosen.code}",
                               detail={"villages": len(report.villages_created), "households": report.households_created,
                                       "errors": len(report.errors)}))
    session.commit()
    return _villages(request, session, ctx, chosen, None, report)


@router.post("/grants/{grant_id}", dependencies=[CSRF])
def decide_grant(request: Request, grant_id: int, session: DB, ctx: Ctx,
                 action: Annotated[str, Form()] = "grant") -> Response:
    grant = session.get(RoleGrant, grant_id)
    if grant is None or not ctx.allows(grant.commune_code):
        raise auth.not_found()
    if grant.status == "pending":
        admin.decide_grant(session, grant, officer=ctx.officer, grant_it=action == "grant",
                           now=auth.request_now(request))
        session.commit()
    return RedirectResponse(f"/review/villages?commune={grant.commune_code}", status_code=303)


@router.get("/villages/{village_id}/bulk", response_class=HTMLResponse)
def bulk_page(request: Request, village_id: int, session: DB, ctx: Ctx, year: int | None = None,
              title: str = "gia_dinh") -> HTMLResponse:
    village = scoped_village(session, ctx, village_id)
    chosen = pick_commune(session, ctx, village.commune_code)
    year = _year(session, ctx, year, request)
    title = title if title in admin.TITLES else "gia_dinh"
    ready, left = admin.bulk_candidates(session, chosen, village_id, year, title)
    return render(request, "review/bulk.html", {
        **_base(request, session, ctx, chosen, year, "queue"), "village": village, "ready": ready, "left": left,
        "title": title})


@router.post("/villages/{village_id}/bulk", dependencies=[CSRF])
async def bulk_submit(request: Request, village_id: int, session: DB, ctx: Ctx,
                      year: Annotated[int, Form()], title: Annotated[str, Form()] = "gia_dinh",
                      confirm: Annotated[str, Form()] = "") -> Response:
    village = scoped_village(session, ctx, village_id)
    chosen = pick_commune(session, ctx, village.commune_code)
    form = await request.form()
    chosen_ids = {int(v) for v in form.getlist("ids") if str(v).isdigit()}
    if confirm != "yes":
        return RedirectResponse(f"/review/villages/{village_id}/bulk?year={year}&title={title}", status_code=303)
    ready, _ = admin.bulk_candidates(session, chosen, village_id, year, title)
    now = auth.request_now(request)
    done = 0
    for item in ready:  # only what is still confirmed and passing now, whatever the form claims
        if item.id in chosen_ids:
            admin.record_decision(session, scoped_assessment(session, ctx, item.id), officer=ctx.officer,
                                  decision="recognise", reason="Công nhận theo danh sách thôn", now=now)
            done += 1
    session.commit()
    return RedirectResponse(f"/review/queue?year={year}&village={village_id}&state=recognised&bulk={done}",
                            status_code=303)


@router.get("/villages/{village_id}/print", response_class=HTMLResponse)
def village_print(request: Request, village_id: int, session: DB, ctx: Ctx) -> HTMLResponse:
    village = scoped_village(session, ctx, village_id)
    return _print_villages(request, session, ctx, [village])


@router.get("/print/villages", response_class=HTMLResponse)
def villages_print(request: Request, session: DB, ctx: Ctx, commune: int | None = None) -> HTMLResponse:
    chosen = pick_commune(session, ctx, commune)
    rows = list(session.exec(select(Village).where(Village.commune_code == chosen.code, Village.status == "active")
                             .order_by(Village.name)))
    return _print_villages(request, session, ctx, rows)


def _print_villages(request: Request, session: Session, ctx: auth.OfficerContext, villages: list[Village]) -> HTMLResponse:
    settings = request.app.state.settings
    communes = {c.code: c for c in session.exec(select(Commune).where(col(Commune.code).in_(list(ctx.communes))))}
    pages = []
    for v in villages:
        link = invite_link(session, settings, v)
        if link.startswith("/"):
            link = str(request.base_url).rstrip("/") + link
        pages.append({"village": v, "commune": communes[v.commune_code], "link": link, "svg": qr_svg(link),
                      "telegram": link.startswith("https://t.me/")})
    return render(request, "review/print_villages.html", {"pages": pages, "ctx": ctx})


# ------------------------------------------------------------------------------------------------ exports


@router.get("/export.xlsx")
def export_xlsx(request: Request, session: DB, ctx: Ctx, year: int | None = None,
                commune: int | None = None) -> Response:
    chosen = pick_commune(session, ctx, commune)
    year = _year(session, ctx, year, request)
    data = export_workbook(session, chosen, year)
    name = export_filename(chosen, year)
    return Response(data, media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


# ------------------------------------------------------------------------------------------------ campaigns


# Officer-facing names; a campaign added in a YAML override falls back to its own `name`.
CAMPAIGN_LABELS = {
    "registration": "Kêu gọi đăng ký (tháng 1)", "registration_followup": "Nhắc đăng ký lần 2",
    "assessment": "Kêu gọi tự đánh giá (tháng 11)", "assessment_followup": "Nhắc người chưa gửi",
    "village_digest": "Tin tóm tắt cho trưởng thôn", "officer_digest": "Tin tóm tắt cho cán bộ xã",
}
AUDIENCE_LABELS = {
    "people": "Mọi hộ, dòng họ, trưởng thôn đã tham gia bot",
    "not_registered": "Người chưa đăng ký phấn đấu năm nay",
    "registered": "Người đã đăng ký phấn đấu năm nay",
    "not_submitted": "Người đã đăng ký nhưng chưa gửi tự đánh giá",
    "village_leaders": "Trưởng thôn còn hộ chưa gửi",
    "officers": "Cán bộ xã",
}
# outbox status -> column of the delivery table ("sending" is still waiting to be sent; "unconfirmed": the
# platform was called but a crash hid its answer — nearly always delivered, see docs/reliability.md)
DELIVERY_COLUMNS = {"queued": "queued", "sending": "queued", "sent": "sent", "unconfirmed": "sent",
                    "unreachable": "unreachable", "failed": "failed"}


@dataclass(frozen=True)
class CampaignLine:
    id: str
    label: str
    name: str
    schedule: str
    audience: str
    enabled: bool
    next_run: datetime | None  # aware, None when disabled


@dataclass
class Delivery:
    campaign: str
    year: int
    queued: int = 0
    sent: int = 0
    unreachable: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.queued + self.sent + self.unreachable + self.failed


def campaign_label(campaign_id: str, config: CampaignConfig | None = None) -> str:
    if campaign_id in CAMPAIGN_LABELS:
        return CAMPAIGN_LABELS[campaign_id]
    if config is not None and campaign_id in config.campaigns:
        return config.campaigns[campaign_id].name
    return campaign_id


def _day_list(days: str) -> str:
    items = days.split(",")
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " và " + items[-1]


def schedule_words(campaign: Campaign) -> str:
    """ "0 8 5 1 *" → "8:00 ngày 5 tháng 1 hằng năm"; several crons joined; anything fancier stays a cron."""
    parts = []
    for cron in campaign.crons:
        fields = cron.split()
        if (len(fields) == 5 and fields[0].isdigit() and fields[1].isdigit() and fields[4] == "*"
                and all(x.isdigit() for x in fields[2].split(",")) and fields[3].isdigit()):
            minute, hour, days, month, _ = fields
            parts.append(f"{int(hour)}:{int(minute):02d} ngày {_day_list(days)} tháng {int(month)}")
        else:
            parts.append(f"theo lịch “{cron}”")
    return " và ".join(parts) + " hằng năm"


def campaign_lines(config: CampaignConfig, now: datetime) -> list[CampaignLine]:
    """Each campaign with its schedule in words and its next run after ``now`` (the same next_fire as
    `hoctap remind --list`); callers pass the wall clock, tests a fixed time."""
    return [CampaignLine(id=c.id, label=campaign_label(c.id, config), name=c.name, schedule=schedule_words(c),
                         audience=AUDIENCE_LABELS.get(c.audience, c.audience), enabled=c.enabled,
                         next_run=next_fire(c, now) if c.enabled else None)
            for c in config.campaigns.values()]


def delivery_counts(session: Session, commune_code: int) -> list[Delivery]:
    """Reminder messages to people of one commune, per campaign and year, by delivery state. The year is read
    from the idempotency key ("<campaign>[@MM-DD]:<year>:<person>:<identity>…", bot/scheduler.py)."""
    key, name = col(OutboxMessage.idempotency_key), col(OutboxMessage.campaign)
    start = func.length(name) + 1
    year = case((func.substr(key, start, 1) == "@", func.substr(key, start + 7, 4)),
                else_=func.substr(key, start + 1, 4)).label("year")
    q = (select(name, year, col(OutboxMessage.status), func.count())
         .join(Person, col(Person.id) == col(OutboxMessage.person_id))
         .where(Person.commune_code == commune_code, name.is_not(None))
         .group_by(name, year, col(OutboxMessage.status)))
    rows: dict[tuple[str, int], Delivery] = {}
    for campaign, year_text, status, n in session.execute(q):
        if not str(year_text or "").isdigit() or status not in DELIVERY_COLUMNS:
            continue
        item = rows.setdefault((campaign, int(year_text)), Delivery(campaign, int(year_text)))
        column = DELIVERY_COLUMNS[status]
        setattr(item, column, getattr(item, column) + int(n))
    return sorted(rows.values(), key=lambda d: (-d.year, d.campaign))


@router.get("/campaigns", response_class=HTMLResponse)
def campaigns_page(request: Request, session: DB, ctx: Ctx, commune: int | None = None) -> HTMLResponse:
    chosen = pick_commune(session, ctx, commune)
    error = ""
    try:
        config: CampaignConfig | None = settings_config(request.app.state.settings)
    except CampaignError as exc:
        config, error = None, str(exc)
    lines = campaign_lines(config, auth.request_now(request)) if config else []
    runs = list(session.exec(select(CampaignRun).where(
        (col(CampaignRun.commune_code) == chosen.code) | col(CampaignRun.commune_code).is_(None),
        col(CampaignRun.dry_run).is_(False))
        .order_by(col(CampaignRun.started_at).desc(), col(CampaignRun.id).desc()).limit(200)))
    year = _year(session, ctx, None, request)
    return render(request, "review/campaigns.html", {
        **_base(request, session, ctx, chosen, year, "campaigns"), "lines": lines, "runs": runs,
        "deliveries": delivery_counts(session, chosen.code), "error": error,
        "label": lambda cid: campaign_label(cid, config)})


# ------------------------------------------------------------------------------------------------ account


@router.get("/account", response_class=HTMLResponse)
def account_page(request: Request, session: DB, ctx: Ctx) -> HTMLResponse:
    chosen = pick_commune(session, ctx, None)
    year = _year(session, ctx, None, request)
    return render(request, "review/account.html", {**_base(request, session, ctx, chosen, year, "account"),
                                                   "token": ""})


@router.post("/account/api-token", response_class=HTMLResponse, dependencies=[CSRF])
def account_token(request: Request, session: DB, ctx: Ctx) -> HTMLResponse:
    token = auth.new_api_token(session, ctx.officer)
    session.add(admin.AuditLog(actor=f"officer:{ctx.officer.id}", action="api_token_created",
                               target=f"officer:{ctx.officer.id}"))
    session.commit()
    chosen = pick_commune(session, ctx, None)
    year = _year(session, ctx, None, request)
    return render(request, "review/account.html", {**_base(request, session, ctx, chosen, year, "account"),
                                                   "token": token})
