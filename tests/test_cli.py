"""The `hoctap` command line, run as a real process like an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "ZALO_"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "webhook.cli", *args],
        cwd=cwd, env={**full_env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )


def test_criteria_score_prints_json(tmp_path: Path) -> None:
    answers = {"c1_1": True, "c1_2": True, "c1_3": "na", "c2_1": False, "c2_2": 100, "c2_3": True,
               "c3_1": True, "c3_2": "goc_va_tu_sach", "c4_1": True, "c4_2": True}
    (tmp_path / "a.json").write_text(json.dumps(answers), encoding="utf-8")
    out = run("criteria", "score", "gia_dinh", "a.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["title"], data["total"], data["max"], data["passed"]) == ("gia_dinh", 90, 100, False)
    by_id = {c["id"]: c for c in data["criteria"]}
    assert by_id["c2_1"] == {"id": "c2_1", "points": 0, "max": 10, "met": False, "state": "ok",
                             "reason": by_id["c2_1"]["reason"]}
    assert by_id["c2_1"]["reason"]  # a Vietnamese reason for the failed mandatory criterion
    assert [c["id"] for c in data["criteria"]][:3] == ["c1_1", "c1_2", "c1_3"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("{not json", "cannot read answers"), ("[1, 2]", "JSON object"), (None, "cannot read answers")],
)
def test_criteria_score_bad_input_is_a_message_not_a_traceback(tmp_path: Path, content, fragment) -> None:
    if content is not None:
        (tmp_path / "a.json").write_text(content, encoding="utf-8")
    out = run("criteria", "score", "gia_dinh", "a.json", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert fragment in json.loads(out.stdout)["error"]


def test_criteria_score_unknown_title(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}", encoding="utf-8")
    out = run("criteria", "score", "gia_dinhh", "a.json", cwd=tmp_path)
    assert out.returncode == 2
    assert json.loads(out.stdout)["titles"] == ["cong_dan", "cong_dong", "don_vi", "dong_ho", "gia_dinh"]


def test_criteria_list(tmp_path: Path) -> None:
    out = run("criteria", "list", cwd=tmp_path)
    assert out.returncode == 0
    assert [line.split("\t")[0] for line in out.stdout.splitlines()] == [
        "cong_dan", "cong_dong", "don_vi", "dong_ho", "gia_dinh"]


def test_db_upgrade_creates_sqlite_file(tmp_path: Path) -> None:
    out = run("db", "upgrade", cwd=tmp_path, env={"DATABASE_URL": "", "DATA_DIR": str(tmp_path / "d")})
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "hoctap.db").exists()
