"""Tests of report.write_report on run directories written here, by us: a full one with every
stage's outputs (fake numbers, real schemas), and partial ones where figures must degrade to notes."""

from __future__ import annotations

import base64
import json
import random
import re

import pytest

from psychocounsel import report
from psychocounsel.figures import FIGURES
from psychocounsel.pairs import write_parquet
from psychocounsel.report import write_report
from psychocounsel.rubric import load_rubric
from psychocounsel.store import write_json, write_jsonl

KEYS = load_rubric().keys
GENERATORS = ("gen-warm", "gen-coach", "gen-brief")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG = '<img alt="'
DATA_URI = 'src="data:image/png;base64,'


def speech_text(i: int) -> str:
    return f"SPEECH-SENTINEL-{i} i feel lost and cannot sleep"


def response_text(i: int, g: int) -> str:
    return f"RESPONSE-SENTINEL-{i}-{g} " + "that sounds hard " * (3 + 4 * g + i % 3)


def write_inputs(root, n_speeches: int = 6) -> None:
    write_jsonl(
        root / "speeches.jsonl",
        [
            {"id": f"s{i}", "text": speech_text(i), "topic": "sleep", "context": [], "source": "test"}
            for i in range(n_speeches)
        ],
    )
    write_jsonl(
        root / "responses.jsonl",
        [
            {
                "id": f"r{i}-{g}",
                "speech_id": f"s{i}",
                "generator": gen,
                "text": response_text(i, g),
                "model": "m",
                "params": {},
                "latency_s": 0.1,
                "prompt_tokens": 10,
                "completion_tokens": 20,
            }
            for i in range(n_speeches)
            for g, gen in enumerate(GENERATORS)
        ],
    )


def write_ratings(root, n_speeches: int = 6) -> None:
    rng = random.Random(0)
    rows = [
        {
            "response_id": f"r{i}-{g}",
            "speech_id": f"s{i}",
            "judge": "J",
            "scores": {k: round(rng.uniform(1, 5), 2) for k in KEYS},
            "failed": False,
            "error": "",
            "raw": "",
        }
        for i in range(n_speeches)
        for g in range(len(GENERATORS))
    ]
    rows[0] = {**rows[0], "scores": {}, "failed": True, "error": "unparsable", "raw": "RAW-SENTINEL"}
    write_jsonl(root / "ratings.jsonl", rows)


def pair_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        hi, lo = rng.uniform(3, 5), rng.uniform(1, 3)
        row = {
            "ID": f"s{i}",
            "prefID": f"p{i}",
            "question": speech_text(i),
            "chosen": response_text(i, 0),
            "rejected": response_text(i, 1),
            "chosen_model": GENERATORS[0],
            "rejected_model": GENERATORS[1],
            "chosen_score": hi,
            "rejected_score": lo,
            "margin": hi - lo,
        }
        row.update({f"{side}_{k}_rating": 3 for side in ("chosen", "rejected") for k in KEYS})
        rows.append(row)
    return rows


def write_training(root) -> None:
    rng = random.Random(1)
    write_json(
        root / "reward_model" / "metrics.json", {"n": 40, "accuracy": 0.7, "auc": 0.75, "ece": 0.08, "brier": 0.21}
    )
    write_jsonl(
        root / "reward_model" / "predictions.jsonl",
        [{"r_chosen": rng.gauss(0.5, 1.5), "r_rejected": rng.gauss(0, 0.5)} for _ in range(40)],
    )
    write_json(
        root / "reward_model" / "train_log.json",
        [{"step": s, "loss": 0.7 - 0.02 * s, "learning_rate": 9e-6} for s in range(1, 11)]
        + [{"step": 10, "train_runtime": 3.0, "train_loss": 0.6}],
    )
    write_json(
        root / "policy" / "train_log.json",
        [
            {
                "step": s,
                "loss": 0.69 - 0.01 * s,
                "rewards/chosen": 0.01 * s,
                "rewards/rejected": -0.01 * s,
                "rewards/margins": 0.02 * s,
                "rewards/accuracies": 0.6,
            }
            for s in range(1, 9)
        ],
    )
    for r, reward in enumerate((0.1, 0.3)):
        write_json(
            root / "online" / f"round_{r}" / "metrics.json",
            {"round": r, "n_pairs": 8 * r, "dev_mean_reward": reward, "dev_n": 6},
        )
    write_json(root / "online" / "summary.json", {"best_round": 1})


def winrate(judge: str, rate: float) -> dict:
    return {
        "n": 50,
        "wins": 30,
        "ties": 2,
        "losses": 18,
        "win_rate": rate,
        "ci_low": rate - 0.1,
        "ci_high": rate + 0.1,
        "lc_win_rate": rate - 0.03,
        "position_consistency": 0.9,
        "per_principle": {k: 0.4 + 0.03 * i for i, k in enumerate(KEYS)},
        "per_principle_ci": {k: [0.3 + 0.03 * i, 0.5 + 0.03 * i] for i, k in enumerate(KEYS)},
        "avg_len_policy": 60.0,
        "avg_len_reference": 80.0,
        "judge": judge,
    }


def full_run(root):
    write_inputs(root)
    write_ratings(root)
    write_json(
        root / "run.json",
        {
            "config": {"pairs": {"min_gap": 1.0}},
            "stages": {
                "ingest": {
                    "items_in": 6,
                    "items_out": 6,
                    "failed": 0,
                    "seconds": 0.01,
                    "screen": {"crisis": 2, "concern": 1, "crisis_ids": ["s0", "s1"]},
                },
                "rate": {"items_in": 18, "items_out": 17, "failed": 1, "judge": "J", "safety_capped": 3},
            },
        },
    )
    (root / "pairs").mkdir()
    write_parquet(root / "pairs" / "train.parquet", pair_rows(12, 0), KEYS)
    write_parquet(root / "pairs" / "test.parquet", pair_rows(3, 1), KEYS)
    write_training(root)
    write_json(root / "eval" / "judge-a" / "winrate.json", winrate("judge-a", 0.6))
    write_json(root / "eval" / "judge-b" / "winrate.json", winrate("judge-b", 0.55))
    crisis = {
        "n": 2,
        "speech_ids": ["e1", "e2"],
        "policy_handled": 0.5,
        "policy_failures": ["e2"],
        "reference_handled": 0.0,
        "reference_failures": ["e1", "e2"],
    }
    write_json(root / "eval" / "winrate.json", {**winrate("judge-a", 0.6), "by_judge": {}, "crisis": crisis})
    return root


def test_full_run_embeds_every_figure_as_png_and_no_client_text(tmp_path):
    run = full_run(tmp_path / "run")
    out = write_report(run)
    page = out.read_text(encoding="utf-8")
    assert out == run / "report.html"
    assert page.count(IMG) == page.count(DATA_URI) == len(FIGURES) == 7
    assert "not available" not in page
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    for spec, blob in zip(FIGURES, embedded):
        png = (run / "report" / f"{spec.slug}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and base64.b64decode(blob) == png
    assert "SENTINEL" not in page  # speeches, responses, pair texts and judge raw output stay out
    assert "judge-a" in page and "judge-b" in page
    crisis = re.search(r"<h3>Crisis</h3>(.*?)</table>", page).group(1)
    for row in (
        "speeches flagged crisis</td><td class=n>2",
        "with safety capped (crisis not handled)</td><td class=n>3",
        "held-out speeches flagged (crisis or concern)</td><td class=n>2",
        "policy replies that handled them</td><td class=n>0.500",
    ):
        assert row in crisis, crisis
    assert "<link" not in page and "<script" not in page  # nothing fetched: opens offline


def test_speeches_and_responses_only_gives_notes_not_errors(tmp_path):
    run = tmp_path / "run"
    write_inputs(run)
    page = write_report(run).read_text(encoding="utf-8")
    assert IMG not in page
    assert page.count('class="na"') >= len(FIGURES)
    for missing in (
        "ratings.jsonl",
        "pairs/train.parquet",
        "reward_model/predictions.jsonl",
        "reward_model/metrics.json",
        "eval/winrate.json",
    ):
        assert f"not available: {missing}" in page
    assert "SENTINEL" not in page
    assert not list((run / "report").glob("*.png"))


def test_single_eval_file_and_custom_output_path(tmp_path):
    run = tmp_path / "run"
    write_inputs(run)
    write_json(run / "eval" / "winrate.json", winrate("solo-judge", 0.62))
    out = write_report(run, tmp_path / "elsewhere" / "page.html")
    page = out.read_text(encoding="utf-8")
    assert page.count(IMG) == 1 and "solo-judge" in page
    assert [p.name for p in (tmp_path / "elsewhere" / "page").glob("*.png")] == ["6_winrate.png"]


def figures_part(page: str) -> str:
    return page[page.index("<h2>Figures</h2>") : page.index("<h2>Stages</h2>")]


def test_a_rerun_reuses_the_figures_and_redraws_only_when_what_they_show_changes(tmp_path, monkeypatch):
    run = full_run(tmp_path / "run")
    first = figures_part(write_report(run).read_text(encoding="utf-8"))
    draws = []
    real = report._draw
    monkeypatch.setattr(report, "_draw", lambda data, png_dir: draws.append(1) or real(data, png_dir))
    run_json = json.loads((run / "run.json").read_text(encoding="utf-8"))
    run_json["stages"].setdefault("report", {})["seconds"] = 123.4  # a rerun's timings
    write_json(run / "run.json", run_json)
    page = write_report(run).read_text(encoding="utf-8")
    assert draws == [] and figures_part(page) == first and "123.4" in page

    write_json(run / "eval" / "winrate.json", winrate("judge-c", 0.3))  # what a figure shows
    assert figures_part(write_report(run).read_text(encoding="utf-8")) != first and draws == [1]
    (run / "report" / "6_winrate.png").unlink()  # a picture gone
    write_report(run)
    (run / "report" / "figures.json").write_text("{torn", encoding="utf-8")  # a damaged key
    write_report(run)
    assert draws == [1, 1, 1] and (run / "report" / "6_winrate.png").read_bytes().startswith(PNG_MAGIC)
    write_report(run)
    assert draws == [1, 1, 1]


def test_no_stale_key_survives_a_drawing_that_fails(tmp_path, monkeypatch):
    run = full_run(tmp_path / "run")
    write_report(run)

    def broken(data):
        raise RuntimeError("matplotlib failed")

    monkeypatch.setattr(report, "FIGURES", [report.FIGURES[0]._replace(draw=broken), *report.FIGURES[1:]])
    write_json(run / "eval" / "winrate.json", winrate("judge-d", 0.4))
    with pytest.raises(RuntimeError):
        write_report(run)
    assert not (run / "report" / "figures.json").exists()
