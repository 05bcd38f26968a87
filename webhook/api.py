"""JSON API under /api/v1 for the commune's own tools. Bearer token (Officer.api_token_hash); the same commune
scoping as the pages: another commune's resource answers 404.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from models.tables import Assessment, Commune, OutboxMessage, Village
from webhook import admin, auth
from webhook.admin import ReviewError

router = APIRouter(prefix="/api/v1", tags=["review"])

# Ids and official codes are far below 2^31; bounding them answers 422 instead of an overflow in the driver.
MAX_ID = 2**31 - 1
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
IdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]
YearQuery = Annotated[int | None, Query(ge=2000, le=2100)]
# a title's id as in criteria/*.yaml ("gia_dinh"); empty: every title. Free text here reached the database, and
# PostgreSQL refuses a NUL in any text value (500: tests/reliability/test_bug_api_nul_query.py)
TitleQuery = Annotated[str, Query(max_length=40, pattern=r"^[a-z_]*$", description="A title's id, e.g. gia_dinh.")]
QueueState = Literal["pending", "returned", "recognised", "rejected", "all"]


def get_db(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session


DB = Annotated[Session, Depends(get_db)]


def api_officer(
    session: DB,
    authorization: Annotated[str | None, Header(description="Bearer <mã API của cán bộ>")] = None,
) -> auth.OfficerContext:
    """The officer owning the bearer token; 401 without a valid one."""
    officer = auth.officer_from_bearer(session, authorization)
    if officer is None:
        raise HTTPException(status_code=401, detail="Cần mã API hợp lệ (Authorization: Bearer …).",
                            headers={"WWW-Authenticate": "Bearer"})
    return auth.context_for(session, officer)


Ctx = Annotated[auth.OfficerContext, Depends(api_officer)]


class DecisionIn(BaseModel):
    decision: Literal["recognise", "return", "reject"]
    reason: str = Field(default="", max_length=500, pattern=r"^[^\x00]*$",  # no NUL: PostgreSQL refuses it
                        description="Required for return and reject; sent to the family.")


class DecisionOut(BaseModel):
    id: int
    assessment_id: int
    decision: str
    reason: str
    status: str
    notified: bool


def _scoped(session: Session, ctx: auth.OfficerContext, assessment_id: int) -> Assessment:
    row = session.get(Assessment, assessment_id)
    if row is None or not ctx.allows(row.commune_code):
        raise auth.not_found()
    return row


@router.get("/me")
def me(ctx: Ctx) -> dict[str, Any]:
    """The officer behind the token and the communes they may see."""
    return {"id": ctx.officer.id, "username": ctx.officer.username, "name": ctx.officer.name,
            "communes": list(ctx.communes)}


@router.get("/communes/{code}/dashboard")
def commune_dashboard(code: IdPath, session: DB, ctx: Ctx, year: YearQuery = None) -> dict[str, Any]:
    """Per title and per village: registered, submitted, proposed to pass, recognised; share vs target."""
    commune = session.get(Commune, code)
    if commune is None or not ctx.allows(code):
        raise auth.not_found()
    return admin.dashboard(session, commune, year or admin.default_year(session, (code,))).to_json()


@router.get("/communes/{code}/villages")
def commune_villages(code: IdPath, session: DB, ctx: Ctx) -> list[dict[str, Any]]:
    """The commune's villages with their invitation codes."""
    if session.get(Commune, code) is None or not ctx.allows(code):
        raise auth.not_found()
    rows = session.exec(select(Village).where(Village.commune_code == code).order_by(Village.name))
    return [{"id": v.id, "name": v.name, "invite_code": v.invite_code, "status": v.status} for v in rows]


@router.get("/assessments")
def list_assessments(
    session: DB, ctx: Ctx, year: YearQuery = None, title: TitleQuery = "", state: QueueState = "pending",
    commune: IdQuery = None, village: IdQuery = None,
    limit: Annotated[int | None, Query(ge=1, le=10_000, description="At most this many (default: all).")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="Skip this many first (with limit).")] = 0,
) -> list[dict[str, Any]]:
    """Submissions of the officer's communes, oldest first; state: pending | returned | recognised | rejected | all.
    `limit` and `offset` page through them."""
    if commune is not None and not ctx.allows(commune):
        raise auth.not_found()
    communes = (commune,) if commune is not None else ctx.communes
    year = year or admin.default_year(session, communes)
    return [i.to_json() for i in admin.queue(session, communes, year=year, title=title, village_id=village, state=state,
                                              limit=limit, offset=offset if limit is not None else 0)]


@router.get("/assessments/{assessment_id}")
def get_assessment(assessment_id: IdPath, session: DB, ctx: Ctx) -> dict[str, Any]:
    """One submission: answers in words, points per criterion, proposal, who entered it, decisions."""
    return admin.submission_view(session, _scoped(session, ctx, assessment_id)).to_json()


@router.post("/assessments/{assessment_id}/decisions", status_code=201)
def post_decision(assessment_id: IdPath, body: DecisionIn, session: DB, ctx: Ctx) -> DecisionOut:
    """Recognise, return (reason required) or reject (reason required); the family hears it in chat."""
    assessment = _scoped(session, ctx, assessment_id)
    try:
        row = admin.record_decision(session, assessment, officer=ctx.officer, decision=body.decision,
                                    reason=body.reason)
    except ReviewError as exc:
        session.rollback()
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    notified = session.exec(select(OutboxMessage).where(
        col(OutboxMessage.idempotency_key) == f"decision:{row.id}")).first() is not None
    session.commit()
    return DecisionOut(id=row.id or 0, assessment_id=assessment_id, decision=row.decision, reason=row.reason,
                       status=assessment.status, notified=notified)
