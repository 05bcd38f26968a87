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


def test_a_server_process_freezes_its_start_up_objects_and_tests_do_not(engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`hoctap serve` (settle=True) moves what start-up loaded into the collector's permanent generation
    (bot.runtime.settle_heap); an app built without it (tests, tools) leaves the process's heap alone."""
    import gc

    settings = get_settings(data_dir=tmp_path, demo=False)
    gc.unfreeze()
    with TestClient(create_app(settings, engine=engine, background=False)) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() == 0
    try:
        with TestClient(create_app(settings, engine=engine, background=False, settle=True)) as client:
            assert client.get("/healthz").status_code == 200
            assert gc.get_freeze_count() > 10_000  # the modules, at least
    finally:
        gc.unfreeze()
