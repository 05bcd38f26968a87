"""Every catalog key the conversations use exists, with the placeholders the code fills in."""

from __future__ import annotations

import ast
from pathlib import Path

from flows.i18n import catalog, placeholders

ROOT = Path(__file__).resolve().parents[2] / "flows"


def _calls() -> list[tuple[str, str, set[str] | None]]:
    """(where, key, keyword names) for each t("key", ...) / btn("key", ...) with a literal key."""
    found = []
    for path in sorted(ROOT.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("t", "btn")):
                continue
            if not node.args or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
                continue
            kws = None if any(k.arg is None for k in node.keywords) else {k.arg for k in node.keywords if k.arg}
            found.append((f"{path.name}:{node.lineno}", node.args[0].value, kws))
    return found


def test_every_key_used_exists_with_matching_placeholders() -> None:
    messages = catalog()
    problems = []
    calls = _calls()
    assert len(calls) > 100
    for where, key, kws in calls:
        if key not in messages:
            problems.append(f"{where}: no key {key!r}")
            continue
        if kws is not None and placeholders(messages[key]) != kws:
            problems.append(f"{where}: {key!r} needs {sorted(placeholders(messages[key]))}, given {sorted(kws)}")
    assert not problems, "\n".join(problems)


def test_dynamic_key_families_are_complete() -> None:
    messages = catalog()
    for title in ("gia_dinh", "cong_dan", "dong_ho", "cong_dong", "don_vi"):
        assert f"title.{title}" in messages
    for status in ("none", "draft", "submitted", "confirmed", "questioned", "in_review", "returned",
                   "recognised", "rejected"):
        assert f"status.{status}" in messages
    for role in ("household", "clan_head", "village_leader", "officer", "unit_rep"):
        assert f"role.{role}" in messages and f"help.{role}" in messages
    from flows.engine import STEPS

    for step in STEPS:
        if step != "idle":
            assert f"step.{step}" in messages, step


def test_buttons_in_the_catalog_fit_on_a_phone() -> None:
    for key, text in catalog().items():
        if key.startswith("btn.") and not placeholders(text):
            assert len(text) <= 20, key


def test_messages_speak_to_anh_chi_never_ban() -> None:
    for key, text in catalog().items():
        assert " bạn" not in f" {text.lower()}", key
