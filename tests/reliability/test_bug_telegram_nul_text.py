"""Bug (fixed in bot/telegram.py): a NUL character in a Telegram message killed its processing on PostgreSQL.

PostgreSQL text columns refuse "\\x00": a name typed with a NUL in it (or a first name carrying one) made
the unit of work fail at commit, the inbox retried it five times and gave up: the person's answer was
lost and they got no reply. The Telegram normaliser now drops NUL (and other C0 controls but tab and
newline) from texts, names and shared phone numbers before anything reaches the flows or the database.
Runs on SQLite and, with HOCTAP_TEST_DATABASE_URL, on PostgreSQL (where it failed).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlmodel import Session, select

from models.tables import InboxUpdate, Person
from tests.fakes import telegram_server as tg
from tests.test_telegram_e2e import Driven, Household, tg_settings


def test_nul_in_texts_and_names_is_dropped_not_fatal(engine, tmp_path: Path) -> None:
    with tg.FakeTelegram().running() as fake:
        settings = tg_settings(tmp_path, fake)

        async def story() -> None:
            async with Driven(settings, engine) as app:
                person = Household(fake, 5150, app.post)
                start = tg.text_update(next(person.ids), 5150, "/start v_none")
                start["message"]["from"]["first_name"] = "La\x00n"
                await person.send(start)
                await person.press("Chủ hộ gia đình")
                await person.say("gia\x00 loc")
                await person.press("Gia Lộc – Hải Phòng")
                await person.say("Thôn\x00 Đông")
                await person.say("Nguyễn\x00 Văn An")
                await person.say("4\x00")
                await person.share_phone("8491234\x005678")
                await person.press("Đồng ý")

        asyncio.run(story())
    with Session(engine) as session:
        assert {r.status for r in session.exec(select(InboxUpdate))} == {"done"}
        person = session.exec(select(Person)).one()
        assert person.name == "Nguyễn Văn An"
        assert "\x00" not in (person.phone or "")
