"""Bad input to every webhook: malformed, oversized, truncated, wrongly typed and unknown JSON.

Properties, for Telegram, Zalo Bot and Zalo OA alike (hypothesis, bounded examples):
- never a 5xx (and so never an unhandled exception in the route);
- a refused request (any status but 200) stores nothing in the inbox;
- what was accepted can be processed by the inbox worker without it dying: every row ends done, ignored or
  failed (counted), never stuck, and the worker keeps running.
And access: every webhook refuses a wrong or missing secret or signature, storing nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot import zalo_oa
from bot.inbox import InboxWorker
from models.settings import Settings, get_settings
from models.tables import InboxUpdate
from tests.fakes import telegram_server as tg
from tests.fakes.telegram_server import FakeTelegram
from webhook.app import create_app

TG_SECRET = "fuzz-telegram-secret"
ZALO_SECRET = "fuzz-zalo-secret"
OA_APP = "4321"
OA_KEY = "fuzz-oa-key"
EXAMPLES = 120  # per property; the figures in docs/reliability.md come from these settings
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
settings_small = settings(FUZZ, max_examples=60)

# --- strategies -------------------------------------------------------------------------------------------

def _pick(values: list[Any]) -> st.SearchStrategy[Any]:
    """sampled_from without the values in the strategy's repr (some are megabytes long)."""
    return st.integers(min_value=0, max_value=len(values) - 1).map(values.__getitem__)


texts = st.one_of(
    st.text(max_size=40),
    _pick(["", "\x00", "\u202e\u200f", "🎉" * 10, "a" * 5000, "/start", "/start v_x", "1.000"]),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False), texts
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)


def _valid_updates(update_id: int) -> list[dict[str, Any]]:
    return [
        tg.text_update(update_id, 4242, "xin chào"),
        tg.callback_update(update_id, 4242, "role:household"),
        tg.photo_update(update_id, 4242, "nofile"),
        tg.contact_update(update_id, 4242, "0912345678"),
        tg.edited_update(update_id, 4242, "sửa"),
        tg.sticker_update(update_id, 4242),
        tg.text_update(update_id, -100123, "/start", chat_type="group"),
    ]


def _mutate(value: Any, path: list[Any], new: Any) -> Any:
    """Replace (or delete, when ``new`` is the sentinel DELETE) the node at ``path``."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict) and head in value:
        out = dict(value)
        if not rest and new is DELETE:
            del out[head]
        else:
            out[head] = _mutate(value[head], rest, new)
        return out
    return value


DELETE = object()


def _paths(value: Any, prefix: list[Any] | None = None) -> list[list[Any]]:
    prefix = prefix or []
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, [*prefix, key])
    return out


@st.composite
def telegram_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """A real update with one to three of its fields deleted or replaced by any JSON value."""
    update = draw(st.sampled_from(_valid_updates(draw(st.integers(min_value=1, max_value=2**40)))))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = [p for p in _paths(update) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        new = draw(st.one_of(st.just(DELETE), json_values))
        update = _mutate(update, path, new)
    return update


def _raw_bodies(example: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Bodies: the JSON, truncated at any point, wrapped oddly, or raw bytes."""
    encoded = example.map(lambda v: json.dumps(v, ensure_ascii=False).encode())
    return st.one_of(
        encoded,
        st.tuples(encoded, st.integers(min_value=0, max_value=400)).map(lambda t: t[0][: t[1]]),
        st.binary(max_size=300),
        _pick(
            [
                b"",
                b"null",
                b"[]",
                b"[" * 50_000,  # deeper than the parser's recursion limit
                b'{"a":' * 30_000 + b"1" + b"}" * 30_000,
                b'{"update_id": 7, "message": {"text": NaN}}',
                b'{"update_id": 7, "x": 1e999}',
                b'{"update_id": 7, "message": {"text": "\\ud800"}}',
                b'{"update_id": 7, "message": {"message_id": "m1", "text": "\\udc00x"}}',
                b'{"update_id": 1' + b"0" * 5000 + b"}",  # an integer past Python's 4300 digits
                b'{"update_id": 99999999999999999999999999999999, "message": {}}',
                b'{"update_id": "12"}',
                b'{"update_id": 12.5}',
                b'{"update_id": true}',
                b"\xff\xfe\x00",
                '{"update_id": 8, "message": {"text": "xin chào"}}'.encode("utf-16"),
                b'{"event_name": "user_send_text", "message": [1, 2]}',
                b'[{"message": {"message_id": "z1", "text": 5}}, {"result": [{"message": {}}]}]',
            ]
        ),
    )


# --- the app under test ------------------------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    with FakeTelegram().running() as server:
        yield server


def all_webhooks_settings(tmp_path: Path, telegram_base: str) -> Settings:
    return get_settings(
        data_dir=tmp_path,
        telegram_bot_token=tg.TOKEN,
        telegram_api_base_url=telegram_base,
        telegram_webhook_secret=TG_SECRET,
        zalo_bot_token="12345:fuzz-zalo-token",
        zalo_webhook_secret=ZALO_SECRET,
        zalo_api_base_url="http://127.0.0.1:9",
        zalo_oa_app_id=OA_APP,
        zalo_oa_secret_key=OA_KEY,
        zalo_oa_api_base_url="http://127.0.0.1:9",
        zalo_oa_oauth_base_url="http://127.0.0.1:9",
        public_base_url="https://hoctap.example",
        per_chat_interval_seconds=0.0,
    )


def _count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(InboxUpdate)).one())


class Poster:
    """Posts bodies to the app in-process and checks the no-5xx / nothing-stored-when-refused properties."""

    def __init__(self, app: Any, engine: Engine) -> None:
        self.app = app
        self.engine = engine
        self.cases = 0
        self.statuses: dict[int, int] = {}

    def post(self, path: str, body: bytes, headers: dict[str, Any]) -> int:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://hoctap") as client:
                return await client.post(path, content=body, headers=headers)

        before = _count(self.engine)
        status = asyncio.run(go()).status_code
        after = _count(self.engine)
        self.cases += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        assert status < 500, f"{path}: {status} for {body[:200]!r}"
        if status != 200:
            assert after == before, f"{path}: refused with {status} but stored {after - before} rows"
        return status


@pytest.fixture
def poster(engine: Engine, tmp_path: Path) -> Poster:
    settings = all_webhooks_settings(tmp_path, "http://127.0.0.1:9")
    return Poster(create_app(settings, engine=engine, background=False), engine)


def test_telegram_webhook_never_fails_on_bad_json(poster: Poster) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET, "Content-Type": "application/json"}

    @FUZZ
    @given(body=_raw_bodies(st.one_of(telegram_shaped(), json_values)))
    def check(body: bytes) -> None:
        poster.post("/webhooks/telegram", body, headers)

    check()
    # an oversized body is refused before parsing
    assert poster.post("/webhooks/telegram", b'{"update_id": 5, "x": "' + b"a" * 1_100_000 + b'"}', headers) == 413
    assert poster.cases >= EXAMPLES


def test_zalo_bot_webhook_never_fails_on_bad_json(poster: Poster) -> None:
    headers = {"X-Bot-Api-Secret-Token": ZALO_SECRET, "Content-Type": "application/json"}
    zalo_shaped = st.fixed_dictionaries(
        {"event_name": st.one_of(texts, st.just("message.text.received")), "message": json_values}
    ) | st.fixed_dictionaries({"ok": st.booleans(), "result": json_values})

    @FUZZ
    @given(body=_raw_bodies(st.one_of(zalo_shaped, json_values)))
    def check(body: bytes) -> None:
        poster.post("/webhooks/zalo", body, headers)

    check()
    assert poster.post("/webhooks/zalo", b'{"message": "' + b"a" * 1_100_000 + b'"}', headers) == 413


def test_zalo_oa_webhook_never_fails_on_bad_json(poster: Poster) -> None:
    oa_shaped = st.fixed_dictionaries(
        {
            "app_id": st.one_of(st.just(OA_APP), texts),
            "event_name": st.one_of(st.sampled_from(sorted(zalo_oa.USER_EVENTS)), texts),
            "sender": st.one_of(st.fixed_dictionaries({"id": texts}), json_values),
            "timestamp": st.one_of(st.just("1732400000000"), texts),
            "message": json_values,
        }
    )

    @FUZZ
    @given(body=_raw_bodies(st.one_of(oa_shaped, json_values)), sign=st.booleans())
    def check(body: bytes, sign: bool) -> None:
        headers = {"Content-Type": "application/json", zalo_oa.SIGNATURE_HEADER: "mac=" + "0" * 64}
        if sign:  # a valid signature, so the body gets past the check and into the parsing after it
            try:
                stamp = str(json.loads(body).get("timestamp", ""))
            except (ValueError, AttributeError, RecursionError):
                stamp = ""
            headers[zalo_oa.SIGNATURE_HEADER] = "mac=" + zalo_oa.signature(OA_APP, body, stamp, OA_KEY)
        poster.post("/webhooks/zalo-oa", body, headers)

    check()


def test_accepted_garbage_is_processed_without_killing_the_worker(engine: Engine, tmp_path: Path, fake) -> None:
    """Updates that pass the route's checks but are not what Telegram sends: every row ends somewhere."""
    settings = all_webhooks_settings(tmp_path, fake.base_url)
    app = create_app(settings, engine=engine, background=False)
    poster = Poster(app, engine)
    headers = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET, "Content-Type": "application/json"}
    accepted = 0

    @settings_small
    @given(update=telegram_shaped())
    def check(update: dict[str, Any]) -> None:
        nonlocal accepted
        if poster.post("/webhooks/telegram", json.dumps(update).encode(), headers) == 200:
            accepted += 1

    check()

    async def drain() -> None:
        from bot.telegram import CHANNEL, TelegramChannel

        channel = TelegramChannel(settings=settings, engine=engine)
        await channel.initialize()
        try:
            worker = InboxWorker(engine=engine, settings=settings, max_attempts=2, backoff=lambda _: 0.0)
            worker.add_channel(CHANNEL, channel.normalise, ordered_ids=True)
            for _ in range(400):  # bounded: each pass handles or gives up at least one row per chat
                await worker.run_once()
                with Session(engine) as session:
                    if session.exec(select(InboxUpdate).where(InboxUpdate.status == "pending")).first() is None:
                        break
        finally:
            await channel.shutdown()

    asyncio.run(drain())
    with Session(engine) as session:
        statuses = [r.status for r in session.exec(select(InboxUpdate))]
    assert accepted > 0 and len(statuses) <= accepted
    assert set(statuses) <= {"done", "ignored", "failed"}, statuses



def test_every_webhook_refuses_a_wrong_or_missing_secret(poster: Poster) -> None:
    body = json.dumps(tg.text_update(77, 4242, "xin chào")).encode()
    zalo_body = json.dumps(
        {"event_name": "message.text.received", "message": {"message_id": "m77", "text": "hi",
                                                            "chat": {"id": "z1"}, "from": {"id": "z1"}}}
    ).encode()
    oa_body = json.dumps(
        {"app_id": OA_APP, "event_name": "user_send_text", "sender": {"id": "u1"}, "timestamp": "17",
         "message": {"msg_id": "o77", "text": "hi"}}
    ).encode()
    good_sig = zalo_oa.signature(OA_APP, oa_body, "17", OA_KEY)
    cases = {
        "/webhooks/telegram": (body, "X-Telegram-Bot-Api-Secret-Token", TG_SECRET),
        "/webhooks/zalo": (zalo_body, "X-Bot-Api-Secret-Token", ZALO_SECRET),
        "/webhooks/zalo-oa": (oa_body, zalo_oa.SIGNATURE_HEADER, "mac=" + good_sig),
    }

    @FUZZ
    @given(path=st.sampled_from(sorted(cases)), given_secret=st.one_of(st.none(), st.text(max_size=80)))
    def check(path: str, given_secret: str | None) -> None:
        payload, header, good = cases[path]
        if given_secret is not None and given_secret.strip() in (good, good.removeprefix("mac=")):
            return
        headers: dict[str, Any] = {"Content-Type": "application/json"}
        if given_secret is not None:
            try:
                headers[header] = given_secret.encode("latin-1")  # what can travel in an HTTP header
            except UnicodeEncodeError:
                return
        assert poster.post(path, payload, headers) in (400, 401, 403)

    check()
    # a correct secret for another webhook, a signature over another body, a near miss: refused too
    assert poster.post("/webhooks/telegram", body, {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET[:-1]}) == 401
    assert poster.post("/webhooks/telegram", body, {"X-Bot-Api-Secret-Token": TG_SECRET}) == 401
    assert poster.post("/webhooks/zalo", zalo_body, {"X-Telegram-Bot-Api-Secret-Token": ZALO_SECRET}) == 401
    assert poster.post("/webhooks/zalo-oa", oa_body + b" ", {zalo_oa.SIGNATURE_HEADER: "mac=" + good_sig}) == 401
    assert _count(poster.engine) == 0
    # and the right secrets are accepted, so the refusals above are not an accident of the setup
    for path, (payload, header, good) in cases.items():
        assert poster.post(path, payload, {header: good, "Content-Type": "application/json"}) == 200, path
    assert _count(poster.engine) == 3
