"""The dashboard keeps each submission's proposal in Assessment.proposal (issue #10: the dashboard at province scale
reads short texts, not every answer): stored values equal flows.criteria.score, later views count from them, an
answer saved by the bot empties the column, a value scored from answers that changed since is not written, and a
value computed with another criteria set is not used. Real databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

from sqlalchemy import update
from sqlmodel import Session, select

from flows.criteria import score
from flows.types import Event
from models.tables import Assessment, Commune, Household
from tests.review_seed import GIA_LOC, YEAR, answers, seed
from tests.test_uow import Chat, _seed, _signup
from webhook import admin


def _proposed(board: admin.Dashboard, title: str = "gia_dinh") -> int:
    return next(r.proposed for r in board.titles if r.title == title)


def _stored(engine) -> dict[int, str | None]:
    with Session(engine) as s:
        return {a.id or 0: a.proposal for a in s.exec(select(Assessment))}


def test_dashboard_stores_proposals_equal_to_score_and_counts_from_them(engine) -> None:
    with Session(engine) as s:
        seed(s, code=GIA_LOC, tag="a")
        s.commit()
    with Session(engine) as s:
        commune = s.get(Commune, GIA_LOC)
        first = admin.dashboard(s, commune, YEAR)
    sets = admin.criteria_for(commune)
    live = {t for t, c in sets.items() if any(x.computed for x in c.criteria)}
    with Session(engine) as s:
        rows = list(s.exec(select(Assessment).where(Assessment.year == YEAR)))
    kept = [a for a in rows if a.proposal]
    assert kept, "the dashboard stored no proposal"
    for a in rows:
        if a.status == "draft" or a.title in live or a.title not in sets:
            assert a.proposal is None, (a.title, a.status)  # drafts and computed titles are always scored live
            continue
        expected = score(sets[a.title], a.answers)
        assert admin.stored_proposal(sets[a.title], a.proposal) == (expected.total, expected.max, expected.passed)

    # the second view counts from the stored texts: the same figures ...
    with Session(engine) as s:
        second = admin.dashboard(s, commune, YEAR)
    assert second.to_json() == first.to_json()
    # ... and really from them: a stored verdict flipped by hand (same fingerprint) changes the count
    target = next(a for a in kept if a.title == "gia_dinh")
    total, top, passed = admin.stored_proposal(sets["gia_dinh"], target.proposal)
    flipped = f"{admin.stored_key(sets['gia_dinh'])}|{total!r}|{top}|{int(not passed)}"
    with Session(engine) as s:
        s.exec(update(Assessment).where(Assessment.id == target.id).values(proposal=flipped))
        s.commit()
    with Session(engine) as s:
        assert _proposed(admin.dashboard(s, commune, YEAR)) == _proposed(first) + (1 if not passed else -1)
    # a value computed with another criteria set (another fingerprint) is not used, and is replaced
    other = f"{'0' * 16}|{total!r}|{top}|{int(not passed)}"
    with Session(engine) as s:
        s.exec(update(Assessment).where(Assessment.id == target.id).values(proposal=other))
        s.commit()
    with Session(engine) as s:
        assert admin.dashboard(s, commune, YEAR).to_json() == first.to_json()
    assert _stored(engine)[target.id or 0] == target.proposal


def test_a_proposal_scored_from_answers_that_changed_since_is_not_written(engine) -> None:
    with Session(engine) as s:
        seed(s, code=GIA_LOC, tag="a")
        s.commit()
    with Session(engine) as s:
        row = next(a for a in s.exec(select(Assessment)) if a.title == "gia_dinh" and a.status != "draft")
        old_text = json.dumps(row.answers)
        s.exec(update(Assessment).where(Assessment.id == row.id).values(proposal=None))
        s.commit()
        # the answers change between the dashboard's read and its write
        row.answers = answers("gia_dinh", good=False)
        s.add(row)
        s.commit()
        admin.keep_proposals(s, [(row.id or 0, old_text, "stale|100.0|100|1")])
    assert _stored(engine)[row.id or 0] is None
    with Session(engine) as s:
        text = s.connection().execute(select(admin.answers_text()).where(Assessment.id == row.id)).scalar_one()
        admin.keep_proposals(s, [(row.id or 0, text, "fresh|0.0|100|0")])
    assert _stored(engine)[row.id or 0] == "fresh|0.0|100|0"


def test_an_answer_saved_by_the_bot_empties_the_stored_proposal(session: Session, engine) -> None:
    _seed(session)
    chat = Chat(session, "8101")
    _signup(chat)
    household = session.exec(select(Household)).one()
    row = Assessment(commune_code=10999, subject_type="household", subject_id=household.id or 0, title="gia_dinh",
                     year=2026, status="returned", answers={"c1_1": True}, total=10)
    session.add(row)
    session.commit()
    commune = session.get(Commune, 10999)
    before = admin.dashboard(session, commune, 2026)
    stored = _stored(engine)[row.id or 0]
    cset = admin.criteria_for(commune)["gia_dinh"]
    assert admin.stored_proposal(cset, stored) == admin.quick_proposal(cset, {"c1_1": True})
    # the family answers the next question of its returned file in chat
    chat.send(Event("button", value="go:assess:gia_dinh"))
    assert "đã trả lời 1/10 câu" in chat.said()
    chat.press("Trả lời tiếp")
    assert "Câu 2/10" in chat.said()
    chat.text("co")
    session.expire_all()
    again = session.get(Assessment, row.id)
    assert again.answers == {"c1_1": True, "c1_2": True}
    assert again.proposal is None
    after = admin.dashboard(session, commune, 2026)
    assert admin.stored_proposal(cset, _stored(engine)[row.id or 0]) == admin.quick_proposal(cset, again.answers)
    assert after.to_json()["titles"][0]["submitted"] == before.to_json()["titles"][0]["submitted"] == 1
    # the next answer, on the hot path (one UPDATE on the row the step read), empties it too
    chat.press("Bỏ qua")  # no photo for c1_2
    assert "Câu 3/10" in chat.said()
    chat.text("co")
    session.expire_all()
    third = session.get(Assessment, row.id)
    assert third.answers == {"c1_1": True, "c1_2": True, "c1_3": True}
    assert third.proposal is None
    admin.dashboard(session, commune, 2026)
    assert admin.stored_proposal(cset, _stored(engine)[row.id or 0]) == admin.quick_proposal(cset, third.answers)


def test_the_criteria_set_fingerprint_is_the_same_in_every_process() -> None:
    # stored proposals outlive the process: a fingerprint that moved with Python's hash seed would make every
    # restart rescore every submission (and never match what another worker process stored)
    import os
    import subprocess
    import sys

    code = ("from flows.criteria import load_sets; from webhook import admin; "
            "print(sorted((t, admin.stored_key(c)) for t, c in load_sets(local=('31',)).items()))")
    seen = set()
    for seed_value in ("1", "2", "3"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                             env={**os.environ, "PYTHONHASHSEED": seed_value}).stdout
        seen.add(out)
    assert len(seen) == 1 and "gia_dinh" in next(iter(seen))
