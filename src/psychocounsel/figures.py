"""The report's figures: one function per figure, from a run's numbers to a matplotlib Figure.

A function raises ``Unavailable`` naming the missing input when it cannot draw; the report shows
that note in the figure's place. Figures are ``matplotlib.figure.Figure`` objects, rendered by Agg
when saved as PNG, never pyplot: no global backend or figure registry is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SCORE_COLORS = ["#c0392b", "#e8833a", "#f2c94c", "#8cc084", "#2e8b57"]  # score 1 (red) .. 5 (green)
GREY = "#777777"
RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "axes.axisbelow": True,
    "legend.frameon": False,
}


@dataclass
class RunData:
    """What the page shows: ids, names and numbers of one run (never speech or response text)."""

    name: str
    keys: list[str]
    labels: dict[str, str]
    scored: list[dict] = field(default_factory=list)  # response_id, generator, words, scores, score
    ratings_missing: str | None = None
    has_responses: bool = False
    counts: dict[str, Any] = field(default_factory=dict)
    margins: dict[str, list[float]] = field(default_factory=dict)
    pairs_missing: str | None = None
    min_gap: float | None = None
    rm_metrics: dict | None = None
    rm_diffs: list[float] | None = None
    rm_log: list[dict] | None = None
    dpo_log: list[dict] | None = None
    online: list[dict] = field(default_factory=list)
    winrates: dict[str, dict] = field(default_factory=dict)
    judges_failed: dict[str, dict] = field(default_factory=dict)  # judges that gave no verdict at all
    crisis_eval: dict | None = None  # eval/winrate.json's crisis: held-out crisis speeches, handled shares
    stages: dict[str, dict] = field(default_factory=dict)


class Unavailable(Exception):
    """A figure's input is absent; the message names what is missing."""


class FigureSpec(NamedTuple):
    slug: str  # PNG file name stem
    title: str
    caption: str  # how to read it, one sentence
    draw: Callable[[RunData], Figure]


def _figure(width: float, height: float, **subplots: Any) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(**subplots)


def _scored(run: RunData, need_responses: bool = False) -> list[dict]:
    if not run.scored:
        raise Unavailable(run.ratings_missing or "ratings.jsonl")
    if need_responses and not run.has_responses:
        raise Unavailable("responses.jsonl")
    return run.scored


def _by_generator(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["generator"], []).append(r)
    return dict(sorted(groups.items()))


def score_distribution(run: RunData) -> Figure:
    rows = _scored(run)
    fig, ax = _figure(9.5, 0.5 * len(run.keys) + 1.4)
    for i, k in enumerate(run.keys):
        vals = np.array([r["scores"][k] for r in rows])
        shares = np.bincount(np.clip(np.rint(vals), 1, 5).astype(int) - 1, minlength=5) / vals.size
        left = 0.0
        for s, share in enumerate(shares):
            ax.barh(
                i,
                share,
                left=left,
                color=SCORE_COLORS[s],
                edgecolor="white",
                height=0.75,
                label=str(s + 1) if i == 0 else None,
            )
            if share >= 0.07:  # narrower segments cannot hold "12%" legibly
                ax.text(left + share / 2, i, f"{share:.0%}", ha="center", va="center", fontsize=8)
            left += share
        ax.text(1.01, i, f"mean {vals.mean():.2f}", va="center", transform=ax.get_yaxis_transform())
    ax.set_yticks(range(len(run.keys)), [run.labels[k] for k in run.keys])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter("{x:.0%}")
    ax.set_xlabel(f"share of {len(rows)} rated responses")
    ax.grid(False)
    ax.legend(title="score (rounded)", ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return fig


def generator_heatmap(run: RunData) -> Figure:
    rows = _scored(run, need_responses=True)
    by_gen = _by_generator(rows)
    gens, principles = list(by_gen), [*run.keys, "overall"]
    table = np.array(
        [
            [np.mean([r["score"] if k == "overall" else r["scores"][k] for r in by_gen[g]]) for g in gens]
            for k in principles
        ]
    )
    # Principles as rows: their long names read horizontally; generators (up to 20 in the paper)
    # get columns, their names tilted once they no longer fit side by side.
    longest = max(len(g) for g in gens)
    column = max(0.8, 0.08 * longest)  # inches: a 10 pt character is ~0.08 in wide
    tilt = 4.2 + column * len(gens) > 12  # 4.2 in for the principle names and the colour bar
    height = 0.42 * len(principles) + (0.06 * (longest + 7) if tilt else 1.8)  # + " (n=64)" when tilted
    fig, ax = _figure(min(4.2 + column * len(gens), 12), height)
    image = ax.imshow(table, cmap="RdYlGn", vmin=1, vmax=5, aspect="auto")
    for (i, j), v in np.ndenumerate(table):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9 if len(gens) <= 12 else 7)
    ax.set_yticks(range(len(principles)), [run.labels.get(k, "Overall (weighted)") for k in principles])
    ax.axhline(len(principles) - 1.5, color="white", lw=3)  # the overall row is not a principle
    sep = " " if tilt else "\n"
    ax.set_xticks(
        range(len(gens)),
        [f"{g}{sep}(n={len(by_gen[g])})" for g in gens],
        rotation=45 if tilt else 0,
        ha="left" if tilt else "center",
        rotation_mode="anchor" if tilt else "default",
    )
    ax.tick_params(axis="x", top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.grid(False)
    fig.colorbar(image, ax=ax, label="mean score (1-5)", shrink=0.9)
    return fig


def pair_gaps(run: RunData) -> Figure:
    if run.pairs_missing:
        raise Unavailable(run.pairs_missing)
    splits = {s: m for s, m in run.margins.items() if m}
    if not splits:
        raise Unavailable("no pairs in pairs/train and pairs/test")
    everything = np.concatenate([np.asarray(m) for m in splits.values()])
    lo, hi = min(0.0, float(everything.min())), float(everything.max())
    bins = np.linspace(lo, hi + 1e-9, max(10, min(40, int((hi - lo) / 0.1) + 1)))
    fig, ax = _figure(9.5, 3.6)
    ax.hist(
        list(splits.values()),
        bins=bins,
        stacked=True,
        color=["#4c78a8", "#f58518"][: len(splits)],
        label=[f"{s} ({len(m)} pairs)" for s, m in splits.items()],
    )
    if run.min_gap is not None:
        ax.axvline(run.min_gap, color=GREY, ls="--", lw=1)
        ax.text(run.min_gap, 1.0, f" min_gap {run.min_gap:g}", color=GREY, va="top", transform=ax.get_xaxis_transform())
    ax.set_xlabel("margin = chosen score - rejected score (weighted mean, 1-5 scale)")
    ax.set_ylabel("pairs")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    return fig


def reliability(run: RunData) -> Figure:
    from .reward_model import ECE_BINS, calibration_bins, expected_calibration_error

    if not run.rm_diffs:
        raise Unavailable("reward_model/predictions.jsonl")
    count, sum_p, sum_y = calibration_bins(run.rm_diffs, ECE_BINS)
    mean_y, mean_p = sum_y / np.maximum(count, 1), sum_p / np.maximum(count, 1)
    fig, (ax, axc) = _figure(6.5, 6.0, nrows=2, sharex=True, height_ratios=[4, 1])
    used = count > 0
    edges = np.arange(ECE_BINS) / ECE_BINS
    ax.bar(
        edges[used],
        mean_y[used],
        width=1 / ECE_BINS,
        align="edge",
        color="#4c78a8",
        edgecolor="white",
        label="observed frequency",
    )
    ax.plot(mean_p[used], mean_y[used], "o", color="#f58518", ms=5, label="bin: mean predicted p vs observed")
    ax.plot([0, 1], [0, 1], ls="--", color=GREY, lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="P(chosen preferred), observed")
    ax.set_title(
        f"ECE {expected_calibration_error(run.rm_diffs):.3f} ({len(run.rm_diffs)} test pairs, "
        f"each in both orders, {ECE_BINS} bins)"
    )
    ax.legend(loc="upper left")
    axc.bar(edges, count, width=1 / ECE_BINS, align="edge", color="#bbbbbb", edgecolor="white")
    axc.set(xlabel="predicted p = sigmoid(r_chosen - r_rejected)", ylabel="count")
    return fig


def _curve(ax: Axes, rows: list[dict] | None, key: str, title: str, missing: str, color: str) -> None:
    points = [(r["step"], r[key]) for r in rows or [] if key in r and "step" in r]
    ax.set_title(title)
    if not points:
        ax.axis("off")
        ax.text(0.5, 0.5, f"not available: {missing}", ha="center", va="center", color=GREY, transform=ax.transAxes)
        return
    x, y = zip(*points)
    ax.plot(x, y, marker="o" if len(x) <= 30 else None, ms=4, color=color)
    ax.set_xlabel("step")


def training_curves(run: RunData) -> Figure:
    online = [
        {"step": m["round"], "dev": m["dev_mean_reward"]}
        for m in run.online
        if m.get("dev_mean_reward") is not None and "round" in m
    ]
    if not (run.rm_log or run.dpo_log or online):
        raise Unavailable("reward_model/train_log.json, policy/train_log.json, online/round_*/metrics.json")
    fig, axes = _figure(10, 6.4, nrows=2, ncols=2)
    _curve(
        axes[0, 0], run.rm_log, "loss", "Reward model: training loss", "reward_model/train_log.json", color="#4c78a8"
    )
    _curve(axes[0, 1], run.dpo_log, "loss", "DPO: training loss", "policy/train_log.json", color="#f58518")
    _curve(
        axes[1, 0],
        run.dpo_log,
        "rewards/margins",
        "DPO: reward margin (chosen - rejected)",
        "policy/train_log.json",
        color="#54a24b",
    )
    _curve(axes[1, 1], online, "dev", "Online DPO: dev mean reward", "online/round_*/metrics.json", color="#b279a2")
    if online:
        axes[1, 1].set_xlabel("round (0 = starting policy)")
        axes[1, 1].set_xticks([p["step"] for p in online])
    return fig


def _winrate_rows(run: RunData) -> list[str]:
    keys = [k for k in run.keys if any(k in w.get("per_principle", {}) for w in run.winrates.values())]
    extra = sorted({k for w in run.winrates.values() for k in w.get("per_principle", {})} - set(keys))
    return ["overall", *keys, *extra]


def _winrate_bar(ax: Axes, w: dict, rows: list[str], offset: float, height: float, color: str, label: str) -> None:
    ci = {"overall": (w.get("ci_low"), w.get("ci_high")), **w.get("per_principle_ci", {})}
    for i, k in enumerate(rows):
        v = w.get("win_rate") if k == "overall" else w.get("per_principle", {}).get(k)
        if v is None:
            continue
        lo, hi = ci.get(k) or (None, None)
        err = None if lo is None or hi is None else [[max(v - lo, 0)], [max(hi - v, 0)]]
        ax.barh(
            i + offset,
            v,
            height=height,
            color=color,
            xerr=err,
            capsize=3,
            error_kw={"lw": 1, "ecolor": "#333333"},
            label=label if i == 0 else None,
        )
        ax.text(0.005, i + offset, f"{v:.2f}", va="center", fontsize=8, color="white")


def winrate_by_principle(run: RunData) -> Figure:
    if not run.winrates:
        raise Unavailable("eval/winrate.json")
    rows = _winrate_rows(run)
    colors = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756"]
    n = len(run.winrates)
    fig, ax = _figure(9.5, 0.5 * len(rows) * max(1, n * 0.7) + 1.8)
    height = 0.8 / n
    for j, (judge, w) in enumerate(run.winrates.items()):
        note = (
            f"{judge}: win rate {_num(w.get('win_rate'))} [{_num(w.get('ci_low'))}, {_num(w.get('ci_high'))}], "
            f"LC {_num(w.get('lc_win_rate'))}, n={w.get('n', '?')}"
        )
        if not w.get("per_principle"):
            note += ", overall only"  # e.g. a reward-model judge: one verdict per item, no principles
        _winrate_bar(ax, w, rows, (j - (n - 1) / 2) * height, height * 0.95, colors[j % len(colors)], note)
    ax.axvline(0.5, color=GREY, ls="--", lw=1)
    ax.set_yticks(range(len(rows)), ["Overall" if k == "overall" else run.labels.get(k, k) for k in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("policy win rate against the reference (0.5 = parity)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=1)
    return fig


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}"


def length_vs_score(run: RunData) -> Figure:
    from scipy.stats import spearmanr

    rows = _scored(run, need_responses=True)
    from matplotlib import colormaps

    fig, ax = _figure(9.5, 4.6)
    by_gen = _by_generator(rows)
    palette = [f"C{i}" for i in range(10)] if len(by_gen) <= 10 else colormaps["tab20"].colors
    for i, (g, mine) in enumerate(by_gen.items()):
        ax.scatter(
            [r["words"] for r in mine],
            [r["score"] for r in mine],
            s=14,
            alpha=0.7,
            color=palette[i % len(palette)],
            label=f"{g} ({len(mine)})",
        )
    words, scores = [r["words"] for r in rows], [r["score"] for r in rows]
    varied = len(rows) > 2 and len(set(words)) > 1 and len(set(scores)) > 1  # else rho is undefined
    rho = f"Spearman rho = {spearmanr(words, scores).statistic:.2f} over " if varied else ""
    ax.set_title(f"{rho}{len(rows)} responses")
    ax.set(xlabel="response length (words)", ylabel="score (weighted mean of principles, 1-5)", ylim=(0.9, 5.1))
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), title="generator")
    return fig


FIGURES = [
    FigureSpec(
        "1_score_distribution",
        "Score distribution per principle",
        "Each bar splits the rated responses by their score on one principle (rounded to 1-5); "
        "more green means higher scores, and the mean is printed on the right.",
        score_distribution,
    ),
    FigureSpec(
        "2_generator_scores",
        "Mean score per generator",
        "Each cell is a generator's mean score on a principle (1 red to 5 green); the bottom row is "
        "the rubric's weighted overall score.",
        generator_heatmap,
    ),
    FigureSpec(
        "3_pair_gaps",
        "Preference-pair margins",
        "How far apart chosen and rejected responses are scored; pairs near the dashed min_gap line "
        "carry the weakest preference signal.",
        pair_gaps,
    ),
    FigureSpec(
        "4_reward_reliability",
        "Reward-model reliability",
        "Bars at the diagonal mean the reward model's preference probabilities match how often it is "
        "right; bars below it (right half) mean over-confidence.",
        reliability,
    ),
    FigureSpec(
        "5_training_curves",
        "Training curves",
        "Losses should fall and the DPO reward margin rise with steps; the online panel shows the "
        "dev-set mean reward of each round's policy.",
        training_curves,
    ),
    FigureSpec(
        "6_winrate",
        "Win rate against the reference, per principle",
        "Bars right of the dashed 0.5 line mean the policy beats the reference on that principle; "
        "whiskers are confidence intervals.",
        winrate_by_principle,
    ),
    FigureSpec(
        "7_length_vs_score",
        "Response length against score",
        "Each dot is a response; a steep upward trend means the judge rewards length, which the "
        "length-controlled (LC) win rate corrects for.",
        length_vs_score,
    ),
]
