"""Conversations through bot.uow.process_event on the real database fixture (SQLite or PostgreSQL)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, func, select

from bot.uow import ensure_commune, process_event
from flows.types import Event, PhotoRef, Say
from models.tables import (
    Assessment,
    ChatIdentity,
    Conversation,
    Evidence,
    Household,
    OutboxMessage,
    Person,
    Registration,
    ReviewDecision,
    RoleGrant,
    Unit,
    Village,
)

NOW = datetime.fromisoformat("2026-11-10T09:00:00+07:00")


class Chat:
    """One person typing into one chat; each event is one committed unit of work."""

    def __init__(self, session: Session, chat_id: str, channel: str = "telegram") -> None:
        self.session, self.chat_id, self.channel = session, chat_id, channel
        self.last: list[Say] = []
        self.n = 0

    def send(self, event: Event, *, base: str | None = None) -> list[Say]:
        self.n += 1
        out = process_event(self.session, channel=self.channel, chat_id=self.chat_id, event=event, now=NOW,
                            idempotency_base=base or f"{self.channel}:{self.chat_id}:{self.n}")
        self.session.commit()
        if out:
            self.last = out
        return out

    def text(self, text: str) -> list[Say]:
        return self.send(Event("text", text=text))

    def press(self, label: str) -> list[Say]:
        buttons = [b for say in self.last for b in say.buttons]
        button = next((b for b in buttons if b.label == label), None)
        assert button is not None, f"no button {label!r} in {[b.label for b in buttons]}"
        return self.send(Event("button", text=label, value=button.value))

    def said(self) -> str:
        return "\n".join(s.text for s in self.last)


def _seed(session: Session) -> Village:
    ensure_commune(session, 10999)
    village = Village(commune_code=10999, name="Thôn Đông", invite_code="dong01")
    session.add(village)
    session.commit()
    return village


def _count(session: Session, model: Any) -> int:
    return session.exec(select(func.count()).select_from(model)).one()


def _signup(chat: Chat, name: str = "Nguyễn Văn An", phone: str = "0912 345 678") -> None:
    chat.send(Event("command", text="start"))
    chat.press("Chủ hộ gia đình")
    chat.text("gia loc")
    chat.press("Gia Lộc – Hải Phòng")
    chat.press("Thôn Đông")
    chat.text(name)
    chat.text("4")
    chat.send(Event("contact", text=phone))
    chat.press("Đồng ý")


def _family_and_leader(session: Session) -> tuple[Village, Chat, Chat]:
    """A family signed up in chat 2001, a village leader (role pending) in chat 2002, both of Thôn Đông."""
    village = _seed(session)
    family = Chat(session, "2001")
    _signup(family, "Lê Thị Hoa")
    leader = Chat(session, "2002")
    leader.send(Event("command", text="start"))
    leader.press("Trưởng thôn/Chi hội")
    leader.text("gia loc")
    leader.press("Gia Lộc – Hải Phòng")
    leader.press("Thôn Đông")
    leader.text("Phạm Văn Cường")
    leader.press("Bỏ qua")
    leader.press("Đồng ý")
    return village, family, leader


def test_household_signs_up_answers_with_a_photo_and_submits(session: Session) -> None:
    _seed(session)
    chat = Chat(session, "1001")
    _signup(chat)
    person = session.exec(select(Person)).one()
    assert (person.name, person.phone, person.commune_code) == ("Nguyễn Văn An", "+84912345678", 10999)
    assert person.consent_at is not None
    household = session.exec(select(Household)).one()
    assert household.head_person_id == person.id and household.members == 4
    grant = session.exec(select(RoleGrant)).one()
    assert (grant.role, grant.status) == ("household", "granted")
    chat.press("Đăng ký")
    assert session.exec(select(Registration)).one().title == "gia_dinh"
    chat.press("Tự đánh giá")
    assert "Câu 1/10" in chat.said()
    for answer in ["co", "có", "Bỏ qua", "co", "co", "100%", "Bỏ qua", "co", "co"]:
        if answer == "Bỏ qua":
            chat.press(answer)
        else:
            chat.text(answer)
    assert "Câu 8/10" in chat.said()
    chat.text("1")  # the first option: "Có cả góc học tập và tủ sách"
    assert "📷" in chat.said()
    chat.send(Event("photo", photo=PhotoRef("f" * 64, 800, 600)))
    chat.press("Xong")
    chat.text("co")
    chat.text("khong")
    assert "tạm tính 90/100 điểm (cần 80)" in chat.said()
    chat.press("Gửi Hội Khuyến học")
    assert "✅ Đã gửi" in chat.said()
    assessment = session.exec(select(Assessment)).one()
    assert assessment.status == "submitted" and assessment.total == 90
    assert assessment.answers["c3_2"] == "goc_va_tu_sach" and assessment.answers["c2_2"] == 100
    evidence = session.exec(select(Evidence)).one()
    assert (evidence.criterion, evidence.sha256) == ("c3_2", "f" * 64)
    outbox = session.exec(select(OutboxMessage)).all()
    assert all(m.chat_id == "1001" and m.priority == 0 for m in outbox)
    assert Say.from_json(outbox[-1].payload).text == chat.last[-1].text
    conv = session.exec(select(Conversation)).one()
    assert conv.state["step"] == "idle"


def test_redelivered_update_writes_nothing_twice(session: Session) -> None:
    _seed(session)
    chat = Chat(session, "1002")
    first = chat.send(Event("command", text="start"), base="telegram:update:77")
    rows = _count(session, OutboxMessage)
    again = chat.send(Event("command", text="start"), base="telegram:update:77")
    assert first and again == []
    assert _count(session, OutboxMessage) == rows
    assert _count(session, ChatIdentity) == 1


def test_no_consent_stores_nothing_personal(session: Session) -> None:
    _seed(session)
    chat = Chat(session, "1003")
    chat.send(Event("command", text="start"))
    chat.press("Chủ hộ gia đình")
    chat.text("gia loc")
    chat.press("Gia Lộc – Hải Phòng")
    chat.press("Thôn Đông")
    chat.text("Trần Văn Bình")
    chat.text("3")
    chat.text("0987.654.321")
    chat.press("Không đồng ý")
    assert "không lưu" in chat.said()
    assert _count(session, Person) == 0 and _count(session, Household) == 0
    conv = session.exec(select(Conversation)).one()
    assert "Bình" not in str(conv.state) and "987" not in str(conv.state)


def test_leader_questions_a_family_and_the_family_gets_a_message(session: Session) -> None:
    village, _family, leader = _family_and_leader(session)
    assert "chờ xã xác nhận" in leader.said()
    grant = session.exec(select(RoleGrant).where(RoleGrant.role == "village_leader")).one()
    assert grant.status == "pending" and grant.village_id == village.id
    grant.status = "granted"
    session.add(grant)
    household = session.exec(select(Household)).one()
    session.add(Assessment(commune_code=10999, village_id=village.id, subject_type="household",
                           subject_id=household.id or 0, title="gia_dinh", year=2026, status="submitted",
                           answers={"c1_1": True}, total=10))
    session.commit()
    leader.text("/batdau")
    leader.press("Các hộ trong thôn")
    assert "Lê Thị Hoa — đã gửi" in leader.said()
    leader.press("1. Lê Thị Hoa")
    leader.press("Hỏi lại")
    leader.text("Xin gửi ảnh tủ sách rõ hơn")
    assert "Em đã gửi câu hỏi" in leader.said()
    to_family = session.exec(select(OutboxMessage).where(OutboxMessage.chat_id == "2001")).all()
    assert "Xin gửi ảnh tủ sách rõ hơn" in to_family[-1].payload["text"]
    assert session.exec(select(Assessment)).one().status == "questioned"


def test_new_village_is_proposed_pending(session: Session) -> None:
    _seed(session)
    chat = Chat(session, "3001")
    chat.send(Event("command", text="start"))
    chat.press("Chủ hộ gia đình")
    chat.text("Gia Lộc")
    chat.press("Gia Lộc – Hải Phòng")
    chat.press("Thôn khác")
    chat.text("Thôn Bắc")
    chat.text("Đỗ Văn Em")
    chat.text("ba")
    chat.press("Bỏ qua")
    chat.text("dong y")
    village = session.exec(select(Village).where(Village.name == "Thôn Bắc")).one()
    person = session.exec(select(Person)).one()
    assert village.status == "pending" and village.proposed_by == person.id
    assert person.village_id == village.id
    assert session.exec(select(Household)).one().members == 3


def test_unit_representative_signs_up_and_answers_don_vi(session: Session) -> None:
    _seed(session)
    chat = Chat(session, "4001")
    chat.send(Event("command", text="start"))
    chat.press("Cơ quan/Trường học")
    chat.text("gia loc")
    chat.press("Gia Lộc – Hải Phòng")
    chat.text("Đào Thị Mai")
    chat.text("Trường Tiểu học Gia Lộc")
    chat.press("Trường học")
    chat.text("32")
    chat.press("Bỏ qua")
    chat.press("Đồng ý")
    person = session.exec(select(Person)).one()
    unit = session.exec(select(Unit)).one()
    assert (unit.name, unit.kind, unit.staff, unit.rep_person_id, unit.commune_code) == (
        "Trường Tiểu học Gia Lộc", "school", 32, person.id, 10999)
    grant = session.exec(select(RoleGrant)).one()
    assert (grant.role, grant.status, grant.village_id) == ("unit_rep", "granted", None)
    chat.press("Đăng ký")
    reg = session.exec(select(Registration)).one()
    assert (reg.subject_type, reg.subject_id, reg.title) == ("unit", unit.id, "don_vi")
    chat.press("Tự đánh giá")
    chat.text("co")
    chat.press("Bỏ qua")
    chat.text("co")
    chat.text("khong")
    assert "ví dụ: 22/32" in chat.said()
    chat.text("30/32")
    assessment = session.exec(select(Assessment)).one()
    assert (assessment.subject_type, assessment.village_id) == ("unit", None)
    assert assessment.answers == {"u1_1": True, "u1_2": True, "u1_3": False, "u2_1": 93.8}
    chat.text("/trangthai")
    assert "Đơn vị học tập 2026: đang làm, đã trả lời 4/10 câu" in chat.said()


def test_leader_note_is_stored_and_shown_to_the_family(session: Session) -> None:
    village = _seed(session)
    family = Chat(session, "5001")
    _signup(family, "Lê Thị Hoa")
    leader_person = Person(name="Phạm Văn Cường", commune_code=10999, village_id=village.id, consent_at=NOW)
    session.add(leader_person)
    session.flush()
    session.add(RoleGrant(person_id=leader_person.id or 0, role="village_leader", status="granted",
                          commune_code=10999, village_id=village.id))
    session.add(ChatIdentity(channel="telegram", user_id="5002", chat_id="5002", person_id=leader_person.id))
    household = session.exec(select(Household)).one()
    session.add(Assessment(commune_code=10999, village_id=village.id, subject_type="household",
                           subject_id=household.id or 0, title="gia_dinh", year=2026, status="submitted",
                           answers={"c1_1": True}, total=10))
    session.commit()
    leader = Chat(session, "5002")
    leader.text("/batdau")
    leader.press("Các hộ trong thôn")
    leader.press("1. Lê Thị Hoa")
    leader.press("Hỏi lại")
    leader.text("Xin gửi ảnh tủ sách rõ hơn")
    row = session.exec(select(Assessment)).one()
    assert (row.status, row.leader_note, row.leader_note_by) == ("questioned", "Xin gửi ảnh tủ sách rõ hơn",
                                                                  leader_person.id)
    assert row.leader_note_at is not None
    family.text("/trangthai")
    assert "trưởng thôn hỏi lại \"Xin gửi ảnh tủ sách rõ hơn\"" in family.said()
    family.text("/bosung")
    assert "⚠️ Trưởng thôn hỏi lại: \"Xin gửi ảnh tủ sách rõ hơn\"" in family.said()


def test_reminder_buttons_mid_assessment_keep_answers_and_the_question(session: Session) -> None:
    _seed(session)
    chat = Chat(session, "6001")
    _signup(chat)
    chat.press("Đăng ký")
    chat.press("Tự đánh giá")
    chat.text("co")
    assert "Câu 2/10" in chat.said()
    chat.send(Event("button", value="go:later"))
    assert "Dạ, em sẽ nhắc lại sau. Câu trả lời đã lưu được giữ nguyên." in chat.said()
    assert "Câu 2/10" in chat.said()
    conv = session.exec(select(Conversation)).one()
    assert conv.state["step"] == "assess"
    chat.send(Event("button", value="go:assess:cong_dan"))
    assert "Câu 1/10" in chat.said()
    reg = session.exec(select(Registration).where(Registration.title == "cong_dan")).one()
    person = session.exec(select(Person)).one()
    assert (reg.subject_type, reg.subject_id) == ("person", person.id)
    chat.send(Event("button", value="cmd:trangthai"))
    assert "Gia đình học tập 2026: đang làm, đã trả lời 1/10 câu" in chat.said()
    chat.text("/batdau")
    assert [b.label for b in chat.last[-1].buttons][0] == "Làm tiếp"
    assert session.exec(select(Assessment).where(Assessment.title == "gia_dinh")).one().answers == {"c1_1": True}


def test_returned_file_reopens_from_the_decision_button(session: Session) -> None:
    _seed(session)
    chat = Chat(session, "7001")
    _signup(chat)
    household = session.exec(select(Household)).one()
    row = Assessment(commune_code=10999, subject_type="household", subject_id=household.id or 0, title="gia_dinh",
                     year=2026, status="returned", answers={"c1_1": True}, total=10)
    session.add(row)
    session.flush()
    session.add(ReviewDecision(assessment_id=row.id or 0, decision="return", reason="Thiếu ảnh tủ sách."))
    session.commit()
    chat.send(Event("button", value="cmd:bosung"))
    assert "⚠️ Hội Khuyến học xã cần bổ sung: \"Thiếu ảnh tủ sách.\"" in chat.said()
    assert session.exec(select(Conversation)).one().state["step"] == "summary"


def test_officer_gets_a_one_time_sign_in_link_in_chat(session: Session) -> None:
    from types import SimpleNamespace

    from webhook import admin, auth

    village = _seed(session)
    officer, _ = admin.add_officer(session, commune_code=village.commune_code, name="Cán bộ A",
                                   username="canboa", phone="0912 345 678", password="mat-khau-dai")
    person = Person(name="Cán bộ A", phone="+84912345678", commune_code=village.commune_code, consent_at=NOW)
    session.add(person)
    session.flush()
    session.add(RoleGrant(person_id=person.id, role="officer", status="granted", commune_code=village.commune_code))
    session.add(ChatIdentity(channel="telegram", user_id="o1", chat_id="o1", person_id=person.id))
    session.commit()
    settings = SimpleNamespace(public_base_url="https://xa.example")

    out = process_event(session, channel="telegram", chat_id="o1", event=Event("command", text="thongke"),
                        now=NOW, settings=settings, idempotency_base="telegram:o1:1")
    session.commit()
    assert any("https://xa.example/review" in s.text for s in out)
    rows = session.exec(select(OutboxMessage).where(OutboxMessage.chat_id == "o1")).all()
    links = [r.payload["text"] for r in rows if "/review/login/" in r.payload["text"]]
    assert len(links) == 1
    token = links[0].rsplit("/review/login/", 1)[1]
    assert session.get(type(officer), officer.id).person_id == person.id  # linked by phone
    assert auth.consume_login_token(session, token, NOW).id == officer.id
    assert auth.consume_login_token(session, token, NOW) is None  # once only


def test_person_without_web_account_gets_no_sign_in_link(session: Session) -> None:
    from types import SimpleNamespace

    village = _seed(session)
    person = Person(name="Cán bộ B", phone="+84987654321", commune_code=village.commune_code, consent_at=NOW)
    session.add(person)
    session.flush()
    session.add(RoleGrant(person_id=person.id, role="officer", status="granted", commune_code=village.commune_code))
    session.add(ChatIdentity(channel="telegram", user_id="o2", chat_id="o2", person_id=person.id))
    session.commit()
    process_event(session, channel="telegram", chat_id="o2", event=Event("command", text="thongke"), now=NOW,
                  settings=SimpleNamespace(public_base_url="https://xa.example"), idempotency_base="telegram:o2:1")
    session.commit()
    texts = [r.payload["text"] for r in session.exec(select(OutboxMessage)).all()]
    assert any("https://xa.example/review" in x for x in texts)
    assert not any("/review/login/" in x for x in texts)


def test_village_invite_link_is_a_telegram_deep_link_when_the_bot_username_is_known(session: Session) -> None:
    from types import SimpleNamespace

    from models.tables import ChannelCredential

    village = _seed(session)
    person = Person(name="Trưởng thôn", commune_code=village.commune_code, village_id=village.id, consent_at=NOW)
    session.add(person)
    session.flush()
    session.add(RoleGrant(person_id=person.id, role="village_leader", status="granted",
                          commune_code=village.commune_code, village_id=village.id))
    session.add(ChatIdentity(channel="telegram", user_id="l1", chat_id="l1", person_id=person.id))
    session.add(ChannelCredential(channel="telegram", data={"username": "hoctap_gialoc_bot"}))
    session.commit()
    out = process_event(session, channel="telegram", chat_id="l1", event=Event("button", value="go:invite"),
                        now=NOW, settings=SimpleNamespace(public_base_url=""), idempotency_base="telegram:l1:1")
    text = "\n".join(s.text for s in out)
    assert f"https://t.me/hoctap_gialoc_bot?start=v_{village.invite_code.removeprefix('v_')}" in text


def test_batch_load_reads_what_the_single_load_reads(session: Session) -> None:
    """bot.uow.load_many (the inbox's one statement per batch on PostgreSQL) gives each chat what _load gives
    it: identity, conversation, person with roles and households, "already processed"."""
    import pytest

    from bot.uow import _load, load_many

    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("load_many is PostgreSQL's (unnest of arrays)")
    village, _family, leader = _family_and_leader(session)
    grant = session.exec(select(RoleGrant).where(RoleGrant.role == "village_leader")).one()
    assert grant.village_id == village.id
    session.add(RoleGrant(person_id=grant.person_id, role="family", status="granted", commune_code=10999,
                          village_id=village.id))
    session.commit()
    keys = [("telegram", "2001", "telegram:2001:new"), ("telegram", "2002", "telegram:2002:1"),
            ("telegram", "9999", "telegram:9999:1"), ("telegram", "2001", "telegram:2001:1")]
    many = load_many(session, keys)
    assert sorted(many) == [("telegram", "2001"), ("telegram", "2002")]  # no identity for 9999

    def fields(loaded: Any) -> tuple[Any, ...]:
        i = loaded.identity
        return ((i.id, i.channel, i.user_id, i.chat_id, i.person_id), loaded.conversation_id, loaded.state,
                loaded.preload, loaded.unreachable, loaded.processed)

    for channel, user_id, base in keys[:2]:
        single = _load(session, channel=channel, user_id=user_id, base=base)
        assert single is not None
        assert fields(many[(channel, user_id)]) == fields(single)
    assert len(many[("telegram", "2002")].preload.me.roles) == 2  # both grants: one row per role, grouped
    assert many[("telegram", "2001")].preload.me.household_id is not None
    assert many[("telegram", "2002")].processed and not many[("telegram", "2001")].processed
    # a chat met twice is loaded for its first key: 2001 with the new base, not the processed one
    assert _load(session, channel="telegram", user_id="2001", base="telegram:2001:1").processed  # type: ignore[union-attr]


def test_batch_load_reads_ahead_the_assessment_being_answered(session: Session) -> None:
    """On PostgreSQL load_many also reads, in one more statement for the whole batch, the assessment each chat
    is answering: the same answers, photo counts, status and row DbView would read in the step. Not for a
    returned file (its note takes another read) nor for one that two chats of the batch answer."""
    import dataclasses

    import pytest

    from bot.uow import _load, load_many
    from bot.view_db import DbView
    from flows.effects import Subject

    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("load_many is PostgreSQL's (unnest of arrays)")
    _seed(session)
    chat = Chat(session, "3001")
    _signup(chat)
    chat.press("Đăng ký")
    chat.press("Tự đánh giá")
    chat.text("co")
    chat.text("có")
    assessment = session.exec(select(Assessment)).one()
    session.add(Evidence(assessment_id=assessment.id, criterion="c1", sha256="a" * 64))
    session.add(Evidence(assessment_id=assessment.id, criterion="c1", sha256="b" * 64))
    session.commit()
    key = (assessment.subject_type, assessment.subject_id, assessment.title, assessment.year)

    def fresh() -> tuple[Any, Any]:
        single = _load(session, channel="telegram", user_id="3001", base="telegram:3001:x")
        assert single is not None and single.state["data"]["a"]["title"] == "gia_dinh"
        view = DbView(session, single.identity, preload=single.preload)
        info = view.assessment(Subject(key[0], key[1]), key[2], key[3])
        return info, view.assessment_rows[key]

    loaded = load_many(session, [("telegram", "3001", "telegram:3001:x")])[("telegram", "3001")]
    info, row = loaded.preload.assessments[key]
    assert (info, dataclasses.astuple(row)) == (fresh()[0], dataclasses.astuple(fresh()[1]))
    assert info.evidence == {"c1": 2} and len(info.answers) == 2 and info.status == "draft"
    ahead = DbView(session, loaded.identity, preload=loaded.preload)  # the step's view takes it, no read
    assert ahead.assessment(Subject(key[0], key[1]), key[2], key[3]) is info and ahead.assessment_rows[key] is row
    # the rest of the load is as before
    single = _load(session, channel="telegram", user_id="3001", base="telegram:3001:x")
    assert dataclasses.replace(loaded.preload, assessments={}) == single.preload  # type: ignore[union-attr]

    # a second chat answering the same assessment in the same batch: read in each step, not ahead
    other = Chat(session, "3002")
    other.send(Event("command", text="start"))
    identity = session.exec(select(ChatIdentity).where(ChatIdentity.user_id == "3002")).one()
    conversation = session.exec(select(Conversation).where(Conversation.identity_id == identity.id)).one()
    conversation.state = dict(single.state)  # type: ignore[union-attr]
    session.add(conversation)
    session.commit()
    both = load_many(session, [("telegram", "3001", "telegram:3001:y"), ("telegram", "3002", "telegram:3002:y")])
    assert [both[k].preload.assessments for k in sorted(both)] == [{}, {}]

    # a returned file: left to DbView, which also reads the commune's reason
    assessment.status = "returned"
    session.add(assessment)
    session.commit()
    again = load_many(session, [("telegram", "3001", "telegram:3001:z")])[("telegram", "3001")]
    assert again.preload.assessments == {}


def test_staged_answers_equal_answers_saved_one_by_one(session: Session) -> None:
    """On PostgreSQL the inbox stages a batch's answers (bot.uow.Deferred) and writes them in one UPDATE,
    before anything reads an assessment again. Two chats answering one assessment in one batch (here a
    second phone on the same question) leave the same row as the same steps saved one by one."""
    import pytest

    from bot.uow import Deferred, load_many

    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("answers are staged on PostgreSQL only")
    _seed(session)
    results = []
    for n, name, deferred in ((1, "Trần Văn Một", None), (2, "Trần Văn Hai", Deferred())):
        first, second = Chat(session, f"40{n}1"), Chat(session, f"40{n}2")
        _signup(first, name, f"0912 345 67{n}")
        first.press("Đăng ký")
        first.press("Tự đánh giá")
        first.text("co")
        second.send(Event("command", text="start"))
        ids = {c.chat_id: session.exec(select(ChatIdentity).where(ChatIdentity.user_id == c.chat_id)).one().id
               for c in (first, second)}
        states = {i: session.exec(select(Conversation).where(Conversation.identity_id == i)).one() for i in ids.values()}
        states[ids[second.chat_id]].state = dict(states[ids[first.chat_id]].state)
        session.add(states[ids[second.chat_id]])
        session.commit()
        said = []
        # the first chat's step as the inbox runs it on PostgreSQL: read ahead, its answer staged
        ahead = load_many(session, [("telegram", first.chat_id, f"batch:{first.chat_id}")]) if deferred else {}
        for chat, text in ((first, "có"), (second, "không")):  # one batch: no commit in between
            said.append(process_event(session, channel="telegram", chat_id=chat.chat_id, event=Event("text", text=text),
                                      now=NOW, idempotency_base=f"batch:{chat.chat_id}", deferred=deferred,
                                      preloaded=ahead.get(("telegram", chat.chat_id))))
            if deferred is not None and chat is first:
                assert len(deferred.answers) == 1  # staged, not written
        if deferred is not None:
            # the second step's read wrote the first's answer; its own waits for the batch's end
            [(assessment_id, staged)] = deferred.answers.items()
            criterion = list(results[0][0])[-1]
            assert staged["delta"] == {criterion: results[0][0][criterion]}
            written = session.connection().execute(
                select(Assessment.answers).where(Assessment.id == assessment_id)).scalar_one()
            assert written[criterion] != staged["delta"][criterion]  # the first chat's answer, in the row
            deferred.write(session)
        session.commit()
        person = session.exec(select(Person).where(Person.name == name)).one()
        household = session.exec(select(Household).where(Household.head_person_id == person.id)).one()
        row = session.exec(select(Assessment).where(Assessment.subject_id == household.id)).one()
        session.refresh(row)
        results.append((row.answers, row.answered_by, row.proxy, row.proxy_by, row.status,
                        [[s.text for s in out] for out in said]))
    assert results[0] == results[1]
    assert len(results[0][0]) == 2  # question 1 by the first chat, question 2 by both: the second's value


def test_bulk_statements_write_what_one_by_one_would(session: Session) -> None:
    """bot.uow.bulk_insert / bulk_update (PostgreSQL: one statement through unnest for a batch's rows): rows
    in order, JSON kept, a conflicting key skipped, NULLs kept; one row named twice is updated in order."""
    import pytest

    from bot.uow import bulk_insert, bulk_update

    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("PostgreSQL's arrays")
    columns = ("idempotency_key", "channel", "chat_id", "person_id", "payload", "priority", "status", "campaign",
               "attempts", "not_before", "created_at")
    rows = [{"idempotency_key": f"k{n}", "channel": "telegram", "chat_id": "1", "person_id": None,
             "payload": {"text": f"Câu {n} ✓", "buttons": [{"label": "Có", "value": "yes"}]}, "priority": 0,
             "status": "queued", "campaign": None, "attempts": 0, "not_before": NOW, "created_at": NOW}
            for n in (3, 1, 2)]
    bulk_insert(session, OutboxMessage.__table__, rows[:1], columns, conflict="idempotency_key")  # type: ignore[attr-defined]
    bulk_insert(session, OutboxMessage.__table__, rows, columns, conflict="idempotency_key")  # type: ignore[attr-defined]
    session.commit()
    stored = session.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all()  # type: ignore[arg-type]
    assert [(m.idempotency_key, m.payload, m.person_id, m.not_before) for m in stored] == [
        (r["idempotency_key"], r["payload"], None, NOW) for r in rows]

    ensure_commune(session, 10999)
    identity = ChatIdentity(channel="telegram", user_id="77", chat_id="77")
    session.add(identity)
    session.commit()
    conversation = Conversation(identity_id=identity.id, state={})
    session.add(conversation)
    session.commit()
    states = [{"b_id": conversation.id, "state": {"step": s}, "now": NOW} for s in ("a", "b")]
    bulk_update(session, Conversation.__table__, states, key="b_id", columns=("state", "updated_at"),  # type: ignore[attr-defined]
                names={"updated_at": "now"})
    session.commit()
    session.refresh(conversation)
    assert conversation.state == {"step": "b"} and conversation.updated_at == NOW
