"""The review side at scale keeps its answers: remembered proposals equal flows.criteria.score, batched computed
shares equal the per-assessment ones, the queue pages in SQL (pages join up to the whole list), the API pages the
same way, and the export's streamed list rows re-read exactly, styles and extents included."""

from __future__ import annotations

import random
import re
from io import BytesIO

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlmodel import Session

from flows.criteria import load_sets, score
from models.tables import Assessment, Commune, Household, Officer, Person, Registration, Village
from tests.review_seed import GIA_LOC, KIM_BANG, T0, YEAR, answers, login, make_app, seed
from webhook import admin, auth
from webhook.exports import export_workbook

ODD = [None, "na", True, False, 0, 1, 7, 50, 100, 101, -1, 2.5, 99.9, "co", "", "tot", "kha", [], {}, float("inf")]


def random_answers(rng: random.Random, cset) -> dict:
    out = {}
    for c in cset.criteria:
        roll = rng.random()
        if roll < 0.15:
            continue  # unanswered
        if roll < 0.35:
            out[c.id] = rng.choice(ODD)
        elif c.answer == "yes_no":
            out[c.id] = rng.random() < 0.8
        elif c.answer == "choice":
            out[c.id] = rng.choice(c.options).value
        elif c.answer == "share":
            out[c.id] = rng.choice([0, 30, 49.5, 50, 79, 80, 100])
        else:
            out[c.id] = rng.randint(int(c.min or 0) - 1, int(c.max or 0) + 1)
    if rng.random() < 0.1:
        out["not_a_criterion"] = True
    return out


def test_quick_proposal_is_score_without_the_reasons() -> None:
    rng = random.Random(7)
    for local in ((), ("31",)):
        for cset in load_sets(local=local).values():
            keys = [c.computed for c in cset.criteria if c.computed]
            for _ in range(400):
                given = random_answers(rng, cset)
                computed = {k: rng.choice([0, 40.0, 59.9, 60, 100, "na"]) for k in keys if rng.random() < 0.8}
                expected = score(cset, given, computed)
                assert admin.quick_proposal(cset, given, computed) == (expected.total, expected.max, expected.passed)


def test_remembered_proposal_follows_the_answers_text() -> None:
    cset = load_sets()["gia_dinh"]
    good, bad = answers("gia_dinh"), answers("gia_dinh", good=False)
    import json

    assert admin.proposal(cset, json.dumps(good)) == (100, 100, True)
    assert admin.proposal(cset, json.dumps(bad)) == (0, 100, False)
    assert admin.proposal(cset, json.dumps(good)) == (100, 100, True)  # from memory
    assert admin.proposal(None, json.dumps(good)) is None
    assert admin.proposal(cset, None) == (score(cset, {}).total, 100, False)


@pytest.fixture
def commune(engine):
    with Session(engine) as s:
        a = seed(s, code=GIA_LOC, tag="a")
        s.commit()
    return a


def test_batched_computed_shares_equal_the_single_ones(engine, commune) -> None:
    with Session(engine) as s:
        officer = s.get(Officer, commune.officer_id)
        keys = {("clan", commune.clan_id, YEAR), ("village", commune.villages[0], YEAR),
                ("village", commune.villages[1], YEAR), ("household", commune.households["an"], YEAR)}
        before = admin.computed_many(s, keys)
        assert before[("clan", commune.clan_id, YEAR)] == {"member_households_recognised": 0.0}
        assert before[("village", commune.villages[0], YEAR)] == {"village_households_recognised": 0.0,
                                                                  "village_clans_recognised": 0.0}
        assert before[("village", commune.villages[1], YEAR)] == {"village_households_recognised": 50.0}
        assert before[("household", commune.households["an"], YEAR)] == {}
        admin.record_decision(s, s.get(Assessment, commune.assessments["submitted"]), officer=officer,
                              decision="recognise")
        s.flush()
        after = admin.computed_many(s, keys)
        assert after[("clan", commune.clan_id, YEAR)] == {"member_households_recognised": 100.0}
        assert after[("village", commune.villages[0], YEAR)]["village_households_recognised"] == 25.0
        village = s.get(Assessment, commune.assessments["village"])
        assert admin.computed_values(s, village) == after[("village", commune.villages[0], YEAR)]


def test_dashboard_village_counts_equal_the_counted_in_sql(engine, commune, monkeypatch) -> None:
    """dashboard() gives computed_many the households and recognised households of its villages, counted in its
    own pass: for every village they give the shares counted in SQL, and the dashboard equals one on the SQL path."""
    real = admin.computed_many
    passed: list = []

    def spy(session, keys, *, known_villages=None):
        passed.append(known_villages)
        return real(session, keys, known_villages=known_villages)

    def sql_only(session, keys, *, known_villages=None):
        return real(session, keys)

    with Session(engine, expire_on_commit=False) as s:
        other = seed(s, code=KIM_BANG, tag="b")
        empty = Village(commune_code=GIA_LOC, name="Thôn Mới", invite_code="moia")  # no households: no share
        s.add(empty)
        s.flush()
        v1, v2 = commune.villages
        for village in (v2, empty.id):  # the villages' own files score on the shares
            s.add(Assessment(commune_code=GIA_LOC, village_id=village, subject_type="village", subject_id=village,
                             title="cong_dong", year=YEAR, answers=answers("cong_dong"), status="submitted",
                             submitted_at=T0))
        s.commit()
        ours = {commune.villages[0], v2, empty.id}
        every = {("village", v, YEAR) for v in (*ours, *other.villages)}
        officer = s.get(Officer, commune.officer_id)

        def check() -> dict:
            passed.clear()
            monkeypatch.setattr(admin, "computed_many", spy)
            board = admin.dashboard(s, s.get(Commune, GIA_LOC), YEAR).to_json()
            known = passed[-1]
            assert {v for v, _y in known} == ours and {y for _v, y in known} == {YEAR}
            monkeypatch.setattr(admin, "computed_many", sql_only)
            assert admin.dashboard(s, s.get(Commune, GIA_LOC), YEAR).to_json() == board
            monkeypatch.setattr(admin, "computed_many", real)
            shares = real(s, every)
            assert real(s, every, known_villages=known) == shares
            assert real(s, every, known_villages={(v, YEAR + 1): n for (v, _y), n in known.items()}) == shares
            assert shares[("village", empty.id, YEAR)] == {}
            return shares

        assert check()[("village", v1, YEAR)]["village_households_recognised"] == 0.0
        assert check()[("village", v2, YEAR)]["village_households_recognised"] == 50.0  # proposals stored now
        for key in ("submitted", "confirmed1"):
            admin.record_decision(s, s.get(Assessment, commune.assessments[key]), officer=officer,
                                  decision="recognise")
        admin.record_decision(s, s.get(Assessment, other.assessments["submitted"]), officer=officer,
                              decision="recognise")
        # a recognised household without a village, and one more recognised in the second village
        for village, name in ((None, "Hộ không thôn"), (v2, "Hộ thôn Đoài")):
            h = Household(commune_code=GIA_LOC, village_id=village, head_name=name)
            s.add(h)
            s.flush()
            s.add(Assessment(commune_code=GIA_LOC, village_id=village, subject_type="household",
                             subject_id=h.id or 0, title="gia_dinh", year=YEAR, answers=answers("gia_dinh"),
                             status="recognised", submitted_at=T0))
        s.commit()
        after = check()
        assert after[("village", v1, YEAR)]["village_households_recognised"] == 50.0
        assert after[("village", v2, YEAR)]["village_households_recognised"] == 66.7
        assert after[("village", other.villages[0], YEAR)]["village_households_recognised"] == 25.0
        check()  # with the new proposals stored


def _many(engine, commune, n: int) -> None:
    """n more submitted households in the first village, one a second apart; and a citizen without a village id
    on the assessment (listed under the person's village)."""
    from datetime import timedelta

    with Session(engine) as s:
        for i in range(n):
            p = Person(name=f"Hộ thử {i:03d}", commune_code=GIA_LOC, village_id=commune.villages[0])
            s.add(p)
            s.flush()
            h = Household(commune_code=GIA_LOC, village_id=commune.villages[0], head_person_id=p.id,
                          head_name=p.name)
            s.add(h)
            s.flush()
            s.add(Registration(commune_code=GIA_LOC, subject_type="household", subject_id=h.id or 0,
                               title="gia_dinh", year=YEAR))
            s.add(Assessment(commune_code=GIA_LOC, village_id=None if i % 10 == 0 else h.village_id,
                             subject_type="household", subject_id=h.id or 0, title="gia_dinh", year=YEAR,
                             answers=answers("gia_dinh", good=i % 3 != 0), status="submitted",
                             submitted_at=T0 + timedelta(seconds=i + 1)))
        s.commit()


def names(html: str) -> list[str]:
    return re.findall(r'class="item-name">([^<]+)<', html)


def test_queue_pages_join_up_to_the_whole_list(engine, tmp_path, commune) -> None:
    _many(engine, commune, 120)
    with Session(engine) as s:
        whole = admin.queue(s, (GIA_LOC,), year=YEAR)
        village = admin.queue(s, (GIA_LOC,), year=YEAR, village_id=commune.villages[0], state="all")
        assert admin.queue_count(s, (GIA_LOC,), year=YEAR) == len(whole) == 125
        # the village filter is SQL now: the same rows as filtering the whole list by the village shown
        everything = admin.queue(s, (GIA_LOC,), year=YEAR, state="all")
        assert [i.id for i in village] == [i.id for i in everything if i.village_id == commune.villages[0]]
        assert admin.queue_count(s, (GIA_LOC,), year=YEAR, village_id=commune.villages[0], state="all") \
            == len(village)
    with TestClient(make_app(engine, tmp_path)) as client:
        login(client, commune.username)
        pages = [client.get(f"/review/queue?year={YEAR}&page={n}") for n in (1, 2, 3)]
        assert all(p.status_code == 200 for p in pages)
        assert [len(names(p.text)) for p in pages] == [50, 50, 25]
        assert sum((names(p.text) for p in pages), []) == [i.subject for i in whole]
        assert "125 hồ sơ · đang xem 51–100 (trang 2/3)." in pages[1].text
        assert 'rel="next" href="/review/queue?commune=10999&amp;year=2027&amp;state=pending&amp;page=3"' \
            in pages[1].text
        assert names(client.get(f"/review/queue?year={YEAR}&page=9").text) == names(pages[2].text)
        assert names(client.get(f"/review/queue?year={YEAR}&page=x").text) == names(pages[0].text)
        small = client.get(f"/review/queue?year={YEAR}&state=returned").text
        assert "1 hồ sơ." in small and "Trang 1/" not in small


def test_api_pages_the_same_list(engine, tmp_path, commune) -> None:
    _many(engine, commune, 30)
    with Session(engine) as s:
        officer = s.get(Officer, commune.officer_id)
        token = auth.new_api_token(s, officer)
        s.commit()
    with TestClient(make_app(engine, tmp_path)) as client:
        headers = {"Authorization": f"Bearer {token}"}
        whole = client.get(f"/api/v1/assessments?year={YEAR}", headers=headers).json()
        assert len(whole) == 35
        parts = [client.get(f"/api/v1/assessments?year={YEAR}&limit=10&offset={o}", headers=headers).json()
                 for o in (0, 10, 20, 30)]
        assert sum(parts, []) == whole
        assert client.get(f"/api/v1/assessments?year={YEAR}&limit=0", headers=headers).status_code == 422


def test_export_list_rows_reread_exactly_with_styles(engine, commune) -> None:
    odd = ["A & B <nhà>", "  Cách đầu", "=1+1", "Tên \"ngoặc\" 'đơn'"]
    with Session(engine) as s:
        officer = s.get(Officer, commune.officer_id)
        for name in odd:
            p = Person(name=name, commune_code=GIA_LOC, village_id=commune.villages[0])
            s.add(p)
            s.flush()
            h = Household(commune_code=GIA_LOC, village_id=commune.villages[0], head_person_id=p.id, head_name=name)
            s.add(h)
            s.flush()
            a = Assessment(commune_code=GIA_LOC, village_id=h.village_id, subject_type="household",
                           subject_id=h.id or 0, title="gia_dinh", year=YEAR, answers=answers("gia_dinh"),
                           status="submitted", submitted_at=T0)
            s.add(a)
            s.flush()
            admin.record_decision(s, a, officer=officer, decision="recognise")
        s.commit()
        from models.tables import Commune

        data = export_workbook(s, s.get(Commune, GIA_LOC), YEAR)
    wb = load_workbook(BytesIO(data))
    listed = [list(r) for r in wb["Danh sách công nhận"].iter_rows(values_only=True)][3:]
    assert sorted(r[1] for r in listed) == sorted([*odd, "Vũ Văn Em"])
    assert [r[0] for r in listed] == [1, 2, 3, 4, 5]
    assert all(r[4] == 100 and isinstance(r[4], int) for r in listed)
    for ws in wb.worksheets:
        assert ws.freeze_panes == "A4"
        assert ws["A1"].font.b and ws["A1"].font.sz == 13 and ws["A2"].font.i
        assert all(c.font.b and c.fill.fgColor.rgb == "00DDEBF7" and c.alignment.wrap_text for c in ws[3]
                   if c.value is not None)
    assert wb["Danh sách công nhận"].column_dimensions["B"].width == 30
    assert wb["Thôn Đông"].max_row == 3 + len(odd)
    # a reader that sizes sheets by their extent sees every row
    lean = load_workbook(BytesIO(data), read_only=True)
    assert lean["Danh sách công nhận"].max_row == 3 + len(listed)
    assert len(list(lean["Thôn Đông"].iter_rows(values_only=True))) == 3 + len(odd)
