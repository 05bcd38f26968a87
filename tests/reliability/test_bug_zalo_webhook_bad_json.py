"""Bug (found by tests/test_fuzz_webhooks.py, since fixed in webhook/zalo_routes.py and bot/zalo.py; a regression test):
Bodies that are valid-looking JSON give a 500 on the Zalo webhooks (Telegram's was fixed).

- nesting deeper than the parser's recursion limit: json.loads raises RecursionError, which
  webhook/zalo_routes.py ``_json`` does not catch (it catches ValueError and UnicodeDecodeError only);
  both /webhooks/zalo and /webhooks/zalo-oa (the OA route parses before checking the signature);
- a lone UTF-16 surrogate ("\\ud800") in an event without message_id: bot/zalo.py ``update_id`` does
  ``json.dumps(..., ensure_ascii=False).encode()`` → UnicodeEncodeError;
- NaN / Infinity / 1e999 on PostgreSQL: stored as is, the json column refuses them at commit → 500.
Suggested fix: parse as webhook/telegram_routes.py ``parse_update`` does (reject NaN/Infinity and
non-finite floats, catch RecursionError, refuse text that cannot be encoded as UTF-8) and answer 400.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from bot import zalo_oa
from tests.test_fuzz_webhooks import OA_APP, OA_KEY, ZALO_SECRET, all_webhooks_settings
from webhook.app import create_app


def post(engine: Engine, tmp_path: Path, path: str, body: bytes, headers: dict[str, str]) -> int:
    app = create_app(all_webhooks_settings(tmp_path, "http://127.0.0.1:9"), engine=engine, background=False)

    async def go() -> int:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://hoctap") as client:
            return (await client.post(path, content=body, headers=headers)).status_code

    return asyncio.run(go())


BODIES = {
    "deep": b"[" * 50_000,
    "surrogate": b'{"message": {"text": "\\ud800", "chat": {"id": "z1"}}}',
    "nan": b'{"message": {"message_id": "m1", "text": NaN, "chat": {"id": "z1"}}}',
}


@pytest.mark.parametrize("case", sorted(BODIES))
def test_zalo_bot_webhook_answers_4xx_not_500(engine: Engine, tmp_path: Path, case: str) -> None:
    status = post(engine, tmp_path, "/webhooks/zalo", BODIES[case], {"X-Bot-Api-Secret-Token": ZALO_SECRET})
    assert status < 500


@pytest.mark.parametrize("case", ["deep", "nan"])
def test_zalo_oa_webhook_answers_4xx_not_500(engine: Engine, tmp_path: Path, case: str) -> None:
    body = BODIES[case] if case == "deep" else (
        b'{"app_id": "%s", "event_name": "user_send_text", "sender": {"id": "u1"}, "timestamp": "1",'
        b' "message": {"msg_id": "o1", "text": NaN}}' % OA_APP.encode()
    )
    signature = zalo_oa.signature(OA_APP, body, "1" if case == "nan" else "", OA_KEY)
    status = post(engine, tmp_path, "/webhooks/zalo-oa", body, {zalo_oa.SIGNATURE_HEADER: "mac=" + signature})
    assert status < 500
