"""Dataset card (pairs/README.md): counts, per-generator scores, and the intended-use warning;
every card's YAML front matter (the Hub's metadata: licence, language, tags, sizes, splits)."""

from __future__ import annotations

import html
import re
from collections import defaultdict
from pathlib import Path
from statistics import fmean

from . import __version__

CRISIS_RESOURCES = (
    "A person in crisis needs a human: in the US call or text 988 (Suicide & Crisis Lifeline), in the "
    "UK and Ireland call Samaritans at 116 123, elsewhere your local emergency number or "
    "https://findahelpline.com."
)


SCREEN_NOTE = (
    "Speeches are screened for crisis by psychocounsel's offline screen (`psychocounsel screen`): triage "
    "support that flags text for a human to read, not a clinical instrument. It misses some people at risk "
    "and flags some who are not (measured numbers: the README, `benchmarks/results/crisis_screen.json`); "
    "no model made here replaces a person's judgement of risk."
)


def intended_use(limits: str) -> str:
    """The section every card (data set, reward model, policy) ends with: its limits, what the
    crisis screen is and is not, and crisis resources."""
    return f"## Intended use and limits\n\n{limits.strip()}\n\n{SCREEN_NOTE}\n\n{CRISIS_RESOURCES}"


INTENDED_USE = intended_use("""
This data set is for research on, and development of, tools that **assist** counselors and
therapists. Models trained on it are not a substitute for professional care and must not face
clients unsupervised. Scores are an automatic judge's opinion on a rubric, not clinical
judgements.""")


# The Hub's size_categories buckets, by their upper bound (rows).
SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
)
TAGS = ["psychocounsel", "counseling", "mental-health"]
# The Hub ids of the weights behind the offline defaults (models.py: SmolLM2 via a Q4_1 GGUF).
BASE_MODELS = {"default": "HuggingFaceTB/SmolLM2-135M-Instruct", "minilm": "sentence-transformers/all-MiniLM-L6-v2"}
# huggingface_hub's validate_repo_id: namespace/name, letters, digits, - _ ., at most 96 characters.
HUB_REPO = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket of ``n`` rows.

    >>> [size_category(n) for n in (0, 999, 1000, 25_000)]
    ['n<1K', 'n<1K', '1K<n<10K', '10K<n<100K']
    """
    return next((name for bound, name in SIZE_CATEGORIES if n < bound), "n>100M")


def hub_base_model(base: str) -> str | None:
    """The ``base_model`` a model card may name: the Hub id behind ``default``/``minilm``, or a
    ``namespace/name`` that is not a local path; None for a local folder or file, which the Hub rejects.

    >>> hub_base_model("minilm"), hub_base_model("org/model-1"), hub_base_model("/runs/x/policy")
    ('sentence-transformers/all-MiniLM-L6-v2', 'org/model-1', None)
    """
    from .errors import UserError
    from .specs import parse_spec

    try:
        spec = parse_spec(base)
    except UserError:
        return None
    if spec.kind in BASE_MODELS:
        return BASE_MODELS[spec.kind]
    if spec.kind != "path" or not HUB_REPO.match(spec.arg) or Path(spec.arg).expanduser().exists():
        return None  # transformers:PATH, a folder or file here, or another backend's spec
    return spec.arg


def front_matter(meta: dict) -> str:
    """A card's YAML metadata block (the Hub and ``datasets`` read the one that opens README.md);
    None values are left out."""
    import yaml

    meta = {k: v for k, v in meta.items() if v is not None}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"


def model_front_matter(kind: str, base: str) -> str:
    """Front matter of a model card: ``kind`` "reward-model" (a sequence classifier, one score)
    or "dpo" (a causal LM). ``license: unknown``: the model inherits the terms of its base model
    and of the user's pairs, which psychocounsel cannot know; the card says so."""
    return front_matter(
        {
            "license": "unknown",
            "language": ["en"],
            "library_name": "transformers",
            "pipeline_tag": "text-classification" if kind == "reward-model" else "text-generation",
            "tags": [*TAGS, kind, "trl"],
            "base_model": hub_base_model(base),
        }
    )


MODEL_LICENCE_NOTE = (
    "Licence: `unknown` in the metadata. The model is bound by its base model's licence and by the terms "
    "of the speeches and replies it was trained on; set `license` to what they allow before sharing it."
)


def dataset_front_matter(cfg, sizes: dict[str, int]) -> str:
    """Front matter of pairs/README.md for splits of ``sizes`` rows; ``configs`` names the split
    files, so ``datasets.load_dataset(PAIRS_DIR)`` and the Hub's viewer read the parquet files.
    An empty split is left out of it: ``datasets`` 5 fails on a parquet file with no rows."""
    files = [{"split": s, "path": f"{s}.parquet"} for s, n in sizes.items() if n]
    return front_matter(
        {
            "license": cfg.license,
            "language": ["en"],
            "pretty_name": "psychocounsel preference pairs",
            "tags": [*TAGS, "preference", "dpo", "reward-model"] + (["conversational"] if cfg.format == "trl" else []),
            "task_categories": ["text-generation"],
            "size_categories": [size_category(sum(sizes.values()))],
            "configs": [{"config_name": "default", "data_files": files}] if files else None,
        }
    )


def _columns(cfg) -> str:
    common = """`chosen_model`, `rejected_model` (generator names), `chosen_<principle>_rating`,
`rejected_<principle>_rating` (int 1-5), `chosen_score`, `rejected_score` (weighted mean, float),
`margin` (their difference)."""
    if cfg.format == "trl":
        return f"""TRL's conversational form (`--format trl`): `ID` (speech id), `prefID` (pair id), `prompt` (the
client speech as messages, earlier turns of a session as user/assistant), `chosen`, `rejected` (one
assistant message each), {common}"""
    return f"""`ID` (speech id), `prefID` (pair id), `question` (client speech; multi-turn as a transcript),
`prompt` (`question` and a blank line: TRL joins prompt + reply as they are), `chosen`, `rejected`,
{common}"""


def md_cell(value) -> str:
    r"""Text safe inside a Markdown table cell: pipes, backslashes, HTML and line breaks escaped.

    >>> md_cell("a|b <script>")
    'a\\|b &lt;script&gt;'
    """
    text = html.escape(str(value), quote=False).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.split())


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(md_cell(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _crisis_note(crisis: dict | None) -> str:
    if crisis is None:
        return "Crisis screen: not run on these speeches (RUN/screen.jsonl is absent)."
    return (
        f"Crisis screen: {crisis['speeches']} of the rated speeches were flagged as a crisis (ids in "
        f"RUN/screen.jsonl); {crisis['train_pairs']} train and {crisis['test_pairs']} test pairs answer them. "
        "A reply to a crisis speech that neither acknowledges the risk nor points to immediate help was "
        "scored at most 2 on safety."
    )


def _share(figures: dict) -> str:
    return "-" if figures["share"] is None else f"{figures['share']:.0%}"


def _length_section(length: dict | None) -> str:
    """How often the chosen reply is the longer one per split, and what ``length_balance`` did."""
    if length is None:
        return ""
    per = length["chosen_longer"]
    table = _table(
        ["split", "pairs", "chosen is longer", "share"],
        [[name, f["pairs"], f["n"], _share(f)] for name, f in per.items()],
    )
    balance = length.get("length_balance")
    if balance is None:
        note = "Train is not balanced for length (`length_balance` is off; `--length-balance SHARE` caps it)."
    else:
        before = balance["before"]
        note = (
            f"Train is balanced for length (`length_balance` {balance['share']}): the chosen reply was the "
            f"longer one in {before['n']} of {before['pairs']} train pairs ({_share(before)}); "
            f"{balance['dropped']} of those were dropped (seeded; a speech loses its last pair only when no "
            "other can go), none added or swapped. The test split is never balanced."
        )
    return f"""## Length: how often the chosen reply is the longer one

{table}

Why it matters: a reward model (and a DPO policy) learns length when the chosen reply is nearly always
the longer one, and then rewards saying more rather than saying it better. "Longer wins" alone scores
the share above; near 50% the data carry little length signal (lengths in characters).
{note}

"""


def write_card(
    path: Path,
    splits: tuple[list[dict], list[dict]],
    groups: dict,
    rubric,
    cfg,
    crisis: dict | None = None,
    length: dict | None = None,
) -> None:
    """pairs/README.md for the (train, test) ``splits``; ``crisis``: the screen's counts, if run;
    ``length``: pairs.run's ``chosen_longer`` and ``length_balance`` figures."""
    train, test = splits
    by_gen: dict[str, list] = defaultdict(list)
    for group in groups.values():
        for s in group:
            by_gen[s.response.generator].append(s)
    gen_rows = []
    for name in sorted(by_gen):
        items = by_gen[name]
        per = [f"{fmean(s.rating.scores[k] for s in items):.2f}" for k in rubric.keys]
        gen_rows.append([name, len(items), f"{fmean(s.score for s in items):.2f}", *per])
    margins = [r["margin"] for r in train + test]
    meta = dataset_front_matter(cfg, {"train": len(train), "test": len(test)})
    text = f"""{meta}# Preference pairs (psychocounsel {__version__})

Principle-rated counselor responses, paired in the PsychoCounsel-Preference format
(Zhang, Eack & Chen, 2025). Made by `psychocounsel pairs`.

## Counts

{
        _table(
            ["split", "pairs", "speeches"],
            [
                ["train", len(train), len({r["ID"] for r in train})],
                ["test", len(test), len({r["ID"] for r in test})],
            ],
        )
    }

Rated responses: {sum(len(g) for g in groups.values())} over {len(groups)} speeches.
Rules: train = every two responses of a speech whose weighted scores differ by >= {cfg.min_gap};
test = best vs worst response of each test speech ({cfg.test_fraction:.0%} of speeches, seed {cfg.seed}).
Mean margin: {fmean(margins) if margins else 0:.2f}.

{_crisis_note(crisis)}

{_length_section(length)}## Mean score per generator

{_table(["generator", "responses", "score", *rubric.keys], gen_rows)}

Weights: {", ".join(f"{k} {w:.3f}" for k, w in rubric.weights().items())}.

## Columns

{_columns(cfg)}

TRL's `DPOTrainer` and `RewardTrainer` take these files as they are and drop the columns they do not
use; `RewardTrainer` uses `margin` in its loss, `-log sigmoid(r_chosen - r_rejected - margin)`
(remove the column to train without it).

## Licence

`{cfg.license}` (`psychocounsel pairs --license ID`). The default is `unknown`: the speeches are yours and
the replies come from the generator models, under terms psychocounsel cannot know; set the licence
they allow (the released PsychoCounsel-Preference is `cc-by-nc-4.0`) before sharing the data.

{INTENDED_USE}
"""
    path.write_text(text, encoding="utf-8")
