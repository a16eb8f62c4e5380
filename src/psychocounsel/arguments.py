"""The command line's arguments: one subcommand per stage and command, their flags made from the
config fields (flags.py) so each option has one default, one help text and one bound."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import __version__
from .config import (
    AnnotateConfig,
    BackendConfig,
    DPOConfig,
    DPOStageConfig,
    EvalConfig,
    GenerateConfig,
    IngestConfig,
    JudgeEvalConfig,
    OnlineConfig,
    PairsConfig,
    PushConfig,
    RateConfig,
    RewardEvalConfig,
    RewardModelConfig,
    ScreenConfig,
    ServeConfig,
    TrainJudgeConfig,
    WinrateJudgeConfig,
)
from .flags import add_flags, given
from .pipeline import STAGES

DESCRIPTION = (
    "Principle-based preference learning for psycho-counseling: rate counselor responses "
    "on seven principles, build a preference data set from the ratings, train a reward model "
    "and a policy (DPO, online iterative DPO), and measure win rates."
)
EPILOG = """\
stages: ingest -> generate -> rate -> pairs [-> reward_model -> dpo -> online -> eval] -> report.
Each reads and writes the run directory (--run-dir); `run` chains them. Rerunning resumes and
skips finished work. train-*, eval-* and report also run on their own; screen runs the crisis
screen on any file of texts; serve puts a trained policy and reward model behind HTTP;
annotate lets counselors label pairs and measures their agreement with the data and the judges;
push publishes a run's pairs and models to the Hugging Face Hub.
Example: psychocounsel run configs/quickstart.yaml --run-dir runs/quickstart"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, type=Path, help="the run directory (created if absent)")
    p.add_argument("--config", help="a run config YAML (see configs/); flags override its values")
    _quiet(p)


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _force(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help=f"write {what} even when that replaces existing rows with none, or orphans later stages' rows",
    )


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="psychocounsel", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"psychocounsel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _stage_parsers(sub)
    _training_parsers(sub)
    _eval_parsers(sub)
    _screen_parser(sub)
    _train_judge_parser(sub)
    _serve_parser(sub)
    _annotate_parser(sub)
    _push_parser(sub)
    return parser


def _screen_parser(sub) -> None:
    p = sub.add_parser(
        "screen",
        help="the crisis screen on a file of texts; measured against a label column when there is one",
        description="Screen every row of DATA (JSONL, CSV or Parquet) for the writer's own risk: level none, "
        "concern or crisis, a score, categories and evidence offsets (never the text) per row to --out. With a "
        "label column (crisis/no_crisis, 1/0, true/false) it reports n, n_crisis, recall, fpr, precision, f1 "
        "and auc with bootstrap CIs (crisis counts as positive; concern as a flag), and flag rates per "
        "source_label. Triage support for a human, not a clinical instrument.",
    )
    p.add_argument("--data", required=True, type=Path, help="the file of texts")
    p.add_argument("--out", type=Path, help="write one prediction per row here (JSONL)")
    p.add_argument("--metrics", type=Path, help="write the metrics here (JSON)")
    add_flags(p, ScreenConfig)
    _quiet(p)


def _train_judge_parser(sub) -> None:
    p = sub.add_parser(
        "train-judge",
        help="rebuild the default rater's weights from human-labelled data (seeded)",
        description="Learn the default rater's seven principle heads on all-MiniLM-L6-v2 features from "
        "EPITOME's empathy levels, CounselChat answers and rule-written, length-matched contrastive pairs "
        "(folder --data, laid out like ../shared/data). Speeches are split train/dev/test by a hash of their "
        "id; the report gives dev and test agreement next to the 'longer wins' baseline. Writes the weights "
        "(default: the packaged rater_head.safetensors) and prints the test summary.",
    )
    add_flags(p, TrainJudgeConfig)
    p.add_argument("--report", type=Path, help="write the full dev/test report here (JSON)")
    _quiet(p)


def _serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a policy (and a reward model) over HTTP: OpenAI-compatible chat, /get_reward, crisis routing",
        description="Serve --policy as an OpenAI-compatible chat server (POST /v1/chat/completions, streaming "
        "included; GET /v1/models; GET /health) and, with --reward-model, POST /get_reward (OpenRLHF's shape) "
        "and POST /v1/score, and best-of-n answers. Every user turn goes through the crisis screen first: a "
        "crisis is answered with a message naming crisis resources for --locale, a concern gets them after "
        "the model's answer. Requests from many clients are decoded together (dynamic batching). Binding "
        "anything but loopback needs an API key in the environment variable --api-key-env names. The models "
        "assist counselors; they are not a substitute for care.",
    )
    p.add_argument("--policy", required=True, help=ServeConfig.model_fields["policy"].description)
    add_flags(p, ServeConfig, skip=("policy",))
    _quiet(p)


def _push_parser(sub) -> None:
    p = sub.add_parser(
        "push",
        help="publish a run's pairs (and policy, reward model) to the Hugging Face Hub",
        description="Upload RUN's preference pairs (parquet splits and dataset card), run.json and its config "
        "(local paths cut to file names) and the report to --dataset-repo; with --model-repo the policy "
        "(RUN/policy), with --reward-model-repo the reward model (RUN/reward_model): safetensors, JSON, "
        "tokenizer and card files only, never a pickle (*.bin, *.pt, *.pkl). The token comes from HF_TOKEN "
        "or 'hf auth login'; HF_ENDPOINT picks another hub. --dry-run lists the files and needs no token. "
        "The models assist counselors; they are not a substitute for care.",
    )
    p.add_argument("run_dir", type=Path, help=PushConfig.model_fields["run_dir"].description)
    p.add_argument("--dataset-repo", required=True, help=PushConfig.model_fields["dataset_repo"].description)
    add_flags(p, PushConfig, skip=("run_dir", "dataset_repo"))
    _quiet(p)


def _annotate_parser(sub) -> None:
    p = sub.add_parser(
        "annotate",
        help="counselors label pairs on a local web page; agreement with each other, the data and the judges",
        description="Validate a data set and its judge with counselors, start to end: `annotate serve` (label "
        "pairs on a local page), `annotate stats` (agreement: kappas, alpha, vs the data set's labels and "
        "judges), `annotate import` (the labels as a file for eval-judge and train-judge), `annotate export`.",
    )
    actions = p.add_subparsers(dest="annotate_command", required=True, metavar="ACTION")
    a = actions.add_parser(
        "serve",
        help="the annotation page for --pairs, answers stored in --db",
        description="Serve a page that shows each annotator a client speech and two replies in a blinded order "
        "of their own (no model names, no scores) and asks which is better (1/2/3, arrows to move), "
        "optionally a 1-5 score per principle, a comment and a flag for discussion. Every answer is written "
        "to --db at once; signing in again resumes. New annotators' tokens are printed once.",
    )
    a.add_argument("--pairs", required=True, help=AnnotateConfig.model_fields["pairs"].description)
    add_flags(a, AnnotateConfig, skip=("pairs",))
    _quiet(a)
    db_help = "the annotation database"
    a = actions.add_parser("export", help="every answer as JSONL or CSV (ids, labels, scores, comments; no text)")
    a.add_argument("--db", required=True, type=Path, help=db_help)
    a.add_argument("--out", required=True, type=Path, help="a .jsonl or .csv file")
    _quiet(a)
    a = actions.add_parser(
        "stats",
        help="agreement between annotators, with the data set's labels and with judges, with bootstrap CIs",
        description="Percent agreement and Cohen's kappa between each two annotators, Fleiss' kappa over all, "
        "Krippendorff's ordinal alpha of the principle scores, each annotator's agreement with the data set's "
        "labels and with each --judge's verdicts (both orders, as eval-judge), on all pairs and on the "
        "length-robust ones; 95%% bootstrap CIs over pairs. Prints JSON.",
    )
    a.add_argument("--db", required=True, type=Path, help=db_help)
    a.add_argument(
        "--judge", action="append", help="a judge spec as eval-judge takes (rater, minilm, openai:..., rm:PATH); repeat"
    )
    a.add_argument("--judge-mode", choices=["json", "logprob"], default="json", help="LLM judge mode (default json)")
    a.add_argument("--out", type=Path, help="also write the JSON here")
    a.add_argument("--run-dir", type=Path, help="write RUN/annotation_stats.json for the run's report")
    a.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    _quiet(a)
    a = actions.add_parser(
        "import",
        help="the annotators' consensus as a labelled-pairs file for eval-judge and train-judge --annotations",
    )
    a.add_argument("--db", required=True, type=Path, help=db_help)
    a.add_argument("--out", required=True, type=Path, help="labelled pairs to write (.jsonl)")
    _quiet(a)


def _stage_parsers(sub) -> None:
    """run, and the data set stages: ingest, generate, rate, pairs."""
    p = sub.add_parser(
        "run",
        help="run the stages of a config in order, resuming done work",
        description="Run the stages of CONFIG in order into --run-dir: ingest, generate, rate, "
        "pairs, then reward_model, dpo, online and eval when the config has those sections, "
        "then the report. Work already in the run directory (and the call cache) is not redone. "
        "One process at a time per run directory.",
    )
    p.add_argument("config", help="run config YAML, e.g. configs/quickstart.yaml")
    p.add_argument("--run-dir", required=True, type=Path, help="the run directory (created if absent)")
    p.add_argument("--until", choices=STAGES, help="stop after this stage")
    p.add_argument(
        "--max-cost",
        type=float,
        metavar="USD",
        help="stop (exit 2, work kept) before a batch of model calls could take this command's "
        "spending past USD, priced by the config's prices section (default: the config's max_cost)",
    )
    _force(p, "ingest's and pairs' output")
    _quiet(p)

    p = sub.add_parser(
        "ingest",
        help="read client speeches, clean, filter, dedupe -> speeches.jsonl",
        description="Read client speeches from CSV, JSONL/JSON, Parquet or text; normalise; keep "
        "100-1000 characters (the paper's filter); drop exact and near duplicates "
        "(word 3-shingle Jaccard >= 0.9); write RUN_DIR/speeches.jsonl.",
    )
    p.add_argument("input", nargs="?", type=Path, help="input file (default: ingest.input of --config)")
    _common(p)
    add_flags(p, IngestConfig, skip=("input",))
    _force(p, "speeches.jsonl")

    p = sub.add_parser(
        "generate",
        help="draw k generators per speech; each writes a response",
        description="For every speech, draw k generators from the pool in --config "
        "(seeded) and write one response each to RUN_DIR/responses.jsonl.",
    )
    _common(p)
    add_flags(p, GenerateConfig)

    p = sub.add_parser(
        "rate",
        help="score every response 1-5 on each principle",
        description="The judge scores each response on every principle of the rubric; "
        "writes RUN_DIR/ratings.jsonl (failed ratings kept with their reason).",
    )
    _common(p)
    add_flags(p, RateConfig)
    p.add_argument(
        "--judge",
        help="'rater' (the offline default: the learned rater), 'minilm' (the hand-tuned rater) or a "
        "backend spec for an LLM judge, e.g. openai:gpt-4o, transformers:PATH, default",
    )
    p.add_argument("--mode", choices=["json", "logprob"], help="LLM judge mode (default json)")
    p.add_argument("--base-url", help="OpenAI-compatible server URL for an openai: judge")

    p = sub.add_parser(
        "pairs",
        help="build train/test preference pairs in the published format (or TRL's, --format trl)",
        description="Pair rated responses: train = every two responses of a speech whose "
        "weighted scores differ by >= --min-gap; test = best vs worst per test speech. "
        "Writes RUN_DIR/pairs/{train,test}.{parquet,jsonl} and a dataset card (README.md with Hub "
        "metadata), ready for datasets.load_dataset and TRL's DPOTrainer/RewardTrainer.",
    )
    _common(p)
    add_flags(p, PairsConfig)
    p.add_argument("--rubric", type=Path, help="rubric YAML used for the weights")
    _force(p, "the pairs")


def _judge_flags(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--judge",
        action="append",
        required=required,
        help="'reward_model' (RUN/reward_model), "
        "'rm:PATH' (a reward model: higher reward wins), 'rater' (the rate stage's default rater, per "
        "principle), 'minilm' (the hand-tuned rater), or a backend spec for "
        "an LLM judge (default, transformers:PATH, openai:MODEL); repeat for a panel (majority)",
    )
    add_flags(p, WinrateJudgeConfig, prefix="judge_", skip=("spec",))


def judge_config(args, default: str | None = None) -> dict:
    specs = args.judge or [default]
    return {"spec": specs if len(specs) > 1 else specs[0], **given(args, WinrateJudgeConfig, "judge_", ("spec",))}


def _eval_parsers(sub) -> None:
    p = sub.add_parser(
        "eval-winrate",
        help="win rate of a policy against a reference, judged in both orders",
        description="Both sides answer every held-out speech (cached); each judge compares the "
        "answers with the policy first and again with it second. A win counts only when both "
        "orders agree, else a tie (worth half). Writes OUT/winrate.json: win rate with a "
        "bootstrap 95%% CI, length-controlled win rate, per-principle win rates, position "
        "consistency, average lengths; and OUT/<judge>/judgements.jsonl.",
    )
    p.add_argument(
        "--policy",
        required=True,
        help="backend spec (default, transformers:PATH, openai:MODEL) or a "
        "model folder; with --run-dir also 'policy' (RUN/policy) or 'online' (RUN/online/best)",
    )
    p.add_argument("--reference", default="default", help="the other side, as --policy (default: SmolLM2-135M)")
    _judge_flags(p, required=False)
    p.add_argument("--policy-base-url", help="server URL for an openai: policy")
    p.add_argument("--reference-base-url", help="server URL for an openai: reference")
    p.add_argument(
        "--speeches",
        required=True,
        type=Path,
        help="held-out speeches, JSONL ({id, text} or MentalChat16K's {question_id, turns})",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--run-dir", type=Path, help="a run directory, for 'policy', 'online' and 'reward_model'")
    add_flags(p, EvalConfig, skip=("speeches",))
    add_flags(p, BackendConfig, only=("batch_size",))
    _quiet(p)

    p = sub.add_parser(
        "eval-judge",
        help="agreement of a judge with human-labelled preference pairs",
        description="Judge human-labelled pairs in both orders; report accuracy, Cohen's kappa "
        "and position consistency, so a cheap judge can be checked before it is trusted. Data: "
        "question/prompt + chosen + rejected, or question/prompt + response_a + response_b + "
        "label (A, B or tie); JSONL, CSV or Parquet.",
    )
    _judge_flags(p, required=True)
    p.add_argument("--data", required=True, type=Path, help="labelled pairs file")
    p.add_argument("--out", type=Path, help="write the metrics as JSON here")
    p.add_argument("--cache", type=Path, help="call cache (default: beside --out, else none kept)")
    add_flags(p, JudgeEvalConfig)
    _quiet(p)

    p = sub.add_parser(
        "report",
        help="write RUN/report.html (self-contained) and its PNGs",
        description="Plots of a run (score distributions, generators, pair gaps, reward-model "
        "reliability, training curves, win rates, length vs score) in one HTML file that opens "
        "offline; the PNGs go to RUN/report/.",
    )
    p.add_argument("run_dir", type=Path, help="the run directory")
    _quiet(p)


def _training_parsers(sub) -> None:
    def common(p: argparse.ArgumentParser, section: str) -> None:
        p.add_argument(
            "--pairs",
            required=True,
            help="a run's pairs/ folder, a .parquet/.jsonl/.csv file, a saved "
            "`datasets` folder, or a Hugging Face dataset id in the published schema (needs network)",
        )
        p.add_argument(
            "--config",
            help=f"a run config (e.g. configs/paper.yaml): its {section} section gives the "
            "defaults, flags override them",
        )
        p.add_argument("--out", required=True, type=Path, help="output folder for the model, log and card")
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue a killed run from its last checkpoint in OUT/checkpoints (same pairs and options)",
        )
        _quiet(p)

    p = sub.add_parser(
        "train-rm",
        help="train a Bradley-Terry reward model on preference pairs",
        description="Train a reward model (TRL RewardTrainer, -log sigmoid(r_chosen - r_rejected "
        "- margin)) on the train split; evaluate accuracy, AUC, ECE and Brier on the test split. "
        "Writes safetensors, tokenizer, metrics.json and a model card to --out.",
    )
    common(p, "reward_model")
    add_flags(p, RewardModelConfig)
    p.add_argument(
        "--no-margin",
        dest="use_margin",
        action="store_const",
        const=False,
        help="ignore the pairs' score margins in the loss (same as --no-use-margin)",
    )

    p = sub.add_parser(
        "eval-rm",
        help="score preference pairs with a reward model: accuracy, AUC, ECE, Brier",
        description="Score a file of preference pairs (published columns question/chosen/rejected "
        "or TRL's prompt/chosen/rejected; JSONL, CSV or Parquet) with a reward model.",
    )
    p.add_argument("--model", required=True, type=Path, help="a reward model folder (e.g. from train-rm)")
    p.add_argument("--data", required=True, help="pairs file, pairs/ folder (its test split) or saved datasets folder")
    p.add_argument("--out", type=Path, help="write the metrics as JSON here")
    p.add_argument("--predictions", type=Path, help="write each pair's r_chosen and r_rejected here (JSONL, row order)")
    add_flags(p, RewardEvalConfig)
    _quiet(p)

    p = sub.add_parser(
        "train-dpo",
        help="align a policy with offline DPO on preference pairs",
        description="DPO (TRL DPOTrainer) on the train split, the base as reference. Logs reward "
        "margins and accuracies; writes the policy (safetensors), log and model card to --out.",
    )
    common(p, "dpo")
    add_flags(p, DPOStageConfig)

    p = sub.add_parser(
        "train-online",
        help="online iterative DPO (DPO-Iter) against a reward model",
        description="Each round samples speeches, the current policy writes k responses per "
        "speech, the reward model picks best and worst as a DPO pair, then a DPO update. Rounds "
        "resume; the best round by mean dev reward is copied to OUT/best.",
    )
    p.add_argument("--policy", default="default", help="starting policy: 'default' or a local model folder")
    p.add_argument("--reward-model", required=True, type=Path, help="a reward model folder (from train-rm)")
    p.add_argument("--speeches", required=True, type=Path, help="speeches.jsonl (ingest output: id, text)")
    p.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per round)")
    p.add_argument(
        "--config",
        help="a run config (e.g. configs/paper.yaml): its online section gives the defaults, flags override them",
    )
    add_flags(p, OnlineConfig)
    add_flags(p, DPOConfig, prefix="dpo_", aliases={"max_steps": "--dpo-steps"})
    _quiet(p)
