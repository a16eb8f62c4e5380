"""Tests of the rubric: the packaged file, the weighted score, and a one-line UserError for every
kind of malformed rubric, from load_rubric and from the command line. Rubrics are written here."""

from __future__ import annotations

import copy
import math

import pytest
import yaml

from psychocounsel import cli
from psychocounsel.errors import UserError
from psychocounsel.records import Rating, Response, Speech
from psychocounsel.rubric import DEFAULT_RUBRIC, PAPER_KEYS, Rubric, load_rubric
from psychocounsel.store import RunDir, append_jsonl, write_json

PACKAGED = yaml.safe_load(DEFAULT_RUBRIC.read_text(encoding="utf-8"))


def test_packaged_rubric_has_the_paper_keys_in_order():
    rubric = load_rubric()
    assert rubric.keys == list(PAPER_KEYS)
    assert rubric.name == "psychocounsel" and rubric.scale == (1, 5)
    for p in rubric.principles:
        assert p.name and p.definition and {1, 3, 5} <= set(p.anchors)


def test_packaged_rubric_weighs_principles_equally():
    weights = load_rubric().weights()
    assert list(weights) == list(PAPER_KEYS)
    assert all(w == pytest.approx(1 / 7) for w in weights.values())
    assert math.isclose(sum(weights.values()), 1.0)


def rubric_with(weights: dict[str, float]) -> Rubric:
    data = copy.deepcopy(PACKAGED)
    for p in data["principles"]:
        p["weight"] = weights.get(p["key"], 1)
    return Rubric.model_validate(data)


def test_score_is_the_weighted_mean():
    scores = {k: float(i + 1) for i, k in enumerate(PAPER_KEYS)}  # 1..7: empathy 1, staging 7
    assert load_rubric().score(scores) == pytest.approx(4.0)
    r = rubric_with({"empathy": 3, "staging": 0})
    # (3 * 1 + 2 + 3 + 4 + 5 + 6 + 0 * 7) / (3 + 5 + 0)
    assert r.score(scores) == pytest.approx(23 / 8)
    assert r.weights()["empathy"] == pytest.approx(3 / 8) and r.weights()["staging"] == 0
    assert rubric_with({"empathy": 0.5}).score({k: 5.0 for k in PAPER_KEYS}) == pytest.approx(5.0)


# -- malformed rubrics ------------------------------------------------------------------------


def edit(fn):
    """A rubric's YAML text: the packaged one changed by ``fn`` (which edits the dict in place)."""
    data = copy.deepcopy(PACKAGED)
    fn(data)
    return yaml.safe_dump(data, sort_keys=False)


def set_(path, value):
    def fn(data):
        *parents, last = path
        node = data
        for p in parents:
            node = node[p]
        node[last] = value

    return fn


def drop(path):
    def fn(data):
        *parents, last = path
        node = data
        for p in parents:
            node = node[p]
        del node[last]

    return fn


def all_weights(value):
    def fn(data):
        for p in data["principles"]:
            p["weight"] = value

    return fn


MALFORMED = {
    "invalid-yaml": ("principles: [\n  - key: empathy\n    name: : :\n", "not valid YAML"),
    "list": ("- key: empathy\n- key: safety\n", "a rubric is a mapping with a 'principles' list"),
    "scalar": ("just some text\n", "a rubric is a mapping"),
    "empty-file": ("", "a rubric is a mapping"),
    "missing-principles": (edit(drop(["principles"])), "principles: Field required"),
    "empty-principles": (edit(set_(["principles"], [])), "principles: List should have at least 1 item"),
    "principles-not-list": (edit(set_(["principles"], "empathy")), "principles: Input should be a valid list"),
    "unknown-principle-key": (edit(set_(["principles", 2, "colour"], "blue")), "principles.2.colour: unknown key"),
    "unknown-top-key": (edit(set_(["version"], 2)), "version: unknown key"),
    "missing-anchor-3": (
        edit(drop(["principles", 0, "anchors", 3])),
        "needs anchors for scores 1, 3 and 5 (missing [3])",
    ),
    "anchor-7": (
        edit(set_(["principles", 0, "anchors", 7], "Beyond perfect.")),
        "anchor scores must be between 1 and 5",
    ),
    "empty-anchor": (edit(set_(["principles", 1, "anchors", 5], "  ")), "anchor texts must be non-empty"),
    "duplicate-keys": (edit(set_(["principles", 1, "key"], "empathy")), "duplicate principle keys: empathy"),
    "negative-weight": (
        edit(set_(["principles", 3, "weight"], -1)),
        "principles.3.weight: Input should be greater than or equal to 0",
    ),
    "zero-weights": (edit(all_weights(0)), "at least one principle needs a positive weight"),
    "bad-key": (edit(set_(["principles", 0, "key"], "Empathy Score")), "principles.0.key: String should match pattern"),
    "scale-1-10": (edit(set_(["scale"], [1, 10])), "only the 1-5 scale is supported"),
    "scale-0-4": (edit(set_(["scale"], [0, 4])), "only the 1-5 scale is supported"),
    "missing-name": (edit(drop(["principles", 4, "name"])), "principles.4.name: Field required"),
    "empty-definition": (edit(set_(["principles", 0, "definition"], "")), "principles.0.definition"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_rubric_is_a_one_line_user_error(tmp_path, name):
    text, expected = MALFORMED[name]
    path = tmp_path / "rubric.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_rubric(path)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message


def test_missing_rubric_file(tmp_path):
    with pytest.raises(UserError, match=r"^rubric file not found: .*nope\.yaml$"):
        load_rubric(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="rubric file not found"):
        load_rubric(tmp_path)  # a folder is not a rubric file


def test_not_utf8_is_a_user_error(tmp_path):
    path = tmp_path / "rubric.yaml"
    path.write_bytes(b"name: \xff\xfe\x00bad\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_rubric(path)


def test_every_problem_is_named_at_once(tmp_path):
    data = copy.deepcopy(PACKAGED)
    data["principles"][0]["colour"] = "blue"
    data["principles"][5]["weight"] = -2
    path = tmp_path / "rubric.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_rubric(path)
    assert "principles.0.colour: unknown key" in str(info.value)
    assert "principles.5.weight" in str(info.value)


def test_valid_custom_rubric_with_two_anchors_more(tmp_path):
    text = """
name: mini
principles:
  - key: warmth_2
    name: Warmth
    definition: Sounds warm.
    anchors: {1: cold, 2: cool, 3: neutral, 4: kind, 5: warm}
    weight: 2
  - key: brevity
    name: Brevity
    definition: Says it briefly.
    anchors: {1: rambles, 3: ok, 5: crisp}
"""
    path = tmp_path / "mini.yaml"
    path.write_text(text, encoding="utf-8")
    rubric = load_rubric(path)
    assert rubric.keys == ["warmth_2", "brevity"]
    assert rubric.score({"warmth_2": 5, "brevity": 2}) == pytest.approx(4.0)


# -- the command line -------------------------------------------------------------------------


def minimal_run(root) -> RunDir:
    """A run directory that `psychocounsel pairs` accepts with the packaged rubric."""
    rundir = RunDir(root)
    append_jsonl(rundir.speeches, [Speech("s0", "I have been feeling low.").to_dict()])
    append_jsonl(rundir.responses, [Response(f"r{i}", "s0", f"g{i}", f"Reply {i}.", "m").to_dict() for i in (1, 2)])
    append_jsonl(
        rundir.ratings,
        [Rating(f"r{i}", "s0", "jk", scores={k: float(v) for k in PAPER_KEYS}).to_dict() for i, v in ((1, 5), (2, 2))],
    )
    write_json(rundir.run_json, {"stages": {"rate": {"judge": "jk"}}})
    return rundir


def test_cli_pairs_with_a_bad_rubric_exits_2_with_one_line(tmp_path, capsys):
    rundir = minimal_run(tmp_path / "run")
    bad = tmp_path / "bad.yaml"
    bad.write_text(edit(set_(["principles", 0, "key"], "Empathy Score")), encoding="utf-8")

    code = cli.main(["pairs", "--run-dir", str(rundir.root), "--rubric", str(bad), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("psychocounsel: error: rubric ")
    assert "principles.0.key: String should match pattern" in err
    assert err.count("\n") == 1 and err.endswith("\n")
    assert not rundir.pairs.exists()  # the rubric is checked before anything is written


def test_cli_pairs_with_a_missing_rubric_exits_2(tmp_path, capsys):
    rundir = minimal_run(tmp_path / "run")
    code = cli.main(["pairs", "--run-dir", str(rundir.root), "--rubric", str(tmp_path / "nope.yaml"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"psychocounsel: error: rubric file not found: {tmp_path / 'nope.yaml'}\n"


def test_cli_pairs_bad_rubric_is_reported_before_a_missing_run(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- not a mapping\n", encoding="utf-8")
    code = cli.main(["pairs", "--run-dir", str(tmp_path / "empty-run"), "--rubric", str(bad), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("psychocounsel: error:") and "a rubric is a mapping" in err
    assert "no speeches" not in err


def test_cli_pairs_with_a_good_rubric_succeeds(tmp_path, capsys):
    rundir = minimal_run(tmp_path / "run")
    good = tmp_path / "good.yaml"
    good.write_text(edit(all_weights(2)), encoding="utf-8")
    assert cli.main(["pairs", "--run-dir", str(rundir.root), "--rubric", str(good), "--test-fraction", "0", "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert (rundir.pairs / "train.parquet").is_file()
    assert RunDir(rundir.root).read_run_json()["stages"]["pairs"]["train_pairs"] == 1
