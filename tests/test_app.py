"""The app starts with nothing configured and says which channels are off."""

from __future__ import annotations

from fastapi.testclient import TestClient

from models.settings import get_settings
from webhook.app import create_app


def test_healthz_reports_channels_off(engine, tmp_path) -> None:
    settings = get_settings(data_dir=tmp_path, telegram_bot_token="", zalo_bot_token="", zalo_oa_app_id="")
    with TestClient(create_app(settings, engine=engine, background=False)) as client:
        resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"ok": True, "channels": {"telegram": False, "zalo": False, "zalo_oa": False, "web": True}}
