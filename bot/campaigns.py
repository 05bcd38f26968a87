"""Reminder campaigns as data (bot/campaigns.yaml + local overrides) and the clock arithmetic around them.

Everything here is pure: times come in as arguments, never from the wall clock, so tests drive it with an
explicit ``now``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

DEFAULTS_FILE = Path(__file__).with_name("campaigns.yaml")
DEFAULT_TZ = "Asia/Ho_Chi_Minh"

# audiences the SQL in bot/scheduler.py knows how to select
AUDIENCES = ("people", "not_registered", "registered", "not_submitted", "village_leaders", "officers")


class CampaignError(ValueError):
    """A campaign file is broken or names an unknown campaign, audience or template."""


@dataclass(frozen=True)
class CampaignButton:
    label: str  # catalog key
    value: str


@dataclass(frozen=True)
class Campaign:
    """One reminder campaign: when (crons, local time), who (audience) and what (template)."""

    id: str
    name: str
    crons: tuple[str, ...]
    window: timedelta  # how long after the scheduled time a missed run is still caught up
    audience: str
    template: str
    buttons: tuple[CampaignButton, ...] = ()
    roles: tuple[str, ...] = ("household", "clan_head", "village_leader")
    done_statuses: tuple[str, ...] = ()
    attention_statuses: tuple[str, ...] = ()
    attention_template: str | None = None
    attention_buttons: tuple[CampaignButton, ...] = ()
    deadline: str = "registration"  # registration | assessment | review
    followup_of: str | None = None
    enabled: bool = True
    timezone: str = DEFAULT_TZ
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def per_occurrence(self) -> bool:
        """True when the campaign fires more than once a year: each firing then has its own keys."""
        return len(self.crons) > 1 or any(_fires_several_times(c) for c in self.crons)

    def trigger(self) -> BaseTrigger:
        """The APScheduler trigger (a CronTrigger, or an OrTrigger of several)."""
        triggers = [CronTrigger.from_crontab(c, timezone=self.tz) for c in self.crons]
        return triggers[0] if len(triggers) == 1 else OrTrigger(triggers)


@dataclass(frozen=True)
class CampaignConfig:
    campaigns: dict[str, Campaign]
    deadlines: dict[str, str]  # kind -> "MM-DD", used when the commune has no CampaignYear date
    quiet_hours: str = "21:00-07:00"

    def get(self, campaign_id: str) -> Campaign:
        try:
            return self.campaigns[campaign_id]
        except KeyError as exc:
            raise CampaignError(
                f"unknown campaign {campaign_id!r}; known: {', '.join(sorted(self.campaigns))}"
            ) from exc

    def enabled(self) -> list[Campaign]:
        return [c for c in self.campaigns.values() if c.enabled]

    def default_deadline(self, kind: str, year: int) -> date:
        month, day = (int(x) for x in self.deadlines.get(kind, "12-31").split("-"))
        return date(year, month, day)


def _fires_several_times(cron: str) -> bool:
    """A cron fires once a year only when minute, hour, day and month are single numbers."""
    parts = cron.split()
    if len(parts) != 5:
        return True
    minute, hour, day, month, dow = parts
    return not all(p.isdigit() for p in (minute, hour, day, month)) or dow != "*"


_DURATION = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")


def parse_window(value: Any) -> timedelta:
    """ "3d", "12h", "90m" or a number of hours."""
    if isinstance(value, int | float):
        return timedelta(hours=float(value))
    match = _DURATION.match(str(value))
    if not match:
        raise CampaignError(f"window {value!r}: use e.g. 3d, 12h or 90m")
    n, unit = int(match[1]), match[2]
    return {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]


def _buttons(raw: Any, where: str) -> tuple[CampaignButton, ...]:
    if not raw:
        return ()
    try:
        return tuple(CampaignButton(label=str(b["label"]), value=str(b["value"])) for b in raw)
    except (TypeError, KeyError) as exc:
        raise CampaignError(f"{where}: buttons need label and value") from exc


def _campaign(cid: str, raw: Mapping[str, Any], tz: str) -> Campaign:
    where = f"campaign {cid}"
    crons = raw.get("cron")
    crons_t = (crons,) if isinstance(crons, str) else tuple(str(c) for c in crons or ())
    if not crons_t:
        raise CampaignError(f"{where}: cron is required")
    audience = str(raw.get("audience", ""))
    if audience not in AUDIENCES:
        raise CampaignError(f"{where}: audience {audience!r} is not one of {', '.join(AUDIENCES)}")
    known = {
        "name", "cron", "window", "audience", "template", "buttons", "roles", "done_statuses",
        "attention_statuses", "attention_template", "attention_buttons", "deadline", "followup_of", "enabled",
    }
    campaign = Campaign(
        id=cid,
        name=str(raw.get("name", cid)),
        crons=crons_t,
        window=parse_window(raw.get("window", "1d")),
        audience=audience,
        template=str(raw.get("template") or f"remind.{cid}"),
        buttons=_buttons(raw.get("buttons"), where),
        roles=tuple(raw.get("roles") or ("household", "clan_head", "village_leader")),
        done_statuses=tuple(raw.get("done_statuses") or ()),
        attention_statuses=tuple(raw.get("attention_statuses") or ()),
        attention_template=raw.get("attention_template"),
        attention_buttons=_buttons(raw.get("attention_buttons"), where),
        deadline=str(raw.get("deadline", "registration")),
        followup_of=raw.get("followup_of"),
        enabled=bool(raw.get("enabled", True)),
        timezone=tz,
        extra={k: v for k, v in raw.items() if k not in known},
    )
    try:
        campaign.trigger()
    except ValueError as exc:
        raise CampaignError(f"{where}: bad cron {crons_t!r}: {exc}") from exc
    return campaign


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CampaignError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CampaignError(f"{path}: expected a mapping")
    return data


def override_files(data_dir: Path, codes: Iterable[int]) -> list[Path]:
    """Local overrides, applied in order: data/campaigns/default.yaml, then one per served province/commune."""
    base = data_dir / "campaigns"
    names = ["default", *(str(c) for c in codes)]
    return [base / f"{name}.yaml" for name in names if (base / f"{name}.yaml").is_file()]


def load_campaigns(overrides: Sequence[Path] = (), *, defaults: Path = DEFAULTS_FILE) -> CampaignConfig:
    """The default campaigns with each override file merged on top (per campaign, field by field)."""
    data = _read(defaults)
    raw_campaigns: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (data.get("campaigns") or {}).items()}
    deadlines = {str(k): str(v) for k, v in (data.get("deadlines") or {}).items()}
    tz = str(data.get("timezone", DEFAULT_TZ))
    quiet = str(data.get("quiet_hours", "21:00-07:00"))
    for path in overrides:
        extra = _read(path)
        for cid, fields in (extra.get("campaigns") or {}).items():
            if not isinstance(fields, dict):
                raise CampaignError(f"{path}: campaign {cid}: expected a mapping")
            raw_campaigns.setdefault(str(cid), {}).update(fields)
        deadlines.update({str(k): str(v) for k, v in (extra.get("deadlines") or {}).items()})
        tz = str(extra.get("timezone", tz))
        quiet = str(extra.get("quiet_hours", quiet))
    campaigns = {cid: _campaign(cid, raw, tz) for cid, raw in raw_campaigns.items()}
    return CampaignConfig(campaigns=campaigns, deadlines=deadlines, quiet_hours=quiet)


# --- time -----------------------------------------------------------------------------------------


def as_utc(value: datetime) -> datetime:
    """Aware UTC; a naive value is read as UTC (SQLite returns stored UTC times without tzinfo)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def fire_times(campaign: Campaign, start: datetime, end: datetime) -> list[datetime]:
    """Scheduled times in [start, end], in UTC."""
    trigger = campaign.trigger()
    start_l, end_l = start.astimezone(campaign.tz), end.astimezone(campaign.tz)
    out: list[datetime] = []
    t = trigger.get_next_fire_time(None, start_l)
    while t is not None and t <= end_l and len(out) < 10_000:
        out.append(as_utc(t))
        t = trigger.get_next_fire_time(t, t + timedelta(seconds=1))
    return out


def next_fire(campaign: Campaign, now: datetime) -> datetime | None:
    """The next scheduled time after ``now`` (local time of the campaign)."""
    t = campaign.trigger().get_next_fire_time(None, now.astimezone(campaign.tz) + timedelta(seconds=1))
    return t


def last_fire(campaign: Campaign, now: datetime, *, within: timedelta) -> datetime | None:
    """The latest scheduled time in [now - within, now], in UTC."""
    times = fire_times(campaign, now - within, now)
    return times[-1] if times else None


def occurrence(campaign: Campaign, year: int, now: datetime) -> datetime | None:
    """The firing a manual run for ``year`` at ``now`` stands for: the latest in that year up to now,
    else the first of that year."""
    tz = campaign.tz
    start = datetime(year, 1, 1, tzinfo=tz)
    end = datetime(year + 1, 1, 1, tzinfo=tz) - timedelta(seconds=1)
    times = fire_times(campaign, start, end)
    if not times:
        return None
    past = [t for t in times if t <= as_utc(now)]
    return past[-1] if past else times[0]


def campaign_year(campaign: Campaign, scheduled_for: datetime) -> int:
    return scheduled_for.astimezone(campaign.tz).year


def due_runs(
    campaigns: Iterable[Campaign], last_runs: Mapping[str, datetime], now: datetime
) -> list[tuple[Campaign, datetime]]:
    """Campaign firings to run at ``now``: for each campaign, its latest scheduled time within its window,
    unless a run for that time (or a later one) is already recorded in ``last_runs`` (campaign id ->
    latest recorded scheduled_for). Missed firings older than the window are dropped; several missed
    firings inside the window coalesce into the latest."""
    due: list[tuple[Campaign, datetime]] = []
    for campaign in campaigns:
        if not campaign.enabled:
            continue
        scheduled = last_fire(campaign, now, within=campaign.window)
        if scheduled is None:
            continue
        done = last_runs.get(campaign.id)
        if done is not None and as_utc(done) >= scheduled:
            continue
        due.append((campaign, scheduled))
    return due


@dataclass(frozen=True)
class QuietHours:
    """No bulk messages between start and end (local time); the window may span midnight."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        try:
            a, b = (part.strip() for part in text.split("-"))
            return cls(time.fromisoformat(a), time.fromisoformat(b))
        except ValueError as exc:
            raise CampaignError(f"quiet hours {text!r}: use HH:MM-HH:MM") from exc

    def contains(self, local: time) -> bool:
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def not_before(self, now: datetime, tz: ZoneInfo) -> datetime:
        """``now`` outside quiet hours, else the next end of quiet hours (in UTC)."""
        local = now.astimezone(tz)
        if not self.contains(local.time().replace(tzinfo=None)):
            return as_utc(now)
        end = datetime.combine(local.date(), self.end, tzinfo=tz)
        if end <= local:
            end = datetime.combine(local.date() + timedelta(days=1), self.end, tzinfo=tz)
        return as_utc(end)
