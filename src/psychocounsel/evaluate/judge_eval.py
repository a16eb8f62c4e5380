"""judge_eval: how well a pairwise judge agrees with human preference labels.

Labelled pairs come from a JSONL, CSV or Parquet file in one of two forms:

(a) ``question`` (or ``prompt``), ``chosen``, ``rejected``: the human prefers ``chosen``. So
    that the human label is not always "A", ``chosen`` is put in position A for a seeded random
    half of the rows (rounded up) and in position B for the rest.
(b) ``question`` (or ``prompt``), ``response_a``, ``response_b``, ``label`` with label A, B or
    tie (any case): ties allowed.

Each pair is judged in both orders (A/B and B/A) and the two verdicts are combined by the
both-order rule (``stats.combine_orders``): a side wins only when both orders agree, else tie.

Report: ``n`` (pairs scored), ``accuracy``, ``accuracy_strict``, ``accuracy_ci`` (bootstrap CI
of ``accuracy``), ``cohen_kappa`` (combined verdict against the human label over {A, B, tie}),
``position_consistency`` (share of pairs whose two orders agree), ``verdicts`` (counts of
combined A / B / tie), ``failed`` and ``failures`` (pairs the judge failed in either order, with
their 1-based row number and reason; they are left out of every metric), ``judge`` (its name).

Judges are known to prefer longer replies, so length is measured beside accuracy, on the same
scored pairs and with the same credit rule: ``longer_wins`` (accuracy of the baseline "the longer
reply in characters wins", equal length a tie), ``beats_longer_wins`` (``accuracy`` >
``longer_wins``), ``length_robust`` (``n``, ``accuracy``, ``accuracy_ci`` of the judge on the pairs
whose human-preferred reply is not the longer one: label A or B, preferred reply shorter or of equal
length; human ties are left out) and ``length_spearman`` (Spearman correlation of the combined
verdict as +1 A / 0 tie / -1 B with chars(A) - chars(B); null when undefined, e.g. a constant
verdict). ``length_warning`` words the flag the command prints when the judge does not beat the
baseline, or when the lower end of its accuracy's 95% interval does not.

``accuracy_strict`` is the share of pairs whose combined verdict equals the human label.
``accuracy`` is the same, except that when the data has no human ties a combined tie counts 0.5:
the judge declined to choose, which is neither right nor wrong (as a tie counts half in a win
rate). When the data has human ties, "tie" is a label the judge can get right, and ``accuracy``
equals ``accuracy_strict``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import JudgeEvalConfig
from ..errors import UserError
from ..records import Speech
from .stats import AS_SIDE, bootstrap_ci, cohen_kappa, combine_orders, position_consistency

LABELS = ("A", "B", "tie")
CHUNK = 64  # pairs per judge call: big enough to batch, small enough for a moving progress bar
_FORM_B = ("response_a", "response_b", "label")
_LABEL_WORDS = {"a": "A", "b": "B", "tie": "tie"}
# stats' terms treat the response first in position A as the "policy"; back to A/B/tie:
_FROM_POLICY = {"policy": "A", "reference": "B", "tie": "tie"}
_SIGN = {"A": 1, "tie": 0, "B": -1}  # a combined verdict as a preference for A, for length_spearman


def _label(value: Any, where: str, i: int) -> str:
    """A human label: A, B or tie in any case.

    >>> _label(" a ", "x", 0), _label("TIE", "x", 0)
    ('A', 'tie')
    >>> _label("C", "x.csv", 2)
    Traceback (most recent call last):
    ...
    psychocounsel.errors.UserError: x.csv: row 3 label 'C' is not A, B or tie
    """
    word = value.strip().lower() if isinstance(value, str) else None
    if word not in _LABEL_WORDS:
        raise UserError(f"{where}: row {i + 1} label {value!r} is not A, B or tie")
    return _LABEL_WORDS[word]


def normalize_labelled(rows: list[dict], where: str) -> list[dict]:
    """Form (a) rows as {prompt, chosen, rejected}; form (b) rows as {prompt, response_a,
    response_b, label}. Missing columns are a UserError naming them."""
    from ..pairs_io import normalize_rows, text_field

    if not rows:
        raise UserError(f"{where} has no rows")
    present = list(rows[0])
    if not any(c in present for c in _FORM_B):
        return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in normalize_rows(rows, where)]
    prompt_key = next((k for k in ("question", "prompt") if k in present), None)
    missing = [c for c in _FORM_B if c not in present] + ([] if prompt_key else ["question (or prompt)"])
    if missing:
        raise UserError(f"{where} lacks column(s) {', '.join(missing)}; columns present: {', '.join(present)}")
    return [
        {
            "prompt": text_field(r, prompt_key, where, i),
            "response_a": text_field(r, "response_a", where, i),
            "response_b": text_field(r, "response_b", where, i),
            "label": _label(r.get("label"), where, i),
        }
        for i, r in enumerate(rows)
    ]


def load_labelled_pairs(path: str | Path) -> list[dict]:
    """Human-labelled pairs from a .jsonl, .csv or .parquet file (see the module docstring)."""
    from ..pairs_io import read_table_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    return normalize_labelled(read_table_file(path), str(path))


def assign_positions(rows: list[dict], seed: int = 0) -> list[dict]:
    """Every row as {prompt, response_a, response_b, label}. Form (a) rows put ``chosen`` in
    position A for a random half of them (half rounded up, drawn with ``seed``), in B for the rest.

    >>> rows = [{"prompt": "p", "chosen": f"good {i}", "rejected": "bad"} for i in range(9)]
    >>> [r["label"] for r in assign_positions(rows, seed=0)].count("A")
    5
    >>> assign_positions(rows, seed=0) == assign_positions(rows, seed=0)
    True
    """
    plain = [i for i, row in enumerate(rows) if "label" not in row]
    chosen_first = set(random.Random(seed).sample(plain, (len(plain) + 1) // 2))
    out = []
    for i, row in enumerate(rows):
        if "label" in row:
            out.append({k: row[k] for k in ("prompt", "response_a", "response_b", "label")})
        elif i in chosen_first:
            out.append(
                {"prompt": row["prompt"], "response_a": row["chosen"], "response_b": row["rejected"], "label": "A"}
            )
        else:
            out.append(
                {"prompt": row["prompt"], "response_a": row["rejected"], "response_b": row["chosen"], "label": "B"}
            )
    return out


def _text(x: str | list[dict]) -> str:
    from ..reward_model import as_text

    return as_text(x)


def as_speech(prompt: str | list[dict], id: str) -> Speech:
    """A prompt (text, or a conversation whose last user turn is the speech) as a Speech.

    >>> s = as_speech([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
    ...                {"role": "user", "content": "I feel low"}], "row-1")
    >>> s.text, s.context_lines()
    ('I feel low', ['Client: hi', 'Counselor: hello'])
    """
    if isinstance(prompt, str):
        return Speech(id, prompt)
    turns = [m for m in prompt if m["role"] in ("user", "assistant")]
    last = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=None)
    if last is None:
        return Speech(id, _text(prompt))
    return Speech(id, turns[last]["content"], context=[dict(m) for m in turns[:last]])


def _judge_both_orders(judge, pairs: list[dict]) -> list[tuple[Any, Any]]:
    """(verdict with the row's A first, verdict with its B first) per pair, in chunks."""
    from ..judge.pairwise import Comparison
    from ..progress import bar

    out: list[tuple[Any, Any]] = []
    with bar(len(pairs), f"judging ({judge.name})") as progress:
        for start in range(0, len(pairs), CHUNK):
            chunk = pairs[start : start + CHUNK]
            items = [
                Comparison(
                    as_speech(p["prompt"], f"row-{start + i + 1}"),
                    _text(p["response_a"]),
                    _text(p["response_b"]),
                    f"row-{start + i + 1}:ab",
                )
                for i, p in enumerate(chunk)
            ]
            verdicts = judge.compare(items + [it.swapped() for it in items])
            if len(verdicts) != 2 * len(items):
                raise RuntimeError(f"judge {judge.name} returned {len(verdicts)} verdicts for {2 * len(items)} items")
            out.extend(zip(verdicts[: len(items)], verdicts[len(items) :]))
            progress.update(len(chunk))
    return out


def _failure(verdicts: tuple[Any, Any]) -> str | None:
    reasons = [
        f"{order}: {v.error or 'no verdict'}"
        for order, v in zip(("A/B", "B/A"), verdicts)
        if v.failed or v.overall not in LABELS
    ]
    return "; ".join(reasons) or None


def pair_verdicts(judge, rows: list[dict]) -> list[str | None]:
    """The judge's verdict on each row in form (b) (prompt, response_a, response_b), both orders
    combined as ``evaluate_judge`` combines them: A, B or tie; None where the judge failed."""
    out: list[str | None] = []
    for verdicts in _judge_both_orders(judge, rows):
        if _failure(verdicts):
            out.append(None)
            continue
        first, second = AS_SIDE[0][verdicts[0].overall], AS_SIDE[1][verdicts[1].overall]
        out.append(_FROM_POLICY[combine_orders(first, second)])
    return out


def longer_side(chars_a: int, chars_b: int) -> str:
    """The verdict of the "longer wins" baseline: the longer reply, a tie at equal length.

    >>> longer_side(12, 5), longer_side(5, 12), longer_side(7, 7)
    ('A', 'B', 'tie')
    """
    return "A" if chars_a > chars_b else "B" if chars_b > chars_a else "tie"


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation of ``x`` and ``y`` (scipy's, ties get mean ranks); None when
    it is undefined: fewer than two values, or either side constant.

    >>> round(spearman([1, 2, 3], [10, 30, 20]), 6)
    0.5
    >>> spearman([1, 1, 1], [1, 2, 3]) is None, spearman([1], [2]) is None
    (True, True)
    """
    import numpy as np
    from scipy.stats import spearmanr

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:  # scipy would warn and return nan
        return None
    rho = float(spearmanr(a, b).statistic)
    return None if math.isnan(rho) else rho


def _credit(verdicts: list[str], labels: list[str]) -> list[float]:
    """Credit per pair: 1 when the verdict is the label; a tie 0.5 when the humans never tie."""
    half = "tie" not in labels  # see the module docstring
    return [1.0 if v == h else 0.5 if half and v == "tie" else 0.0 for v, h in zip(verdicts, labels)]


def length_metrics(
    labels: list[str], combined: list[str], lengths: list[tuple[int, int]], seed: int = 0
) -> dict[str, Any]:
    """The length fields of the module docstring: ``combined`` verdicts against the human
    ``labels``, with ``lengths`` the (chars of A, chars of B) of each pair.

    >>> m = length_metrics(["A", "B", "A", "B"], ["A", "B", "tie", "B"], [(9, 4), (3, 8), (2, 6), (5, 5)])
    >>> m["longer_wins"], m["beats_longer_wins"], m["length_robust"]
    (0.625, True, {'n': 2, 'accuracy': 0.75, 'accuracy_ci': [0.5, 1.0]})
    """
    credit = _credit(combined, labels)
    baseline = _credit([longer_side(a, b) for a, b in lengths], labels)
    robust = [c for c, h, (a, b) in zip(credit, labels, lengths) if (h == "A" and a <= b) or (h == "B" and b <= a)]
    longer_wins = sum(baseline) / len(baseline)
    return {
        "longer_wins": longer_wins,
        "beats_longer_wins": sum(credit) / len(credit) > longer_wins,
        "length_robust": {
            "n": len(robust),
            "accuracy": sum(robust) / len(robust) if robust else None,
            "accuracy_ci": list(bootstrap_ci(robust, seed=seed)) if robust else None,
        },
        "length_spearman": spearman([_SIGN[c] for c in combined], [a - b for a, b in lengths]),
    }


def length_warning(report: dict[str, Any], where: str = "these pairs") -> str | None:
    """The flag line for a report whose judge does not beat "longer wins", or beats it only by
    less than its accuracy's 95% interval can tell; None when it is clear of it. ``where`` names
    the pairs in the line (``benchmarks/judge_agreement.py`` passes each set's name).

    >>> length_warning({"judge": "j", "accuracy": 0.61, "longer_wins": 0.65, "beats_longer_wins": False})
    'warning: judge j does not beat "longer wins" (0.61 vs 0.65) on these pairs'
    >>> length_warning({"judge": "j", "accuracy": 0.504, "accuracy_ci": [0.46, 0.55], "longer_wins": 0.502,
    ...                 "beats_longer_wins": True})
    'warning: judge j is not clear of "longer wins" (0.50 [0.46, 0.55] vs 0.50) on these pairs'
    >>> length_warning({"judge": "j", "accuracy": 0.7, "accuracy_ci": [0.66, 0.74], "longer_wins": 0.65,
    ...                 "beats_longer_wins": True}) is None
    True
    """
    if report.get("beats_longer_wins") is None:
        return None
    if report["beats_longer_wins"] is False:
        return (
            f'warning: judge {report["judge"]} does not beat "longer wins" '
            f"({report['accuracy']:.2f} vs {report['longer_wins']:.2f}) on {where}"
        )
    ci = report.get("accuracy_ci")
    if ci and ci[0] <= report["longer_wins"]:
        return (
            f'warning: judge {report["judge"]} is not clear of "longer wins" '
            f"({report['accuracy']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] vs {report['longer_wins']:.2f}) on {where}"
        )
    return None


def agreement_metrics(
    labels: list[str], firsts: list[str], seconds: list[str], lengths: list[tuple[int, int]], seed: int = 0
) -> dict[str, Any]:
    """The metrics of the module docstring for pairs the judge answered, verdicts in A/B/tie
    with ``seconds`` already judged in the swapped order (B/A); ``lengths`` are the (chars of A,
    chars of B) of each pair.

    >>> m = agreement_metrics(["A", "B", "A"], ["A", "B", "A"], ["A", "A", "B"], [(5, 2), (4, 4), (1, 3)])
    >>> m["accuracy"], m["accuracy_strict"], m["position_consistency"], m["verdicts"]
    (0.8333333333333334, 0.6666666666666666, 0.6666666666666666, {'A': 1, 'B': 1, 'tie': 1})
    >>> m["longer_wins"], m["length_robust"]["n"], m["length_spearman"]
    (0.5, 2, -0.5)
    """
    policy_1 = [AS_SIDE[0][v] for v in firsts]
    policy_2 = [AS_SIDE[1][v] for v in seconds]
    combined = [_FROM_POLICY[combine_orders(f, s)] for f, s in zip(policy_1, policy_2)]
    credit = _credit(combined, labels)
    lo, hi = bootstrap_ci(credit, seed=seed)
    return {
        "n": len(labels),
        "accuracy": sum(credit) / len(credit),
        "accuracy_strict": sum(c == h for c, h in zip(combined, labels)) / len(labels),
        "accuracy_ci": [lo, hi],
        "cohen_kappa": cohen_kappa(combined, labels, labels=LABELS),
        "position_consistency": position_consistency(zip(policy_1, policy_2)),
        "verdicts": {lab: combined.count(lab) for lab in LABELS},
        **length_metrics(labels, combined, lengths, seed),
    }


def evaluate_judge(judge, rows: list[dict], seed: int = 0) -> dict[str, Any]:
    """Agreement of ``judge`` with the human labels of ``rows`` (as load_labelled_pairs returns
    them); ``seed`` places form (a) pairs and seeds the bootstrap. See the module docstring."""
    if not rows:
        raise UserError("no labelled pairs to evaluate the judge on")
    pairs = assign_positions(rows, seed)
    judged = _judge_both_orders(judge, pairs)
    failures, labels, firsts, seconds, lengths = [], [], [], [], []
    for n, (pair, verdicts) in enumerate(zip(pairs, judged), 1):
        reason = _failure(verdicts)
        if reason:
            failures.append({"row": n, "reason": reason[:500]})
            continue
        labels.append(pair["label"])
        firsts.append(verdicts[0].overall)
        seconds.append(verdicts[1].overall)
        lengths.append((len(_text(pair["response_a"])), len(_text(pair["response_b"]))))
    report: dict[str, Any] = {"judge": judge.name}
    if labels:
        report.update(agreement_metrics(labels, firsts, seconds, lengths, seed))
    else:
        report.update(
            n=0,
            accuracy=None,
            accuracy_strict=None,
            accuracy_ci=None,
            cohen_kappa=None,
            position_consistency=None,
            verdicts={lab: 0 for lab in LABELS},
            longer_wins=None,
            beats_longer_wins=None,
            length_robust={"n": 0, "accuracy": None, "accuracy_ci": None},
            length_spearman=None,
        )
    report.update(failed=len(failures), failures=failures)
    return report


def run_eval_judge(
    cfg: JudgeEvalConfig, data: str | Path, out: Path | None = None, cache_path: Path | None = None
) -> dict[str, Any]:
    """``psychocounsel eval-judge``: build the judge (a panel when several specs), judge the
    labelled pairs of ``data``, write the report to ``out`` when given. LLM calls are cached in
    ``cache_path`` (default: ``judge_cache.sqlite`` beside ``out``; in memory without ``out``)."""
    from ..judge import build_judge
    from ..rubric import load_rubric
    from ..store import Cache, write_json

    rows = load_labelled_pairs(data)[: cfg.limit]  # limit None: every row
    if cache_path is None:
        cache_path = Path(out).with_name("judge_cache.sqlite") if out else Path(":memory:")
    cache = Cache(cache_path)
    try:
        judge = build_judge(cfg.judge, load_rubric(), cache)
        try:
            report = evaluate_judge(judge, rows, cfg.seed)
        finally:
            judge.close()
    finally:
        cache.close()
    if out:
        write_json(out, report)
    return report
