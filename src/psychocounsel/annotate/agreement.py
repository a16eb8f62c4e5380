"""``psychocounsel annotate stats``: what the store's answers say about the data and the judges.

The annotators' labels, the data set's own (its chosen reply), and each ``--judge``'s verdicts
(run through eval-judge's machinery, both orders) go to :func:`stats.agreement_report`, on all
pairs and on the length-robust ones (the data set's chosen reply is not the longer one).
Principle scores are units of (pair, reply), ids ``PAIR/chosen`` and ``PAIR/rejected``, one
alpha per principle.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..config import WinrateJudgeConfig
from .stats import agreement_report
from .store import AnnotationStore

FROM_AB = {"A": "chosen", "B": "rejected", "tie": "tie"}  # rows go to the judge with chosen as A


def judge_labels(store: AnnotationStore, specs: list[str], mode: str = "json") -> dict[str, dict[str, str]]:
    """Each judge's verdict per pair, in the pair's terms (chosen, rejected, tie); failed pairs left out."""
    from ..evaluate.judge_eval import pair_verdicts
    from ..judge import build_judge
    from ..rubric import load_rubric
    from ..store import Cache

    items = store.items()
    rows = [{"prompt": i.prompt, "response_a": i.chosen, "response_b": i.rejected, "label": "A"} for i in items]
    out: dict[str, dict[str, str]] = {}
    cache = Cache(store.path.with_name(store.path.stem + "_judge_cache.sqlite"))
    try:
        for spec in specs:
            judge = build_judge(WinrateJudgeConfig(spec=spec, mode=mode), load_rubric(), cache)
            try:
                verdicts = pair_verdicts(judge, rows)
            finally:
                judge.close()
            out[spec] = {i.pair_id: FROM_AB[v] for i, v in zip(items, verdicts) if v is not None}
    finally:
        cache.close()
    return out


def gather(store: AnnotationStore) -> dict[str, Any]:
    """The store's answers as agreement_report's inputs."""
    labels: dict[str, dict[str, str]] = {}
    scores: dict[str, dict[str, dict[str, int]]] = {}
    for a in store.all_answers():
        if a["label"]:
            labels.setdefault(a["annotator"], {})[a["pair_id"]] = a["label"]
        for side, values in a["scores"].items():  # one unit per (pair, reply)
            scores.setdefault(a["annotator"], {})[f"{a['pair_id']}/{side}"] = dict(values)
    items = store.items()
    robust = {i.pair_id for i in items if i.length_robust}
    return {
        "labels": labels,
        "reference": {i.pair_id: "chosen" for i in items},
        "subset": robust | {f"{p}/{side}" for p in robust for side in ("chosen", "rejected")},
        "scores": scores,
    }


def annotation_stats(
    store: AnnotationStore, judges: list[str] | None = None, mode: str = "json", n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    inputs = gather(store)
    answers = store.all_answers()
    report = agreement_report(
        inputs["labels"],
        reference=inputs["reference"],
        judges=judge_labels(store, judges, mode) if judges else None,
        subset=inputs["subset"],
        scores=inputs["scores"] or None,
        n_boot=n_boot,
        seed=seed,
    )
    return {
        "pairs": len(store.items()),
        "answers_per_annotator": {name: len(labs) for name, labs in sorted(inputs["labels"].items())},
        "flagged": sum(a["flagged"] for a in answers),
        "labels": dict(Counter(a["label"] for a in answers if a["label"])),
        "length_robust_pairs": sum(i.length_robust for i in store.items()),
        **report,
    }
