"""Settings: every name in DESIGN.md §6 is read from the environment; secrets stay masked."""

from __future__ import annotations

import re
from pathlib import Path

from models.settings import Settings, get_settings

CONTRACT = [
    "DATABASE_URL", "MEDIA_DIR", "PUBLIC_BASE_URL", "TELEGRAM_BOT_TOKEN", "TELEGRAM_WEBHOOK_SECRET",
    "TELEGRAM_API_BASE_URL", "ZALO_BOT_TOKEN", "ZALO_WEBHOOK_SECRET", "ZALO_API_BASE_URL", "ZALO_OA_APP_ID",
    "ZALO_OA_SECRET_KEY", "ZALO_OA_REFRESH_TOKEN", "ZALO_OA_API_BASE_URL", "ZALO_OA_OAUTH_BASE_URL",
]


def test_every_contract_name_is_read_from_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in CONTRACT:
        monkeypatch.setenv(name, f"value-of-{name.lower()}")
    s = get_settings()
    for name in CONTRACT:
        value = getattr(s, name.lower())
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        assert str(value) == f"value-of-{name.lower()}"


def test_secrets_are_masked_in_repr(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:SECRETSECRET")
    s = get_settings()
    assert "SECRETSECRET" not in repr(s)
    assert s.telegram_enabled


def test_defaults_sqlite_file_in_data_dir(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("MEDIA_DIR", raising=False)
    s = get_settings(data_dir=tmp_path / "d")
    assert s.db_url == f"sqlite:///{(tmp_path / 'd' / 'hoctap.db').as_posix()}"
    assert s.media_path == tmp_path / "d" / "media"
    assert not s.telegram_enabled and not s.zalo_enabled and not s.zalo_oa_enabled


def test_env_example_lists_every_setting() -> None:
    text = (Path(__file__).parent.parent / ".env.example").read_text(encoding="utf-8")
    names = set(re.findall(r"^([A-Z_]+)=", text, flags=re.M))
    assert {f.upper() for f in Settings.model_fields} == names
