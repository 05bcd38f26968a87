"""One settings class, from environment or .env; built by a factory, never at import time."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("data")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = Field(default="", description="SQLAlchemy URL; empty = SQLite file in DATA_DIR")
    data_dir: Path = DEFAULT_DATA_DIR
    media_dir: Path | None = None
    public_base_url: str = ""
    secret_key: SecretStr = SecretStr("")

    telegram_bot_token: SecretStr = SecretStr("")
    telegram_webhook_secret: SecretStr = SecretStr("")
    telegram_api_base_url: str = "https://api.telegram.org"

    zalo_bot_token: SecretStr = SecretStr("")
    zalo_webhook_secret: SecretStr = SecretStr("")
    zalo_api_base_url: str = "https://bot-api.zapps.me"
    zalo_oa_app_id: str = ""
    zalo_oa_secret_key: SecretStr = SecretStr("")
    zalo_oa_refresh_token: SecretStr = SecretStr("")
    zalo_oa_api_base_url: str = "https://openapi.zalo.me"
    zalo_oa_oauth_base_url: str = "https://oauth.zaloapp.com"
    zalo_oa_app_secret: SecretStr = SecretStr("")  # the app's secret for OAuth; empty = ZALO_OA_SECRET_KEY
    zalo_monthly_message_limit: int = 3000  # Zalo Bot free plan: messages per month (0 = no limit)
    zalo_user_limit: int = 50  # Zalo Bot free plan: users per bot (0 = no limit)

    # communes the deployment serves: province codes ("31") or commune codes ("10999"), comma separated
    served_areas: str = ""
    timezone: str = "Asia/Ho_Chi_Minh"
    quiet_hours: str = "21:00-07:00"
    telegram_rate_per_second: float = 25.0
    per_chat_interval_seconds: float = 1.0
    photo_max_bytes: int = 10 * 1024 * 1024
    photo_max_pixels: int = 40_000_000
    demo: bool = True
    # 0: serve runs everything in one process; 1: the inbox worker, senders and scheduler in a child
    # process; 2: the inbox worker in one child, the senders and scheduler in another (bot/worker.py)
    worker_processes: int = Field(default=0, ge=0, le=2)

    @field_validator("public_base_url", "telegram_api_base_url", "zalo_api_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'hoctap.db').as_posix()}"

    @property
    def media_path(self) -> Path:
        return self.media_dir if self.media_dir is not None else self.data_dir / "media"

    @property
    def telegram_enabled(self) -> bool:
        return bool(self.telegram_bot_token.get_secret_value())

    @property
    def zalo_enabled(self) -> bool:
        return bool(self.zalo_bot_token.get_secret_value())

    @property
    def zalo_oa_enabled(self) -> bool:
        return bool(self.zalo_oa_app_id and self.zalo_oa_secret_key.get_secret_value())

    def served_codes(self) -> list[int]:
        return [int(part) for part in self.served_areas.replace(" ", "").split(",") if part.isdigit()]


def get_settings(**overrides: object) -> Settings:
    """Build settings from the environment (and .env), with explicit overrides for tests and the CLI."""
    return Settings(**overrides)  # type: ignore[arg-type]
