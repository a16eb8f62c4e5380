"""winrate: the policy against a reference on held-out speeches, judged in both orders.

1. Both sides answer every speech (each call cached in ``OUT/cache.sqlite``, so a rerun or a
   resumed run makes no call twice); answers go to ``OUT/responses.jsonl``.
2. Each judge compares the two answers with the policy as A and again with the policy as B. A
   win or loss counts only when both orders agree; anything else is a tie, worth half
   (``stats.combine_orders``). A judge that fails on an item (after its retries) drops that item
   from the judge's numbers, and the item is listed with its reason: never scored by default.
3. Per judge, ``OUT/<judge>/judgements.jsonl`` and ``OUT/<judge>/winrate.json`` with ``n``,
   ``wins``/``ties``/``losses``, ``win_rate`` and its bootstrap 95% CI, ``lc_win_rate``
   (``length_control``), ``per_principle`` (+ ``per_principle_ci``), ``position_consistency``,
   ``avg_len_policy``/``avg_len_reference`` (characters, as AlpacaEval counts) and ``judge``,
   ``standard_error`` (of the mean outcome, as AlpacaEval's) and for the LC rate a bootstrap over
   items refitting the GLM: ``lc_ci`` and ``lc_standard_error``;
   a reward-model judge adds the mean rewards, a rater judge the mean weighted scores. ``OUT/winrate.json`` is the first judge's,
   with every judge's headline under ``by_judge``. ``OUT/leaderboard.csv``: a row per judge (a
   panel is one) with AlpacaEval's leaderboard columns on its 0-100 scale (``leaderboard_row``).
4. ``crisis`` in ``OUT/winrate.json``: the speeches the crisis screen flags as a crisis, and per
   side the share of its answers that acknowledged the risk and pointed to immediate help
   (``policy_handled``, ``reference_handled``), with the ids of those that did not (crisis.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..config import BackendConfig, EvalConfig
from ..crisis import eval_section
from ..errors import UserError
from ..records import Speech
from ..store import Cache, stable_hash, write_json, write_jsonl

log = logging.getLogger(__name__)

CHUNK = 32  # speeches per generation call: a killed run keeps every finished chunk in the cache


# -- speeches ---------------------------------------------------------------------------------


def _speech(row: dict, n: int, where: str) -> Speech:
    text = row.get("text")
    if text is None and isinstance(row.get("turns"), list) and row["turns"]:
        text = row["turns"][0]  # MentalChat16K's evaluation questions: {"question_id", "turns": [speech]}
    if text is None:
        text = row.get("question") or row.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}:{n}: no speech text (need 'text', 'turns', 'question' or 'prompt')")
    sid = row.get("id", row.get("question_id"))
    return Speech(
        id=str(sid) if sid is not None else "s-" + stable_hash(text.strip(), 12),
        text=text.strip(),
        topic=row.get("topic") or row.get("category"),
        context=row.get("context") or [],
    )


def load_eval_speeches(path: str | Path, limit: int | None = None) -> list[Speech]:
    """Held-out speeches from JSONL: our ``speeches.jsonl`` rows, ``{text}`` rows, or
    MentalChat16K's ``{question_id, category, turns}``. Duplicate ids are an error."""
    from ..pairs_io import read_jsonl_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"speeches file not found: {path}")
    try:
        rows = read_jsonl_file(path)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 (byte offset {e.start}); re-encode it as UTF-8") from None
    speeches = [_speech(r, i, str(path)) for i, r in enumerate(rows, 1)]
    seen: set[str] = set()
    for s in speeches:
        if s.id in seen:
            raise UserError(f"{path}: speech id '{s.id}' appears twice")
        seen.add(s.id)
    if not speeches:
        raise UserError(f"{path} holds no speeches")
    return speeches[:limit] if limit else speeches


# -- answers ----------------------------------------------------------------------------------


def resolve_side(cfg: BackendConfig, run_dir: Path | None) -> BackendConfig:
    """``policy``/``online`` name this run's trained models; an existing folder means its model."""
    from ..specs import resolve_backend

    return cfg.model_copy(update={"spec": resolve_backend(cfg.spec, run_dir).text})


def answer(
    side: str, backend_cfg: BackendConfig, speeches: list[Speech], cfg: EvalConfig, cache: Cache
) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    """One answer per speech from ``backend_cfg``, and (calls made, calls cached); failed calls
    raise (a win rate with holes on one side only would be biased)."""
    from ..backends import ChatRequest, load_backend
    from ..cleaning import trim_incomplete
    from ..progress import bar

    backend = load_backend(backend_cfg, cache)
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    params = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "seed": cfg.seed}
    rows: list[dict[str, Any]] = []
    try:
        with bar(len(speeches), f"answers ({side})") as progress:
            for start in range(0, len(speeches), CHUNK):
                chunk = speeches[start : start + CHUNK]
                done = backend.complete(
                    [ChatRequest(system + s.messages(), dict(params)) for s in chunk], progress=progress.update
                )
                for s, c in zip(chunk, done):
                    if c.error:
                        raise UserError(
                            f"{side} failed to answer speech {s.id}: {c.error}; rerun to retry "
                            "(finished answers are cached)"
                        )
                    text = trim_incomplete(c.text) if cfg.trim_incomplete else c.text.strip()
                    rows.append(
                        {
                            "speech_id": s.id,
                            "side": side,
                            "model": backend_cfg.spec,
                            "text": text,
                            "completion_tokens": c.completion_tokens,
                        }
                    )
    finally:
        backend.close()
    return rows, (backend.calls_made, backend.calls_cached)


# -- judging ----------------------------------------------------------------------------------


def judge_items(judge, speeches: list[Speech], policy: dict[str, str], reference: dict[str, str]) -> list[dict]:
    """Both orders for every speech; one row per speech with the verdicts mapped to sides."""
    from ..judge.pairwise import Comparison
    from .stats import AS_SIDE

    items = [Comparison(speech=s, a=policy[s.id], b=reference[s.id], id=f"{s.id}:pr") for s in speeches]
    verdicts = judge.compare(items + [it.swapped(":rp") for it in items])
    n = len(speeches)
    rows = []
    for i, s in enumerate(speeches):
        first, second = verdicts[i], verdicts[n + i]
        row: dict[str, Any] = {
            "speech_id": s.id,
            "len_policy": len(policy[s.id]),
            "len_reference": len(reference[s.id]),
        }
        failed = [v.error or "failed" for v in (first, second) if v.failed or v.overall is None]
        if failed:
            rows.append({**row, "failed": True, "error": "; ".join(failed)})
            continue
        row["orders"] = [AS_SIDE[0][first.overall], AS_SIDE[1][second.overall]]
        row["per_principle"] = {
            k: [AS_SIDE[0][first.per_principle[k]], AS_SIDE[1][second.per_principle[k]]]
            for k in first.per_principle
            if k in second.per_principle
        }
        if first.scores and second.scores:  # a scoring judge: the policy is a in order 1, b in order 2
            row["score_policy"] = (first.scores["a"] + second.scores["b"]) / 2
            row["score_reference"] = (first.scores["b"] + second.scores["a"]) / 2
        rows.append({**row, "failed": False})
    return rows


# -- numbers ----------------------------------------------------------------------------------


def summarize(
    rows: list[dict], judge_name: str, n_boot: int = 2000, seed: int = 0, score_name: str = "mean_score"
) -> dict[str, Any]:
    """winrate.json from the judged rows (failed rows are counted and listed, not scored);
    ``score_name`` names the judge's mean scores (``mean_reward`` for a reward model)."""
    import numpy as np

    from .length_control import bootstrap_lc, lc_win_rate
    from .stats import (
        bootstrap_ci,
        combine_orders,
        counts,
        outcome_value,
        position_consistency,
        standard_error,
        win_rate,
    )

    ok = [r for r in rows if not r["failed"]]
    if not ok:
        raise UserError(f"judge {judge_name} failed on every item; see judgements.jsonl for the reasons")
    verdicts = [combine_orders(*r["orders"]) for r in ok]
    values = [outcome_value(v) for v in verdicts]
    low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {
        "n": len(ok),
        **counts(verdicts),
        "win_rate": win_rate(verdicts),
        "ci_low": low,
        "ci_high": high,
        "standard_error": standard_error(values),
    }
    lengths = [r["len_policy"] for r in ok], [r["len_reference"] for r in ok]
    out["lc_win_rate"] = lc_win_rate(values, *lengths)
    lc_boot = bootstrap_lc(values, *lengths, n_boot=n_boot, seed=seed)
    out["lc_ci"] = [lc_boot["ci_low"], lc_boot["ci_high"]]
    out["lc_standard_error"] = lc_boot["standard_error"]
    per, per_ci = {}, {}
    for key in sorted({k for r in ok for k in r["per_principle"]}):
        vals = [outcome_value(combine_orders(*r["per_principle"][key])) for r in ok if key in r["per_principle"]]
        per[key] = float(np.mean(vals))
        per_ci[key] = list(bootstrap_ci(vals, n_boot=n_boot, seed=seed))
    out.update(
        per_principle=per,
        per_principle_ci=per_ci,
        position_consistency=position_consistency([tuple(r["orders"]) for r in ok]),
        avg_len_policy=float(np.mean([r["len_policy"] for r in ok])),
        avg_len_reference=float(np.mean([r["len_reference"] for r in ok])),
        judge=judge_name,
        failed=len(rows) - len(ok),
        failures=[{"speech_id": r["speech_id"], "error": r["error"]} for r in rows if r["failed"]],
    )
    if all("score_policy" in r for r in ok):  # a reward model's rewards, or a rater's weighted means
        name = score_name
        out[f"{name}_policy"] = float(np.mean([r["score_policy"] for r in ok]))
        out[f"{name}_reference"] = float(np.mean([r["score_reference"] for r in ok]))
    return out


# eval/leaderboard.csv: AlpacaEval's leaderboard columns, on its 0-100 scale, one row per judge.
LEADERBOARD = (
    "judge",
    "win_rate",
    "standard_error",
    "n_wins",
    "n_wins_base",
    "n_draws",
    "n_total",
    "length_controlled_winrate",
    "lc_standard_error",
    "avg_length",
    "generator",
    "reference",
)


def leaderboard_row(result: dict[str, Any]) -> dict[str, Any]:
    """One judge's winrate.json as a leaderboard row: rates and standard errors times 100, as
    AlpacaEval reports them; ``avg_length`` is the policy's mean answer length in characters.

    >>> row = leaderboard_row({"judge": "j", "win_rate": 0.625, "standard_error": 0.1, "wins": 2, "losses": 1,
    ...     "ties": 1, "n": 4, "lc_win_rate": 0.6, "lc_standard_error": 0.12, "avg_len_policy": 210.5})
    >>> row["win_rate"], row["n_wins_base"], row["length_controlled_winrate"], row["lc_standard_error"]
    (62.5, 1, 60.0, 12.0)
    """
    return {
        "judge": result["judge"],
        "win_rate": 100 * result["win_rate"],
        "standard_error": 100 * result["standard_error"],
        "n_wins": result["wins"],
        "n_wins_base": result["losses"],
        "n_draws": result["ties"],
        "n_total": result["n"],
        "length_controlled_winrate": 100 * result["lc_win_rate"],
        "lc_standard_error": 100 * result["lc_standard_error"],
        "avg_length": result["avg_len_policy"],
        "generator": result.get("policy", ""),
        "reference": result.get("reference", ""),
    }


def write_leaderboard(path: Path, results: list[dict[str, Any]]) -> None:
    """``path`` (CSV, written whole then renamed into place): a row per judge that scored items;
    a judge that failed on every item has no row (its winrate.json says why)."""
    import csv
    import os

    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LEADERBOARD)
        writer.writeheader()
        writer.writerows(leaderboard_row(r) for r in results if "win_rate" in r)
    os.replace(tmp, path)


HEADLINE = ("n", "wins", "ties", "losses", "win_rate", "ci_low", "ci_high", "lc_win_rate", "position_consistency")


def _judge_all(
    judge, speeches: list[Speech], text: dict[str, dict[str, str]], out: Path, first: bool, cfg: EvalConfig
) -> dict[str, Any]:
    """One judge's judgements.jsonl under OUT/<slug of its name>, and its result (winrate.json's content)."""
    from ..specs import slug

    label = slug(judge.name)
    log.info("judging %d speeches in both orders with %s", len(speeches), judge.name)
    rows = judge_items(judge, speeches, text["policy"], text["reference"])
    write_jsonl(out / label / "judgements.jsonl", rows)
    if not first and all(r["failed"] for r in rows):  # a later judge gave nothing: say so, keep the rest
        reasons = sorted({r["error"] for r in rows})
        log.warning(
            "%s failed on all %d items (e.g. %s); see %s",
            label,
            len(rows),
            reasons[0],
            out / label / "judgements.jsonl",
        )
        result = {"judge": judge.name, "n": 0, "failed": len(rows), "error": reasons[0]}
    else:
        score_name = "mean_reward" if getattr(judge, "scores_are", "") == "reward" else "mean_score"
        result = summarize(rows, judge.name, cfg.n_boot, cfg.seed, score_name)
        log.info(
            "%s: win rate %.3f [%.3f, %.3f], LC %.3f, %d/%d/%d, position consistency %.2f",
            label,
            result["win_rate"],
            result["ci_low"],
            result["ci_high"],
            result["lc_win_rate"],
            result["wins"],
            result["ties"],
            result["losses"],
            result["position_consistency"],
        )
    return result


def run(
    cfg: EvalConfig, out: Path, run_dir: Path | None = None, rubric_path: Path | None = None, meter=None
) -> dict[str, Any]:
    """Answer, judge with every judge of ``cfg``, write the files; returns OUT/winrate.json's content.
    ``meter`` (backends.cached.Meter): counts tokens and cost, and stops before max_cost."""
    from ..judge import build_judge
    from ..rubric import load_rubric
    from ..specs import slug

    out = Path(out)
    speeches = load_eval_speeches(cfg.speeches, cfg.limit)
    sides = {"policy": resolve_side(cfg.policy, run_dir), "reference": resolve_side(cfg.reference, run_dir)}
    rubric = load_rubric(rubric_path)
    out.mkdir(parents=True, exist_ok=True)
    cache = Cache(out / "cache.sqlite", meter=meter)
    made = cached = 0
    try:
        answers = {}
        for side, backend_cfg in sides.items():
            answers[side], (m, c) = answer(side, backend_cfg, speeches, cfg, cache)
            made, cached = made + m, cached + c
        write_jsonl(out / "responses.jsonl", answers["policy"] + answers["reference"])
        text = {side: {r["speech_id"]: r["text"] for r in rows} for side, rows in answers.items()}
        results = {}
        for jcfg in cfg.judges:
            judge = build_judge(jcfg, rubric, cache, run_dir)
            try:
                result = _judge_all(judge, speeches, text, out, not results, cfg)
            finally:
                made, cached = made + judge.calls_made, cached + judge.calls_cached
                judge.close()
            if "win_rate" in result:
                result.update(policy=sides["policy"].spec, reference=sides["reference"].spec)
            write_json(out / slug(judge.name) / "winrate.json", result)
            results[slug(judge.name)] = result
    finally:
        cache.close()
    first = next(iter(results.values()))
    summary = {
        **first,
        "by_judge": {
            k: {h: v[h] for h in HEADLINE + ("judge", "failed", "error") if h in v} for k, v in results.items()
        },
        "crisis": eval_section(speeches, text),
    }
    write_json(out / "winrate.json", summary)
    write_leaderboard(out / "leaderboard.csv", list(results.values()))
    return {**summary, "calls_made": made, "calls_cached": cached, "n_speeches": len(speeches)}


def headline(summary: dict[str, Any]) -> str:
    return json.dumps({k: summary[k] for k in HEADLINE + ("judge",)})
