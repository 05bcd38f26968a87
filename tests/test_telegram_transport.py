"""TelegramTransport's lean sendMessage path against the fake Bot API over real HTTP (127.0.0.1).

Every Bot API answer the outbox cares about is mapped to its error class; the body it posts carries the
same parameters PTB's Bot.send_message would (reply_markup equal to PTB's own to_dict()); long texts are
split; the token and the text never reach a log record or an error; the session closes with the Bot.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import JSONResponse, Response
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, KeyboardButton, ReplyKeyboardMarkup

from bot.outbox import PermanentError, RetryAfterError, TransientError, UnreachableError
from bot.telegram import MAX_TEXT, TelegramChannel, TelegramTransport, make_bot, render
from flows.i18n import t
from flows.types import Button, Say
from models.settings import Settings, get_settings
from tests.fakes.telegram_server import Call, FakeTelegram
from tests.test_privacy_logs import Capture

SECRET_TEXT = "Nguyễn Văn An, thôn Đông 0912 345 678"


class ScriptedFake(FakeTelegram):
    """FakeTelegram that answers chosen chats with a chosen Bot API error, or slowly."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, tuple[int, dict[str, Any]]] = {}
        self.slow: dict[str, float] = {}

    def answer(self, chat_id: int, code: int, description: str, **parameters: Any) -> None:
        body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
        if parameters:
            body["parameters"] = parameters
        self.answers[str(chat_id)] = (code, body)

    async def _m_sendMessage(self, call: Call) -> Response:
        chat_id = str(call.params.get("chat_id"))
        if chat_id in self.slow:
            await asyncio.sleep(self.slow[chat_id])
        if chat_id in self.answers:
            code, body = self.answers[chat_id]
            return JSONResponse(body, status_code=code)
        return await super()._m_sendMessage(call)


@pytest.fixture
def fake() -> Iterator[ScriptedFake]:
    with ScriptedFake().running() as server:
        yield server


def settings_for(tmp_path: Path, base_url: str, token: str) -> Settings:
    return get_settings(
        data_dir=tmp_path, telegram_bot_token=token, telegram_api_base_url=base_url, public_base_url="",
        demo=False,
    )


def run_with_transport(
    settings: Settings, body: Callable[[TelegramTransport], Awaitable[Any]], **options: Any
) -> Any:
    async def main() -> Any:
        bot = make_bot(settings)
        transport = TelegramTransport(bot, **options)
        try:
            return await body(transport)
        finally:
            await transport.aclose()

    return asyncio.run(main())


def send(settings: Settings, chat_id: int, say: Say, **options: Any) -> str | None:
    return run_with_transport(settings, lambda tr: tr.send(str(chat_id), say.to_json()), **options)


def failure(settings: Settings, chat_id: int, say: Say | None = None, **options: Any) -> BaseException:
    with pytest.raises(Exception) as info:  # the tests assert the class
        send(settings, chat_id, say or Say("Xin chào"), **options)
    return info.value


# --- success ----------------------------------------------------------------------------------------------


def test_the_message_id_of_the_answer_is_returned(fake: ScriptedFake, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, fake.base_url, fake.token)
    message_id = send(settings, 501, Say("Xin chào"))
    [sent] = fake.sent_messages(501)
    assert message_id == str(sent["message_id"])
    assert fake.sent_texts(501) == ["Xin chào"]
    assert fake.sent(501)[0]["chat_id"] == 501  # a number, as PTB sends int(chat_id)


def test_inline_keyboard_is_what_ptb_would_send(fake: ScriptedFake, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, fake.base_url, fake.token)
    say = Say("Gia đình có tủ sách không?", (Button("Có", "yes"), Button("Không", "no")))
    long_value = "answer:" + "x" * 80  # over 64 bytes: sent as a hash
    tall = Say("Chọn một", (Button("Một lựa chọn dài", "a"), Button("Khác", long_value)))
    send(settings, 502, say)
    send(settings, 502, tall)
    first, second = fake.sent(502)
    # PTB's own serialisation of the same keyboards, built here from scratch (not render()'s cached objects)
    expected = InlineKeyboardMarkup([[InlineKeyboardButton("Có", callback_data="yes"),
                                      InlineKeyboardButton("Không", callback_data="no")]]).to_dict()
    assert first["reply_markup"] == expected
    assert second["reply_markup"] == render(tall)[-1]["reply_markup"].to_dict()
    assert second["reply_markup"]["inline_keyboard"][0] == [{"text": "Một lựa chọn dài", "callback_data": "a"}]
    hashed = second["reply_markup"]["inline_keyboard"][1][0]["callback_data"]
    assert hashed.startswith("#") and len(hashed.encode()) <= 64
    # the fake echoes an inline keyboard it accepted in the Message it returns
    assert fake.sent_messages(502)[0]["reply_markup"] == expected


def test_share_phone_keyboard_is_what_ptb_would_send(fake: ScriptedFake, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, fake.base_url, fake.token)
    send(settings, 503, Say("Cho xin số điện thoại", (Button("Bỏ qua", "skip"),), request_contact=True))
    [params] = fake.sent(503)
    expected = ReplyKeyboardMarkup(
        [[KeyboardButton(t("channel.share_phone"), request_contact=True)], [KeyboardButton("Bỏ qua")]],
        one_time_keyboard=True, resize_keyboard=True,
    ).to_dict()
    assert params["reply_markup"] == expected


def test_long_texts_go_out_in_parts_with_the_buttons_on_the_last(fake: ScriptedFake, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, fake.base_url, fake.token)
    paragraph = "Hội Khuyến học xã ghi nhận gia đình học tập 📚. " * 40
    text = "\n\n".join([paragraph] * 6)  # ~12,000 characters, emoji counted twice in UTF-16
    message_id = send(settings, 504, Say(text, (Button("Xong", "done"),)))
    sent = fake.sent(504)
    assert len(sent) >= 3
    assert all(len(p["text"].encode("utf-16-le")) // 2 <= MAX_TEXT for p in sent)
    assert "".join(p["text"] for p in sent).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(
        " ", "")
    assert [("reply_markup" in p) for p in sent] == [False] * (len(sent) - 1) + [True]
    assert message_id == str(fake.sent_messages(504)[-1]["message_id"])


# --- errors -----------------------------------------------------------------------------------------------


def test_429_is_retry_after_with_the_seconds_asked(fake: ScriptedFake, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, fake.base_url, fake.token)
    fake.rate_limit_next(7)
    error = failure(settings, 601)
    assert isinstance(error, RetryAfterError)
    assert error.retry_after == 7.0
    fake.answer(602, 429, "Too Many Requests: retry after 2.5", retry_after=2.5)
    error = failure(settings, 602)
    assert isinstance(error, RetryAfterError) and error.retry_after == 2.5


def test_403_is_unreachable(fake: ScriptedFake, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, fake.base_url, fake.token)
    fake.forbid(603)
    error = failure(settings, 603)
    assert isinstance(error, UnreachableError)
    assert "blocked" in str(error)


@pytest.mark.parametrize("description", ["Bad Request: chat not found", "Bad Request: user is deactivated"])
def test_400_chat_gone_is_unreachable(fake: ScriptedFake, tmp_path: Path, description: str) -> None:
    settings = settings_for(tmp_path, fake.base_url, fake.token)
    fake.answer(604, 400, description)
    error = failure(settings, 604)
    assert isinstance(error, UnreachableError)
    assert str(error) == description


def test_other_400_is_permanent(fake: ScriptedFake, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, fake.base_url, fake.token)
    fake.answer(605, 400, "Bad Request: can't parse entities: unsupported start tag")
    error = failure(settings, 605)
    assert isinstance(error, PermanentError)
    assert "can't parse entities" in str(error)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_transient(fake: ScriptedFake, tmp_path: Path, status: int) -> None:
    settings = settings_for(tmp_path, fake.base_url, fake.token)
    fake.fail_next("sendMessage", 1, status)
    error = failure(settings, 606)
    assert isinstance(error, TransientError)
    assert str(status) in str(error)
    assert send(settings, 606, Say("lần nữa")) is not None  # the next call goes through


def test_a_wrong_token_or_base_url_is_transient(fake: ScriptedFake, tmp_path: Path) -> None:
    wrong = settings_for(tmp_path, fake.base_url, "999:WRONG-token")
    error = failure(wrong, 607)
    assert isinstance(error, TransientError) and str(error) == "InvalidToken"  # 401
    elsewhere = settings_for(tmp_path, fake.base_url + "/nowhere", fake.token)
    error = failure(elsewhere, 607)
    assert isinstance(error, TransientError) and str(error) == "InvalidToken"  # 404


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    settings = settings_for(tmp_path, f"http://127.0.0.1:{port}", "123:refused")
    error = failure(settings, 608, connect_timeout=2.0)
    assert isinstance(error, TransientError)
    assert "127.0.0.1" not in str(error) and "refused" not in str(error)  # class name only


def test_a_slow_answer_times_out_as_transient(fake: ScriptedFake, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, fake.base_url, fake.token)
    fake.slow["609"] = 1.5
    error = failure(settings, 609, read_timeout=0.3)
    assert isinstance(error, TransientError)
    assert "Timeout" in str(error)


def test_an_answer_that_is_not_the_bot_api_is_transient(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route

    from tests.livehttp import live_server

    async def html(_request: Any) -> Response:
        return Response("<html>proxy error</html>", status_code=502, media_type="text/html")

    app = Starlette(routes=[Route("/bot{token}/{method}", html, methods=["POST"])])
    with live_server(app) as url:
        error = failure(settings_for(tmp_path, url, "123:proxy"), 610)
    assert isinstance(error, TransientError) and "502" in str(error)


# --- privacy and lifecycle --------------------------------------------------------------------------------


def test_neither_the_token_nor_the_text_reaches_a_log_record_or_an_error(
    fake: ScriptedFake, tmp_path: Path
) -> None:
    root = logging.getLogger()
    capture = Capture()
    old = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    errors: list[BaseException] = []
    try:
        settings = settings_for(tmp_path, fake.base_url, fake.token)
        say = Say(SECRET_TEXT, (Button("Có", "yes"),))
        fake.forbid(701)
        fake.answer(702, 400, "Bad Request: chat not found")
        fake.answer(703, 400, "Bad Request: message is too long")
        fake.answer(704, 429, "Too Many Requests: retry after 1", retry_after=1)
        fake.fail_next("sendMessage", 1, 500)
        fake.slow["705"] = 1.0

        async def body(transport: TelegramTransport) -> None:
            for chat_id in (700, 700, 704, 701, 702, 703, 705):
                try:
                    await transport.send(str(chat_id), say.to_json())
                except Exception as exc:  # noqa: BLE001 - collected for the scan below
                    errors.append(exc)
            logging.getLogger("hoctap.test").info("sent %s", "done")

        run_with_transport(settings, body, read_timeout=0.3)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        refused = settings_for(tmp_path, f"http://127.0.0.1:{port}", fake.token)
        try:
            send(refused, 706, say)
        except TransientError as exc:
            errors.append(exc)
    finally:
        root.removeHandler(capture)
        root.setLevel(old)
    assert len(errors) == 7  # 500, 429, 403, 400 × 2, timeout, refused
    assert fake.sent_texts(700) == [SECRET_TEXT]
    texts = capture.lines + ["".join(traceback.format_exception(e)) for e in errors]
    needles = [fake.token, fake.token.split(":", 1)[1], SECRET_TEXT, "0912 345 678"]
    leaked = [line for line in texts for needle in needles if needle in line]
    assert leaked == []
    assert any("hoctap.test" in line for line in capture.lines), "the capture saw the run"


def test_the_session_closes_with_the_bot_and_with_the_channel(
    fake: ScriptedFake, tmp_path: Path, engine: Any
) -> None:
    settings = settings_for(tmp_path, fake.base_url, fake.token)

    async def with_bot() -> None:
        bot = make_bot(settings)
        await bot.initialize()
        transport = TelegramTransport(bot)
        assert transport.closed
        await transport.send("801", Say("một").to_json())
        assert not transport.closed
        await bot.shutdown()  # as tests and scripts that only know the Bot do
        assert transport.closed
        await transport.send("801", Say("hai").to_json())  # opens a new session when used again
        await transport.aclose()
        assert transport.closed

    async def with_channel() -> None:
        channel = TelegramChannel(settings=settings, engine=engine)
        await channel.initialize()
        await channel.transport.send("802", Say("ba").to_json())
        assert not channel.transport.closed
        await channel.shutdown()
        assert channel.transport.closed

    asyncio.run(with_bot())
    asyncio.run(with_channel())
    assert fake.sent_texts(801) == ["một", "hai"]
    assert fake.sent_texts(802) == ["ba"]


# --- answerCallbackQuery ----------------------------------------------------------------------------------


def test_a_button_press_is_answered_on_the_lean_path_and_a_failure_is_only_reported(
    fake: ScriptedFake, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, fake.base_url, fake.token)
    assert run_with_transport(settings, lambda tr: tr.answer_callback("cq7")) is True
    assert [c.params["callback_query_id"] for c in fake.calls_of("answerCallbackQuery")] == ["cq7"]
    fake.fail_next("answerCallbackQuery", 1, 400)
    assert run_with_transport(settings, lambda tr: tr.answer_callback("cq8")) is False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nowhere = settings_for(tmp_path, f"http://127.0.0.1:{port}", "123:refused")
    assert run_with_transport(nowhere, lambda tr: tr.answer_callback("cq9"), connect_timeout=2.0) is False
