"""Criteria sets (bộ tiêu chí) loaded from YAML, local supplements merged on top, and pure scoring.

The format and the scoring rules are described in criteria/README.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flows.i18n import t

SCHEMA = 1
NA = "na"
ANSWER_TYPES = ("yes_no", "share", "number", "choice")
EVIDENCE = ("none", "optional", "required")
STATUSES = ("official", "partial", "draft")
SUBJECTS = ("household", "clan", "village", "unit", "person")
NOT_APPLICABLE = ("full",)
STATES = ("ok", "missing", "invalid", "na")

_SET_KEYS = frozenset(
    {
        "schema",
        "title",
        "name",
        "subject",
        "version",
        "period",
        "status",
        "legal_basis",
        "sources",
        "max_points",
        "pass",
        "criteria",
    }
)
_LOCAL_KEYS = frozenset(
    {
        "schema",
        "extends",
        "name",
        "version",
        "period",
        "status",
        "legal_basis",
        "sources",
        "max_points",
        "pass",
        "criteria",
        "remove",
    }
)
_PASS_KEYS = frozenset({"min_points", "min_points_each", "mandatory", "status", "grades"})
_CRITERION_KEYS = frozenset(
    {
        "id",
        "group",
        "text",
        "question",
        "answer",
        "points",
        "tiers",
        "options",
        "min",
        "max",
        "not_applicable",
        "evidence",
        "status",
        "source",
        "computed",
    }
)
# Scoring fields each answer type needs, and those it must not carry (a stray one is a typo).
_SCORING_KEYS = {
    "yes_no": {"points"},
    "share": {"tiers"},
    "number": {"tiers", "min", "max"},
    "choice": {"options"},
}
_ALL_SCORING_KEYS = frozenset().union(*_SCORING_KEYS.values())


class CriteriaError(ValueError):
    """A criteria file is broken; the message names the file, the criterion (when relevant) and the problem."""


@dataclass(frozen=True)
class Tier:
    min: float
    points: int


@dataclass(frozen=True)
class Option:
    value: str
    label: str
    points: int


@dataclass(frozen=True)
class Grade:
    min: float
    label: str


@dataclass(frozen=True)
class Criterion:
    id: str
    group: str
    text: str
    question: str
    answer: str
    points: int | None = None
    tiers: tuple[Tier, ...] = ()
    options: tuple[Option, ...] = ()
    min: float | None = None
    max: float | None = None
    not_applicable: str | None = None
    evidence: str = "none"
    status: str = "draft"
    source: str | None = None
    computed: str | None = None

    @property
    def max_points(self) -> int:
        """The most points this criterion can earn."""
        if self.answer == "yes_no":
            return self.points or 0
        if self.answer == "choice":
            return max((o.points for o in self.options), default=0)
        return max((tier.points for tier in self.tiers), default=0)


@dataclass(frozen=True)
class PassRule:
    min_points: float
    min_points_each: float | None
    mandatory: tuple[str, ...]
    status: str
    grades: tuple[Grade, ...]


@dataclass(frozen=True)
class CriteriaSet:
    title: str
    name: str
    subject: str
    version: str
    period: str
    status: str
    legal_basis: tuple[str, ...]
    sources: dict[str, str]
    max_points: int
    pass_rule: PassRule
    criteria: tuple[Criterion, ...]
    origin: tuple[str, ...]

    def get(self, criterion_id: str) -> Criterion:
        """The criterion with this id; KeyError if there is none."""
        for criterion in self.criteria:
            if criterion.id == criterion_id:
                return criterion
        raise KeyError(criterion_id)

    @property
    def ids(self) -> tuple[str, ...]:
        """Criterion ids in order."""
        return tuple(c.id for c in self.criteria)


# ---------------------------------------------------------------------------------------------- loading


def default_criteria_dir() -> Path:
    """The repository's criteria/ folder."""
    return Path(__file__).resolve().parent.parent / "criteria"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: let PyYAML report it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark
            )
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _error(file: str, problem: str, cid: str | None = None) -> CriteriaError:
    where = file if cid is None else f"{file}: criterion {cid}"
    return CriteriaError(f"{where}: {problem}")


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(str(path), f"cannot read the file ({exc})") from exc
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _error(str(path), f"not valid YAML: {exc}".replace("\n", " ")) from exc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _text(
    data: Mapping[str, Any], key: str, file: str, cid: str | None = None, *, scalar: bool = False
) -> str:
    if key not in data or data[key] is None:
        raise _error(file, f"missing field '{key}'", cid)
    value = data[key]
    if scalar and _is_number(value):  # version: 2021 is fine
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise _error(file, f"'{key}' must be a non-empty text", cid)
    return value


def _optional_text(data: Mapping[str, Any], key: str, file: str, cid: str | None = None) -> str | None:
    if data.get(key) is None:
        return None
    return _text(data, key, file, cid)


def _one_of(
    data: Mapping[str, Any],
    key: str,
    allowed: Sequence[str],
    file: str,
    cid: str | None = None,
    default: str | None = None,
) -> str:
    if key not in data and default is not None:
        return default
    value = _text(data, key, file, cid)
    if value not in allowed:
        raise _error(file, f"'{key}' is {value!r}; expected one of {', '.join(allowed)}", cid)
    return value


def _points(value: Any, what: str, file: str, cid: str | None) -> int:
    if not _is_int(value) or value < 0:
        raise _error(file, f"{what} must be a whole number ≥ 0, not {value!r}", cid)
    return int(value)


def _number(value: Any, what: str, file: str, cid: str | None = None) -> float:
    if not _is_number(value):
        raise _error(file, f"{what} must be a number, not {value!r}", cid)
    return value  # type: ignore[no-any-return]


def _check_keys(
    data: Mapping[str, Any], allowed: frozenset[str], what: str, file: str, cid: str | None = None
) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise _error(file, f"unknown field(s) in {what}: {', '.join(unknown)}", cid)


def _parse_tiers(raw: Any, file: str, cid: str) -> tuple[Tier, ...]:
    if not isinstance(raw, list) or not raw:
        raise _error(file, "'tiers' must be a non-empty list of {min, points}", cid)
    tiers: list[Tier] = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"min", "points"}:
            raise _error(file, f"each tier must be {{min, points}}, not {item!r}", cid)
        tiers.append(
            Tier(
                _number(item["min"], "tier min", file, cid), _points(item["points"], "tier points", file, cid)
            )
        )
    for higher, lower in zip(tiers, tiers[1:], strict=False):
        if not lower.min < higher.min:
            raise _error(file, "tiers must be ordered from the highest min to the lowest", cid)
        if lower.points > higher.points:
            raise _error(file, "a lower tier must not give more points than a higher one", cid)
    return tuple(tiers)


def _parse_options(raw: Any, file: str, cid: str) -> tuple[Option, ...]:
    if not isinstance(raw, list) or not raw:
        raise _error(file, "'options' must be a non-empty list of {value, label, points}", cid)
    options: list[Option] = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"value", "label", "points"}:
            raise _error(file, f"each option must be {{value, label, points}}, not {item!r}", cid)
        value = _text(item, "value", file, cid)
        if value == NA:
            raise _error(file, f"option value {NA!r} is reserved for 'not applicable'", cid)
        if any(o.value == value for o in options):
            raise _error(file, f"option value {value!r} is given twice", cid)
        options.append(
            Option(
                value, _text(item, "label", file, cid), _points(item["points"], "option points", file, cid)
            )
        )
    return tuple(options)


def _parse_criterion(raw: Any, file: str, index: int) -> Criterion:
    if not isinstance(raw, dict):
        raise _error(file, f"criterion #{index + 1} must be a mapping")
    cid = raw.get("id") if isinstance(raw.get("id"), str) else f"#{index + 1}"
    _check_keys(raw, _CRITERION_KEYS, "the criterion", file, cid)
    cid = _text(raw, "id", file, cid)
    answer = _one_of(raw, "answer", ANSWER_TYPES, file, cid)
    needed = _SCORING_KEYS[answer]
    for key in sorted(needed):
        if raw.get(key) is None:
            raise _error(file, f"answer {answer} needs '{key}'", cid)
    stray = sorted(k for k in _ALL_SCORING_KEYS - needed if k in raw)
    if stray:
        raise _error(file, f"answer {answer} does not use {', '.join(stray)}", cid)

    low = high = None
    if answer == "number":
        low = _number(raw["min"], "min", file, cid)
        high = _number(raw["max"], "max", file, cid)
        if low > high:
            raise _error(file, f"min {low} is above max {high}", cid)
    tiers = _parse_tiers(raw["tiers"], file, cid) if "tiers" in needed else ()
    if answer == "share" and any(not 0 <= tier.min <= 100 for tier in tiers):
        raise _error(file, "share tiers must have min between 0 and 100", cid)
    not_applicable = raw.get("not_applicable")
    if not_applicable is not None and not_applicable not in NOT_APPLICABLE:
        raise _error(file, f"'not_applicable' is {not_applicable!r}; only 'full' is known", cid)
    return Criterion(
        id=cid,
        group=_text(raw, "group", file, cid),
        text=_text(raw, "text", file, cid),
        question=_text(raw, "question", file, cid),
        answer=answer,
        points=_points(raw["points"], "points", file, cid) if answer == "yes_no" else None,
        tiers=tiers,
        options=_parse_options(raw["options"], file, cid) if answer == "choice" else (),
        min=low,
        max=high,
        not_applicable=not_applicable,
        evidence=_one_of(raw, "evidence", EVIDENCE, file, cid, default="none"),
        status=_one_of(raw, "status", STATUSES, file, cid, default="draft"),
        source=_optional_text(raw, "source", file, cid),
        computed=_optional_text(raw, "computed", file, cid),
    )


def _parse_criteria(raw: Any, file: str) -> list[Criterion]:
    if not isinstance(raw, list):
        raise _error(file, "'criteria' must be a list")
    criteria: list[Criterion] = []
    for index, item in enumerate(raw):
        criterion = _parse_criterion(item, file, index)
        if any(c.id == criterion.id for c in criteria):
            raise _error(file, "id is given twice", criterion.id)
        criteria.append(criterion)
    return criteria


def _parse_pass(raw: Any, file: str) -> PassRule:
    if not isinstance(raw, dict):
        raise _error(file, "'pass' must be a mapping")
    _check_keys(raw, _PASS_KEYS, "pass", file)
    if raw.get("min_points") is None:
        raise _error(file, "missing field 'pass.min_points'")
    each = raw.get("min_points_each")
    mandatory = raw.get("mandatory") or []
    if not isinstance(mandatory, list) or not all(isinstance(m, str) for m in mandatory):
        raise _error(file, "'pass.mandatory' must be a list of criterion ids")
    grades: list[Grade] = []
    for item in raw.get("grades") or []:
        if not isinstance(item, dict) or set(item) != {"min", "label"}:
            raise _error(file, f"each grade must be {{min, label}}, not {item!r}")
        grades.append(Grade(_number(item["min"], "grade min", file), _text(item, "label", file)))
    if any(not lower.min < higher.min for higher, lower in zip(grades, grades[1:], strict=False)):
        raise _error(file, "pass.grades must be ordered from the highest min to the lowest")
    return PassRule(
        min_points=_number(raw["min_points"], "pass.min_points", file),
        min_points_each=None if each is None else _number(each, "pass.min_points_each", file),
        mandatory=tuple(mandatory),
        status=_one_of(raw, "status", STATUSES, file, default="draft"),
        grades=tuple(grades),
    )


def _pass_as_dict(rule: PassRule) -> dict[str, Any]:
    return {
        "min_points": rule.min_points,
        "min_points_each": rule.min_points_each,
        "mandatory": list(rule.mandatory),
        "status": rule.status,
        "grades": [{"min": g.min, "label": g.label} for g in rule.grades],
    }


def _check_schema(data: Mapping[str, Any], file: str) -> None:
    if data.get("schema") != SCHEMA:
        raise _error(file, f"'schema' must be {SCHEMA}, not {data.get('schema')!r}")


def _text_list(data: Mapping[str, Any], key: str, file: str) -> tuple[str, ...]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _error(file, f"'{key}' must be a list of texts")
    return tuple(value)


def _sources(data: Mapping[str, Any], file: str) -> dict[str, str]:
    value = data.get("sources") or {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _error(file, "'sources' must map source ids to addresses")
    return dict(value)


def _check_set(cset: CriteriaSet, file: str) -> None:
    """Checks that hold for a whole set, national or merged."""
    ids = cset.ids
    for criterion in cset.criteria:
        if criterion.source is not None and criterion.source not in cset.sources:
            raise _error(file, f"source {criterion.source!r} is not listed in 'sources'", criterion.id)
        each = cset.pass_rule.min_points_each
        if each is not None and criterion.max_points < each:
            raise _error(
                file,
                f"can earn at most {criterion.max_points} points, below pass.min_points_each {each:g}",
                criterion.id,
            )
    for mid in cset.pass_rule.mandatory:
        if mid not in ids:
            raise _error(file, "listed in pass.mandatory but there is no such criterion", mid)
    total = sum(c.max_points for c in cset.criteria)
    if total != cset.max_points:
        raise _error(file, f"max_points is {cset.max_points} but the criteria add up to {total}")
    if cset.pass_rule.min_points > cset.max_points:
        raise _error(
            file, f"pass.min_points {cset.pass_rule.min_points:g} is above max_points {cset.max_points}"
        )


def _parse_set(data: Any, file: str) -> CriteriaSet:
    if not isinstance(data, dict):
        raise _error(file, "expected a mapping at the top of the file")
    _check_schema(data, file)
    _check_keys(data, _SET_KEYS, "the set", file)
    for key in ("max_points", "pass", "criteria"):
        if key not in data:
            raise _error(file, f"missing field '{key}'")
    cset = CriteriaSet(
        title=_text(data, "title", file),
        name=_text(data, "name", file),
        subject=_one_of(data, "subject", SUBJECTS, file),
        version=_text(data, "version", file, scalar=True),
        period=_text(data, "period", file, scalar=True),
        status=_one_of(data, "status", STATUSES, file),
        legal_basis=_text_list(data, "legal_basis", file),
        sources=_sources(data, file),
        max_points=_points(data["max_points"], "max_points", file, None),
        pass_rule=_parse_pass(data["pass"], file),
        criteria=tuple(_parse_criteria(data["criteria"], file)),
        origin=(file,),
    )
    _check_set(cset, file)
    return cset


def load_file(path: Path) -> CriteriaSet:
    """One national criteria file, validated; CriteriaError if anything is wrong."""
    return _parse_set(_read_yaml(Path(path)), str(path))


def merge_local(base: CriteriaSet, path: Path) -> CriteriaSet:
    """``base`` with the local supplement at ``path`` applied (add, replace or remove criteria; change pass)."""
    file = str(path)
    data = _read_yaml(Path(path))
    if not isinstance(data, dict):
        raise _error(file, "expected a mapping at the top of the file")
    _check_schema(data, file)
    _check_keys(data, _LOCAL_KEYS, "the local supplement", file)
    if data.get("extends") != base.title:
        raise _error(file, f"'extends' must be {base.title!r}, not {data.get('extends')!r}")

    criteria = list(base.criteria)
    remove = data.get("remove") or []
    if not isinstance(remove, list) or not all(isinstance(r, str) for r in remove):
        raise _error(file, "'remove' must be a list of criterion ids")
    for rid in remove:
        if rid not in [c.id for c in criteria]:
            raise _error(file, f"cannot remove it: {base.title} has no such criterion", rid)
        criteria = [c for c in criteria if c.id != rid]
    for new in _parse_criteria(data.get("criteria") or [], file):
        at = next((i for i, c in enumerate(criteria) if c.id == new.id), None)
        if at is None:
            criteria.append(new)
        else:
            criteria[at] = new

    pass_rule = base.pass_rule
    if "pass" in data:
        if not isinstance(data["pass"], dict):
            raise _error(file, "'pass' must be a mapping")
        # Keys given locally override the national ones, so a province may change only min_points.
        pass_rule = _parse_pass({**_pass_as_dict(base.pass_rule), **data["pass"]}, file)

    merged = CriteriaSet(
        title=base.title,
        name=_text(data, "name", file) if "name" in data else base.name,
        subject=base.subject,
        version=_text(data, "version", file, scalar=True) if "version" in data else base.version,
        period=_text(data, "period", file, scalar=True) if "period" in data else base.period,
        status=_one_of(data, "status", STATUSES, file) if "status" in data else base.status,
        legal_basis=base.legal_basis + _text_list(data, "legal_basis", file),
        sources={**base.sources, **_sources(data, file)},
        max_points=_points(data["max_points"], "max_points", file, None)
        if "max_points" in data
        else base.max_points,
        pass_rule=pass_rule,
        criteria=tuple(criteria),
        origin=(*base.origin, file),
    )
    _check_set(merged, file)
    return merged


def load_sets(directory: Path | None = None, *, local: Sequence[str] = ()) -> dict[str, CriteriaSet]:
    """All national sets in ``directory`` by title, with the supplements of ``local`` codes applied in order.

    ``local`` names folders under ``directory/local/`` (e.g. ``["31", "31/10999"]``: province, then commune);
    a folder that does not exist adds nothing.
    """
    directory = default_criteria_dir() if directory is None else Path(directory)
    sets: dict[str, CriteriaSet] = {}
    for path in sorted(directory.glob("*.yaml")):
        cset = load_file(path)
        if cset.title in sets:
            raise _error(
                str(path), f"title {cset.title!r} is already defined in {sets[cset.title].origin[0]}"
            )
        sets[cset.title] = cset
    for code in local:
        folder = directory / "local" / code
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else ():
            if path.stem not in sets:
                raise _error(str(path), f"no national criteria set {path.stem!r} to extend")
            sets[path.stem] = merge_local(sets[path.stem], path)
    return sets


# ---------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class CriterionScore:
    id: str
    points: float
    max: int
    met: bool
    state: str  # ok | missing | invalid | na
    reason: str  # Vietnamese, "" when met


@dataclass(frozen=True)
class ScoreResult:
    title: str
    total: float
    max: int
    passed: bool
    grade: str | None
    criteria: tuple[CriterionScore, ...]
    failed_reasons: tuple[str, ...]
    unknown: tuple[str, ...] = ()  # answer ids that are not criteria of this set (ignored)

    def get(self, criterion_id: str) -> CriterionScore:
        """The score of one criterion; KeyError if unknown."""
        for item in self.criteria:
            if item.id == criterion_id:
                return item
        raise KeyError(criterion_id)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (points as int when integral)."""
        return {
            "title": self.title,
            "total": _json_number(self.total),
            "max": self.max,
            "passed": self.passed,
            "grade": self.grade,
            "criteria": [
                {
                    "id": c.id,
                    "points": _json_number(c.points),
                    "max": c.max,
                    "met": c.met,
                    "state": c.state,
                    "reason": c.reason,
                }
                for c in self.criteria
            ],
            "reasons": list(self.failed_reasons),
            "unknown": list(self.unknown),
        }


def _json_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def format_number(value: float) -> str:
    """A number the Vietnamese way: 1.000 and 75,5."""
    if float(value).is_integer():
        return f"{int(value):,}".replace(",", ".")
    whole, _, frac = f"{value:,.2f}".rstrip("0").partition(".")
    return f"{whole.replace(',', '.')},{frac}"


def _tier_points(tiers: Sequence[Tier], value: float) -> int:
    return next((tier.points for tier in tiers if value >= tier.min), 0)


def _invalid_reason(criterion: Criterion, value: Any) -> str | None:
    """Why ``value`` is not a valid answer to ``criterion``, or None when it is."""
    if criterion.answer == "yes_no":
        return None if isinstance(value, bool) else t("criteria.invalid_yes_no")
    if criterion.answer == "share":
        return None if _is_number(value) and 0 <= value <= 100 else t("criteria.invalid_share")
    if criterion.answer == "number":
        low, high = criterion.min or 0, criterion.max or 0  # both are required when loading
        whole = _is_int(value) or (_is_number(value) and float(value).is_integer())
        if whole and low <= value <= high:
            return None
        return t("criteria.invalid_number", min=format_number(low), max=format_number(high))
    if isinstance(value, str) and any(o.value == value for o in criterion.options):
        return None
    return t("criteria.invalid_choice", options=" / ".join(f"«{o.label}»" for o in criterion.options))


def _earned(criterion: Criterion, value: Any) -> int:
    if criterion.answer == "yes_no":
        return (criterion.points or 0) if value else 0
    if criterion.answer == "choice":
        return next(o.points for o in criterion.options if o.value == value)
    return _tier_points(criterion.tiers, value)


def score_criterion(
    criterion: Criterion, value: Any, *, present: bool = True, mandatory: bool = False
) -> CriterionScore:
    """The score of one answer; ``present=False`` (or a None value) means unanswered."""
    top = criterion.max_points

    def result(points: int, state: str, reason: str = "") -> CriterionScore:
        if state == "ok" and points == 0:
            reason = t("criteria.not_met_mandatory" if mandatory else "criteria.not_met")
        return CriterionScore(criterion.id, points, top, points > 0, state, reason)

    if not present or value is None:
        key = "criteria.missing_computed" if criterion.computed else "criteria.missing"
        return result(0, "missing", t(key))
    if isinstance(value, str) and value == NA:
        if criterion.not_applicable == "full":
            return result(top, "na")
        return result(0, "invalid", t("criteria.invalid_na"))
    problem = _invalid_reason(criterion, value)
    if problem is not None:
        return result(0, "invalid", problem)
    return result(_earned(criterion, value), "ok")


def score(
    cset: CriteriaSet, answers: Mapping[str, Any], computed: Mapping[str, Any] | None = None
) -> ScoreResult:
    """Score ``answers`` ({criterion id: value}) against ``cset``; never raises for odd values.

    A criterion with ``computed: key`` takes its value from ``computed[key]`` (a share, or "na" where
    allowed) and ignores ``answers``; when the key is absent the criterion is missing.
    """
    computed = computed or {}
    rule = cset.pass_rule
    scores: list[CriterionScore] = []
    for criterion in cset.criteria:
        source: Mapping[str, Any] = computed if criterion.computed else answers
        key = criterion.computed or criterion.id
        scores.append(
            score_criterion(
                criterion, source.get(key), present=key in source, mandatory=criterion.id in rule.mandatory
            )
        )
    total = sum(s.points for s in scores)

    reasons: list[str] = []
    if total < rule.min_points:
        reasons.append(
            t(
                "criteria.total_short",
                total=format_number(total),
                max=format_number(cset.max_points),
                need=format_number(rule.min_points),
            )
        )
    by_id = {s.id: s for s in scores}
    reasons.extend(t("criteria.mandatory_unmet", id=mid) for mid in rule.mandatory if not by_id[mid].met)
    if rule.min_points_each is not None:
        reasons.extend(
            t(
                "criteria.below_each",
                id=s.id,
                points=format_number(s.points),
                need=format_number(rule.min_points_each),
            )
            for s in scores
            if s.points < rule.min_points_each
        )
    ids = set(cset.ids)
    return ScoreResult(
        title=cset.title,
        total=total,
        max=cset.max_points,
        passed=not reasons,
        grade=next((g.label for g in rule.grades if total >= g.min), None),
        criteria=tuple(scores),
        failed_reasons=tuple(reasons),
        unknown=tuple(sorted(str(k) for k in answers if k not in ids)),
    )
