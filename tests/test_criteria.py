"""Criteria sets: every shipped file loads, worked examples score as derived by hand, broken files are refused."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.criteria import (
    CriteriaError,
    CriteriaSet,
    default_criteria_dir,
    format_number,
    load_file,
    load_sets,
    score,
)

DATA = Path(__file__).parent / "data"
EXAMPLES = DATA / "criteria_examples"
BROKEN = DATA / "criteria_broken"
LOCAL = DATA / "criteria_local"
TITLES = ("gia_dinh", "dong_ho", "cong_dong", "don_vi", "cong_dan")


def _example_files() -> list[tuple[str, tuple[str, ...], dict[str, Any]]]:
    cases = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for example in doc["examples"]:
            cases.append((doc["title"], tuple(doc.get("local", ())), example))
    return cases


CASES = _example_files()


@pytest.fixture(scope="module")
def criteria_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's national files with the test supplements as local/."""
    directory = tmp_path_factory.mktemp("criteria")
    for path in default_criteria_dir().glob("*.yaml"):
        shutil.copy(path, directory / path.name)
    shutil.copytree(LOCAL, directory / "local")
    return directory


# ---------------------------------------------------------------------------------------------- loading


def test_every_shipped_file_loads() -> None:
    sets = load_sets()
    assert sorted(sets) == sorted(TITLES)
    for title, cset in sets.items():
        assert cset.max_points == 100
        assert cset.max_points == sum(c.max_points for c in cset.criteria)
        assert cset.origin == (str(default_criteria_dir() / f"{title}.yaml"),)


def test_shipped_local_supplements_load() -> None:
    local = default_criteria_dir() / "local"
    codes = sorted(str(p.parent.relative_to(local)) for p in local.rglob("*.yaml")) if local.is_dir() else []
    for code in codes:
        load_sets(local=[code])


def test_cong_dan_addresses_people_as_anh_chi() -> None:
    for criterion in load_sets()["cong_dan"].criteria:
        assert "bạn" not in criterion.question.lower()
        assert "Anh/Chị" in criterion.question


def test_loaded_fields() -> None:
    cset = load_file(default_criteria_dir() / "cong_dong.yaml")
    v2 = cset.get("v2")
    assert (v2.answer, v2.computed, v2.not_applicable, v2.max_points) == (
        "share",
        "village_clans_recognised",
        "full",
        15,
    )
    assert [(t.min, t.points) for t in v2.tiers] == [(65, 15), (50, 5)]
    v4 = cset.get("v4")
    assert (v4.min, v4.max, v4.evidence) == (0, 366, "optional")
    assert cset.get("v3").evidence == "required"
    assert cset.pass_rule.mandatory == ("v6",)
    with pytest.raises(KeyError):
        cset.get("v99")
    don_vi = load_sets()["don_vi"]
    assert [(g.min, g.label) for g in don_vi.pass_rule.grades] == [
        (85, "Tốt"),
        (70, "Khá"),
        (50, "Trung bình"),
        (0, "Không đạt"),
    ]
    assert load_sets()["cong_dan"].pass_rule.min_points_each == 5


@pytest.mark.parametrize("path", sorted(BROKEN.glob("*.yaml")), ids=lambda p: p.stem)
def test_broken_file_is_refused(path: Path) -> None:
    expected = [
        line.removeprefix("# expect: ")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("# expect: ")
    ]
    assert expected, "a broken example must say what it expects"
    with pytest.raises(CriteriaError) as caught:
        load_file(path)
    for text in expected:
        assert text in str(caught.value)


def test_broken_file_in_a_directory_refuses_the_whole_load(tmp_path: Path) -> None:
    shutil.copy(default_criteria_dir() / "gia_dinh.yaml", tmp_path / "gia_dinh.yaml")
    shutil.copy(BROKEN / "duplicate_id.yaml", tmp_path / "dong_ho.yaml")
    with pytest.raises(CriteriaError, match=r"dong_ho\.yaml: criterion c1: id is given twice"):
        load_sets(tmp_path)


# ---------------------------------------------------------------------------------------------- local supplements


def test_local_supplements_merge_in_order(criteria_dir: Path) -> None:
    national = load_sets(criteria_dir)["gia_dinh"]
    province = load_sets(criteria_dir, local=["31"])["gia_dinh"]
    commune = load_sets(criteria_dir, local=["31", "31/10999"])["gia_dinh"]

    assert (province.max_points, province.pass_rule.min_points) == (110, 88)
    assert province.pass_rule.mandatory == national.pass_rule.mandatory == ("c1_1", "c2_1")
    assert province.ids == (*national.ids, "c5_1")
    assert province.get("c5_1").source == "L31"
    assert province.version == "qd448-2016+31"
    assert province.origin == (
        str(criteria_dir / "gia_dinh.yaml"),
        str(criteria_dir / "local" / "31" / "gia_dinh.yaml"),
    )

    assert commune.ids == province.ids  # replaced in place, not appended
    assert commune.get("c3_2").answer == "yes_no"
    assert commune.get("c3_2").evidence == "required"
    assert commune.pass_rule.mandatory == ("c1_1", "c2_1", "c5_1")
    assert commune.pass_rule.min_points == 88
    assert len(commune.origin) == 3


def test_local_pass_change_only(criteria_dir: Path) -> None:
    cong_dan = load_sets(criteria_dir, local=["31"])["cong_dan"]
    assert (cong_dan.pass_rule.min_points, cong_dan.pass_rule.min_points_each) == (70, 5)
    assert cong_dan.criteria == load_sets(criteria_dir)["cong_dan"].criteria


def test_local_remove(criteria_dir: Path) -> None:
    dong_ho = load_sets(criteria_dir, local=["33"])["dong_ho"]
    assert "d6" not in dong_ho.ids
    assert dong_ho.max_points == 90


def test_local_code_without_folder_adds_nothing(criteria_dir: Path) -> None:
    assert load_sets(criteria_dir, local=["99"]) == load_sets(criteria_dir)


def test_local_max_points_mismatch_is_refused(criteria_dir: Path) -> None:
    broken = criteria_dir / "local" / "32" / "gia_dinh.yaml"
    with pytest.raises(CriteriaError) as caught:
        load_sets(criteria_dir, local=["32"])
    assert str(caught.value) == f"{broken}: max_points is 100 but the criteria add up to 110"


def test_local_supplement_for_unknown_title_is_refused(tmp_path: Path) -> None:
    shutil.copy(default_criteria_dir() / "gia_dinh.yaml", tmp_path / "gia_dinh.yaml")
    (tmp_path / "local" / "31").mkdir(parents=True)
    shutil.copy(LOCAL / "33" / "dong_ho.yaml", tmp_path / "local" / "31" / "dong_ho.yaml")
    with pytest.raises(CriteriaError, match=r"dong_ho\.yaml: no national criteria set 'dong_ho' to extend"):
        load_sets(tmp_path, local=["31"])


def test_local_remove_of_mandatory_criterion_is_refused(tmp_path: Path) -> None:
    shutil.copy(default_criteria_dir() / "gia_dinh.yaml", tmp_path / "gia_dinh.yaml")
    (tmp_path / "local" / "31").mkdir(parents=True)
    supplement = tmp_path / "local" / "31" / "gia_dinh.yaml"
    supplement.write_text("schema: 1\nextends: gia_dinh\nremove: [c2_1]\nmax_points: 90\n", encoding="utf-8")
    with pytest.raises(CriteriaError) as caught:
        load_sets(tmp_path, local=["31"])
    assert (
        str(caught.value)
        == f"{supplement}: criterion c2_1: listed in pass.mandatory but there is no such criterion"
    )


# ---------------------------------------------------------------------------------------------- worked examples


def test_enough_worked_examples_per_title() -> None:
    national = Counter(title for title, local, _ in CASES if not local)
    assert {title: national[title] >= 10 for title in TITLES} == dict.fromkeys(TITLES, True)
    assert any(local for _, local, _ in CASES)


@pytest.mark.parametrize(
    ("title", "local", "example"),
    CASES,
    ids=[f"{title}{'+' + '+'.join(local) if local else ''}: {ex['name']}" for title, local, ex in CASES],
)
def test_worked_example(
    criteria_dir: Path, title: str, local: tuple[str, ...], example: dict[str, Any]
) -> None:
    cset = load_sets(criteria_dir, local=local)[title]
    result = score(cset, example["answers"], example.get("computed"))
    by_id = {c.id: c for c in result.criteria}

    assert result.title == title
    assert result.total == example["total"]
    assert result.total == sum(c.points for c in result.criteria)
    assert result.max == example.get("max", cset.max_points)
    if "passed" in example:
        assert result.passed is example["passed"]
    if "grade" in example:
        assert result.grade == example["grade"]
    if "reasons" in example:
        assert list(result.failed_reasons) == example["reasons"]
    assert result.passed is (not result.failed_reasons)
    assert list(result.unknown) == example.get("unknown", [])
    for cid, state in example.get("states", {}).items():
        assert (cid, by_id[cid].state) == (cid, state)
    for cid, points in example.get("points", {}).items():
        assert (cid, by_id[cid].points) == (cid, points)
    for cid, met in example.get("met", {}).items():
        assert (cid, by_id[cid].met) == (cid, met)
    for cid, reason in example.get("criterion_reasons", {}).items():
        assert (cid, by_id[cid].reason) == (cid, reason)
    for item in result.criteria:
        assert item.met is (item.points > 0)
        assert (item.reason == "") is item.met


# ---------------------------------------------------------------------------------------------- results


def test_to_json() -> None:
    cset = load_sets()["gia_dinh"]
    data = score(cset, {"c1_1": "na", "c2_1": True, "c2_2": 50.0, "zz": 1}).to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["title"] == "gia_dinh"
    assert (data["total"], data["max"], data["passed"], data["grade"]) == (25, 100, False, None)
    assert data["criteria"][0] == {
        "id": "c1_1",
        "points": 10,
        "max": 10,
        "met": True,
        "state": "na",
        "reason": "",
    }
    assert data["criteria"][4] == {
        "id": "c2_2",
        "points": 5,
        "max": 10,
        "met": True,
        "state": "ok",
        "reason": "",
    }
    assert data["criteria"][1] == {
        "id": "c1_2",
        "points": 0,
        "max": 10,
        "met": False,
        "state": "missing",
        "reason": "Chưa trả lời",
    }
    assert data["reasons"] == ["Tổng điểm 25/100, cần 80"]
    assert data["unknown"] == ["zz"]
    assert isinstance(data["total"], int)


def test_format_number() -> None:
    assert [format_number(v) for v in (0, 80, 80.0, 1000, 12345, 75.5, 0.25)] == [
        "0",
        "80",
        "80",
        "1.000",
        "12.345",
        "75,5",
        "0,25",
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.just("na"),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def answers_for(draw: st.DrawFn, cset: CriteriaSet) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = st.sampled_from([*cset.ids, "zz", ""]) | st.text(max_size=5)
    answers = draw(st.dictionaries(keys, json_values, max_size=12))
    computed_keys = [c.computed for c in cset.criteria if c.computed] or ["x"]
    computed = draw(st.dictionaries(st.sampled_from(computed_keys), json_values, max_size=2))
    return answers, computed


SETS = load_sets()


@pytest.mark.parametrize("title", TITLES)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_score_never_raises(title: str, data: st.DataObject) -> None:
    cset = SETS[title]
    answers, computed = data.draw(answers_for(cset))
    result = score(cset, answers, computed)
    assert 0 <= result.total <= result.max
    assert [c.id for c in result.criteria] == list(cset.ids)
    assert all(c.state in ("ok", "missing", "invalid", "na") for c in result.criteria)
    json.dumps(result.to_json())
