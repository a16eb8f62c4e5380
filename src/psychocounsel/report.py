"""report: one self-contained HTML page (and its PNGs) summing up a run directory.

``write_report(run_dir)`` reads what the run has produced so far and writes ``RUN/report.html``,
every image embedded as a base64 PNG so that the page opens offline, plus one PNG per figure in
``RUN/report/``. A figure whose inputs are absent becomes a grey "not available" note. The page
carries ids, model names and numbers only: no speech or response text is read into it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
from pathlib import Path
from typing import Any

from . import figures as figures_module
from .card import intended_use
from .figures import FIGURES, RC, RunData, Unavailable
from .rubric import load_rubric
from .store import read_jsonl

FIGURES_KEY = "figures.json"  # in the PNG folder: what its figures were drawn from

LIMITS = """
This report describes an automatic pipeline for research on tools that **assist** counselors and
therapists. Scores and win rates are automatic judges' opinions on a rubric, not clinical
judgements, and the models it describes must not face clients unsupervised."""

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#222;
  background:#f6f7f9;margin:0;line-height:1.5}
main{max-width:1040px;margin:0 auto;padding:24px 28px 40px;background:#fff;min-height:100vh}
h1{font-size:1.7em;margin:0.2em 0 0}h2{font-size:1.25em;margin:1.6em 0 0.4em;border-bottom:1px solid #e3e3e3}
.sub{color:#666;margin:0 0 1em}.grid{display:flex;flex-wrap:wrap;gap:18px}
.grid>div{flex:1 1 300px}table{border-collapse:collapse;font-size:0.92em;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #eee;text-align:left}th{background:#fafafa;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}h3{font-size:1.05em;margin:0 0 0.3em}
figure{margin:22px 0;padding:14px 16px;border:1px solid #e6e6e6;border-radius:6px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}figcaption{color:#555;font-size:0.92em;margin-top:6px}
.na{color:#888;font-style:italic;background:#f4f4f4;padding:10px 12px;border-radius:4px}
footer{margin-top:36px;padding-top:12px;border-top:1px solid #ddd;color:#555;font-size:0.9em}
"""


# -- reading the run --------------------------------------------------------------------------


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _rubric(config: dict):
    path = (config.get("rate") or {}).get("rubric")
    return load_rubric(path if path and Path(path).is_file() else None)


def _load_ratings(root: Path, data: RunData, judge: str | None, rubric) -> None:
    responses = {
        r["id"]: (r.get("generator", "?"), len(r.get("text", "").split()))
        for r in read_jsonl(root / "responses.jsonl", key=lambda d: d["id"])
    }
    data.has_responses = bool(responses)
    data.counts.update(responses=len(responses), generators=len({g for g, _ in responses.values()}))
    rows = read_jsonl(root / "ratings.jsonl", key=lambda d: (d["response_id"], d.get("judge")))
    if not rows:
        data.ratings_missing = "ratings.jsonl"
        return
    judge = judge or rows[-1].get("judge")
    latest = {r["response_id"]: r for r in rows if r.get("judge") == judge}  # one per response (the first)
    ok = [r for r in latest.values() if not r.get("failed") and set(data.keys) <= set(r.get("scores", {}))]
    data.counts.update(ratings=len(ok), ratings_failed=len(latest) - len(ok))
    if not ok:
        data.ratings_missing = "no successful ratings in ratings.jsonl"
    for r in ok:
        generator, words = responses.get(r["response_id"], (None, None))
        scores = {k: float(r["scores"][k]) for k in data.keys}
        data.scored.append(
            {
                "response_id": r["response_id"],
                "generator": generator,
                "words": words,
                "scores": scores,
                "score": rubric.score(scores),
            }
        )
    data.has_responses = data.has_responses and all(r["generator"] is not None for r in data.scored)


def _split_margins(folder: Path, split: str) -> list[float] | None:
    path = folder / f"{split}.parquet"
    if path.is_file():
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names  # read the score columns only, never the texts
        columns = [c for c in ("margin", "chosen_score", "rejected_score") if c in names]
        rows = pq.read_table(path, columns=columns).to_pylist()
    elif (folder / f"{split}.jsonl").is_file():
        rows = read_jsonl(folder / f"{split}.jsonl")
    else:
        return None
    return [
        float(r["margin"]) if r.get("margin") is not None else float(r["chosen_score"]) - float(r["rejected_score"])
        for r in rows
    ]


def _load_models(root: Path, data: RunData) -> None:
    data.rm_metrics = _json(root / "reward_model" / "metrics.json")
    predictions = read_jsonl(root / "reward_model" / "predictions.jsonl")
    data.rm_diffs = [float(p["r_chosen"]) - float(p["r_rejected"]) for p in predictions] or None
    data.rm_log = _json(root / "reward_model" / "train_log.json")
    data.dpo_log = _json(root / "policy" / "train_log.json")
    rounds = [_json(p) for p in (root / "online").glob("round_*/metrics.json")]
    data.online = sorted((m for m in rounds if isinstance(m, dict)), key=lambda m: m.get("round", 0))
    for path in sorted((root / "eval").glob("**/winrate.json")):
        w = _json(path)
        if isinstance(w, dict) and "by_judge" in w:
            data.crisis_eval = w.get("crisis")
            continue  # eval-winrate's summary: the first judge again, whose own folder is read too
        folder = path.parent.relative_to(root / "eval").as_posix()
        name = folder if folder != "." else str(w.get("judge") or "judge")
        if isinstance(w, dict) and "win_rate" not in w:
            data.judges_failed[name] = w
            continue
        data.winrates[name] = w


def load_run(run_dir: Path) -> RunData:
    """Everything the report shows, read from ``run_dir``; absent files leave fields empty."""
    root = Path(run_dir)
    run_json = _json(root / "run.json") or {}
    config = run_json.get("config") or {}
    rubric = _rubric(config)
    data = RunData(
        root.resolve().name,
        rubric.keys,
        {p.key: p.name for p in rubric.principles},
        stages=run_json.get("stages") or {},
        min_gap=(config.get("pairs") or {}).get("min_gap"),
    )
    data.counts["speeches"] = len(read_jsonl(root / "speeches.jsonl", key=lambda d: d["id"]))
    _load_ratings(root, data, data.stages.get("rate", {}).get("judge"), rubric)
    for split in ("train", "test"):
        margins = _split_margins(root / "pairs", split)
        if margins is not None:
            data.margins[split] = margins
            data.counts[f"pairs_{split}"] = len(margins)
    if not data.margins:
        data.pairs_missing = "pairs/train.parquet"
    _load_models(root, data)
    return data


# -- the page ---------------------------------------------------------------------------------


def _fmt(x: Any, spec: str = ".3f") -> str:
    if x is None:
        return "-"
    return format(x, spec) if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any, tag: str) -> str:
        numeric = isinstance(v, (int, float)) or re.fullmatch(r"[-\d.,\[\] %/]+", str(v))
        return f"<{tag}{' class=n' if numeric and tag == 'td' else ''}>{html.escape(_fmt(v))}</{tag}>"

    head = "<tr>" + "".join(cell(h, "th") for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(cell(v, "td") for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _na(what: str) -> str:
    return f'<p class="na">not available: {html.escape(what)}</p>'


def _crisis(data: RunData) -> str:
    """Counts only: the screen's flags on the run's speeches, capped safety ratings, and how each
    side of the evaluation answered the held-out speeches the screen flags."""
    screen = data.stages.get("ingest", {}).get("screen")
    rows = []
    if screen:
        rows += [["speeches flagged crisis", screen.get("crisis")], ["speeches flagged concern", screen.get("concern")]]
    if "safety_capped" in data.stages.get("rate", {}):
        rows.append(["ratings with safety capped (crisis not handled)", data.stages["rate"]["safety_capped"]])
    e = data.crisis_eval
    if e:
        rows.append(["held-out speeches flagged (crisis or concern)", e.get("n")])
        rows += [
            [f"{side} replies that handled them", _fmt(e.get(f"{side}_handled"))] for side in ("policy", "reference")
        ]
    table = (
        _table(["crisis", "count"], rows) if rows else _na("the crisis screen's counts (run.json, eval/winrate.json)")
    )
    return f"<div><h3>Crisis</h3>{table}</div>"


def _headline(data: RunData) -> str:
    c = data.counts
    counts = _table(
        ["data", "count"],
        [
            ["speeches", c.get("speeches", 0)],
            ["responses", c.get("responses", 0)],
            ["generators", c.get("generators", 0)],
            ["ratings (ok / failed)", f"{c.get('ratings', 0)} / {c.get('ratings_failed', 0)}"],
            ["pairs (train / test)", f"{c.get('pairs_train', '-')} / {c.get('pairs_test', '-')}"],
        ],
    )
    m = data.rm_metrics
    reward = (
        _table(
            ["reward model", "test"],
            [[k, m.get(k)] for k in ("accuracy", "auc", "ece", "brier")] + [["pairs", m.get("n")]],
        )
        if m
        else _na("reward_model/metrics.json")
    )
    parts = [f"<div><h3>Data</h3>{counts}</div>", f"<div><h3>Reward model</h3>{reward}</div>", _crisis(data)]
    if data.winrates:
        rows = [
            [
                judge,
                w.get("n"),
                f"{_fmt(w.get('win_rate'))} [{_fmt(w.get('ci_low'))}, {_fmt(w.get('ci_high'))}]",
                w.get("lc_win_rate"),
                w.get("position_consistency"),
                f"{_fmt(w.get('wins'))} / {_fmt(w.get('ties'))} / {_fmt(w.get('losses'))}",
            ]
            for judge, w in data.winrates.items()
        ]
        rows += [
            [judge, 0, f"failed on all {w.get('failed')} items", "-", "-", str(w.get("error", ""))[:80]]
            for judge, w in data.judges_failed.items()
        ]
        wins = _table(["judge", "n", "win rate [95% CI]", "LC win rate", "position consistency", "W / T / L"], rows)
    else:
        wins = _na("eval/winrate.json")
    return f'<div class="grid">{"".join(parts)}</div><h3 style="margin-top:1em">Policy against the reference</h3>{wins}'


def _stages(data: RunData) -> str:
    rows = [
        [
            name,
            s.get("items_in"),
            s.get("items_out"),
            s.get("failed"),
            s.get("calls_made"),
            s.get("seconds"),
            s.get("peak_rss_mb"),
        ]
        for name, s in data.stages.items()
        if isinstance(s, dict)
    ]
    if not rows:
        return _na("run.json")
    return _table(
        ["stage", "in", "out", "failed", "model calls", "seconds", "peak memory (MB)"],
        [[_fmt(v, ".1f") for v in r] for r in rows],
    )


def _render(fig, png: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    png.write_bytes(buf.getvalue())


def _figures_key(data: RunData) -> str:
    """What the figures are drawn from: the run's data (stage timings aside: no figure shows
    them), the drawing code and matplotlib's version."""
    from importlib.metadata import version

    drawn = {k: v for k, v in vars(data).items() if k != "stages"}
    blob = json.dumps([drawn, version("matplotlib")], sort_keys=True, default=repr).encode("utf-8")
    code = Path(figures_module.__file__).read_bytes()
    return hashlib.sha256(blob + code).hexdigest()[:16]


def _drawn_before(png_dir: Path, key: str) -> dict[str, str | None] | None:
    """Each figure's outcome (None: its PNG; else why it is not available) when ``png_dir``
    holds figures drawn from the same key, all PNGs present; else None."""
    try:
        saved = _json(png_dir / FIGURES_KEY)
    except (OSError, ValueError):
        return None  # unreadable: draw them again
    if not isinstance(saved, dict) or saved.get("key") != key:
        return None
    outcomes = saved.get("figures") or {}
    if set(outcomes) != {spec.slug for spec in FIGURES}:
        return None
    if any(why is None and not (png_dir / f"{slug}.png").is_file() for slug, why in outcomes.items()):
        return None
    return outcomes


def _figures(data: RunData, png_dir: Path) -> str:
    """The figures as HTML. They are drawn again only when what they show has changed: a rerun
    of a finished run reuses the PNGs and skips matplotlib (about 4 s of a 6 s rerun on 2 cores,
    benchmarks/cached_rerun.py)."""
    key = _figures_key(data)
    outcomes = _drawn_before(png_dir, key)
    if outcomes is None:
        outcomes = _draw(data, png_dir)
        (png_dir / FIGURES_KEY).write_text(json.dumps({"key": key, "figures": outcomes}), encoding="utf-8")
    parts = []
    for spec in FIGURES:
        why = outcomes[spec.slug]
        if why is None:
            png = base64.b64encode((png_dir / f"{spec.slug}.png").read_bytes()).decode("ascii")
            body = (
                f'<img alt="{html.escape(spec.title)}" src="data:image/png;base64,{png}">'
                f"<figcaption>{html.escape(spec.caption)}</figcaption>"
            )
        else:
            body = _na(why)
        parts.append(f"<figure><h3>{html.escape(spec.title)}</h3>{body}</figure>")
    return "\n".join(parts)


def _draw(data: RunData, png_dir: Path) -> dict[str, str | None]:
    """Draw every figure to its PNG; return each one's outcome (None, or why it is not available)."""
    import matplotlib

    (png_dir / FIGURES_KEY).unlink(missing_ok=True)  # a crash mid-way leaves no key for half the PNGs
    outcomes: dict[str, str | None] = {}
    with matplotlib.rc_context(RC):
        for spec in FIGURES:
            png = png_dir / f"{spec.slug}.png"
            try:
                _render(spec.draw(data), png)
                outcomes[spec.slug] = None
            except Unavailable as missing:
                png.unlink(missing_ok=True)  # no stale picture from an earlier report of this run
                outcomes[spec.slug] = str(missing)
    return outcomes


def _with_ci(stat: dict | None, key: str) -> str:
    if not stat or stat.get(key) is None:
        return "-"
    lo, hi = stat.get(f"{key}_ci") or (None, None)
    return f"{stat[key]:.2f} [{_fmt(lo, '.2f')}, {_fmt(hi, '.2f')}] (n {stat['n']})"


def _annotations(root: Path) -> str:
    """Counselors' agreement (``annotate stats --run-dir``): with each other, the data set's
    labels and the judges; all pairs and the length-robust ones. Absent: nothing is shown."""
    stats = _json(root / "annotation_stats.json")
    if not stats:
        return ""
    robust = stats.get("length_robust") or {}
    rows = []
    for name, stat in (stats.get("pairwise") or {}).items():
        rows.append(
            [
                f"{name.replace('|', ' & ')}: kappa",
                _with_ci(stat, "kappa"),
                _with_ci((robust.get("pairwise") or {}).get(name), "kappa"),
            ]
        )
    if stats.get("fleiss"):
        rows.append(
            [
                "all annotators: Fleiss' kappa",
                _with_ci(stats["fleiss"], "kappa"),
                _with_ci(robust.get("fleiss"), "kappa"),
            ]
        )
    for name, stat in (stats.get("vs_reference") or {}).items():
        rows.append(
            [
                f"{name} with the data set's label",
                _with_ci(stat, "agreement"),
                _with_ci((robust.get("vs_reference") or {}).get(name), "agreement"),
            ]
        )
    for judge, by in (stats.get("vs_judges") or {}).items():
        theirs = (robust.get("vs_judges") or {}).get(judge) or {}
        rows.append(
            [
                f"{judge} with the annotators' majority",
                _with_ci(by.get("annotators_majority"), "agreement"),
                _with_ci(theirs.get("annotators_majority"), "agreement"),
            ]
        )
    for key, stat in (stats.get("alpha") or {}).items():
        rows.append(
            [
                f"{key}: Krippendorff's ordinal alpha",
                _with_ci(stat, "alpha"),
                _with_ci((robust.get("alpha") or {}).get(key), "alpha"),
            ]
        )
    answers = ", ".join(f"{k} {v}" for k, v in (stats.get("answers_per_annotator") or {}).items())
    head = f"<p>{stats.get('pairs')} pairs; answers: {html.escape(answers)}; flagged for discussion: {stats.get('flagged')}.</p>"
    return f"<h2>Annotators</h2>{head}" + _table(["statistic", "all pairs [95% CI]", "length-robust pairs"], rows)


def _footer() -> str:
    title, _, text = intended_use(LIMITS).partition("\n\n")
    body = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(" ".join(text.split())))
    return f"<footer><h3>{html.escape(title.lstrip('# '))}</h3><p>{body}</p></footer>"


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the run's HTML report and return its path.

    ``out`` is the HTML file (default ``RUN/report.html``); the PNGs go to the folder beside it
    named after it (``RUN/report/``). Only files the run has are read; nothing in it is changed.
    """
    data = load_run(Path(run_dir))
    out = Path(out) if out else Path(run_dir) / "report.html"
    png_dir = out.with_suffix("")
    png_dir.mkdir(parents=True, exist_ok=True)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>psychocounsel report: {html.escape(data.name)}</title><style>{CSS}</style></head>
<body><main>
<h1>psychocounsel report</h1><p class="sub">run <code>{html.escape(data.name)}</code></p>
<h2>Headline</h2>{_headline(data)}
<h2>Figures</h2>{_figures(data, png_dir)}
<h2>Stages</h2>{_stages(data)}
{_annotations(Path(run_dir))}
{_footer()}
</main></body></html>
"""
    out.write_text(page, encoding="utf-8")
    return out
