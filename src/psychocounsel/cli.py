"""The ``psychocounsel`` command: one subcommand per stage, plus ``run``. Parsing only; the work
is in the stage modules. Bad input exits with code 2 and one line on stderr."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from pydantic import ValidationError

from . import __version__
from .config import (
    BackendConfig,
    DPOConfig,
    DPOStageConfig,
    EvalConfig,
    GenerateConfig,
    IngestConfig,
    JudgeEvalConfig,
    OnlineConfig,
    PairsConfig,
    RateConfig,
    RewardEvalConfig,
    RewardModelConfig,
    RunConfig,
    WinrateJudgeConfig,
    format_validation_error,
    load_config,
    override,
)
from .errors import UserError
from .flags import add_flags, given
from .lock import FolderLock
from .pipeline import STAGES
from .specs import parse_spec
from .store import RunDir, check_dir_path, check_file_path

DESCRIPTION = (
    "Principle-based preference learning for psycho-counseling: rate counselor responses "
    "on seven principles, build a preference data set from the ratings, train a reward model "
    "and a policy (DPO, online iterative DPO), and measure win rates."
)
EPILOG = """\
stages: ingest -> generate -> rate -> pairs [-> reward_model -> dpo -> online -> eval] -> report.
Each reads and writes the run directory (--run-dir); `run` chains them. Rerunning resumes and
skips finished work. train-*, eval-* and report also run on their own.
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
        help="'minilm' (offline default) or a backend spec for an LLM judge, "
        "e.g. openai:gpt-4o, transformers:PATH, default",
    )
    p.add_argument("--mode", choices=["json", "logprob"], help="LLM judge mode (default json)")
    p.add_argument("--base-url", help="OpenAI-compatible server URL for an openai: judge")

    p = sub.add_parser(
        "pairs",
        help="build train/test preference pairs in the published format",
        description="Pair rated responses: train = every two responses of a speech whose "
        "weighted scores differ by >= --min-gap; test = best vs worst per test speech. "
        "Writes RUN_DIR/pairs/{train,test}.{parquet,jsonl} and a dataset card.",
    )
    _common(p)
    add_flags(p, PairsConfig)
    p.add_argument("--rubric", type=Path, help="rubric YAML used for the weights")
    _force(p, "the pairs")
    _training_parsers(sub)
    _eval_parsers(sub)
    return parser


def _judge_flags(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--judge",
        action="append",
        required=required,
        help="'reward_model' (RUN/reward_model), "
        "'rm:PATH' (a reward model: higher reward wins), 'minilm' (the rater), or a backend spec for "
        "an LLM judge (default, transformers:PATH, openai:MODEL); repeat for a panel (majority)",
    )
    add_flags(p, WinrateJudgeConfig, prefix="judge_", skip=("spec",))


def _judge_config(args, default: str | None = None) -> dict:
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


# -- commands ---------------------------------------------------------------------------------


def _run_config(args) -> RunConfig:
    return load_config(args.config) if getattr(args, "config", None) else RunConfig()


def _section(args, name: str, cls):
    """The --config file's ``name`` section (absent: an error naming it), else the defaults."""
    if not getattr(args, "config", None):
        return cls()
    section = getattr(load_config(args.config), name)
    if section is None:
        raise UserError(f"{args.config} has no '{name}' section")
    return section


def _stage_config(args) -> RunConfig:
    """The run config of a stage command: --config, then the flags the user gave."""
    cfg = _run_config(args)
    if args.command == "ingest":
        cfg.ingest = override(cfg.ingest, {**given(args, IngestConfig), "input": args.input})
    elif args.command == "generate":
        cfg.generate = override(cfg.generate, given(args, GenerateConfig))
    elif args.command == "rate":
        cfg.rate = override(cfg.rate, given(args, RateConfig))
        if args.judge:
            judge = (
                {"type": "minilm"}
                if parse_spec(args.judge).kind == "minilm"
                else {
                    "type": "llm",
                    "backend": {"spec": args.judge, "base_url": args.base_url},
                    "mode": args.mode or "json",
                }
            )
            cfg.rate = override(cfg.rate, {"judge": judge})
    elif args.command == "pairs":
        cfg.pairs = override(cfg.pairs, given(args, PairsConfig))
        cfg.rate = override(cfg.rate, {"rubric": args.rubric})
    return cfg


def _print(result: dict, keys: tuple[str, ...] | None = None) -> None:
    if result:  # empty on the non-main processes of accelerate launch
        print(json.dumps({k: result[k] for k in keys} if keys else result))


def _train_rm(args) -> None:
    from .train.reward import train_reward_model

    cfg = override(_section(args, "reward_model", RewardModelConfig), given(args, RewardModelConfig))
    _print(train_reward_model(args.pairs, cfg, args.out), ("n", "accuracy", "auc", "ece", "brier"))


def _eval_rm(args) -> None:
    from .evaluate.reward_eval import evaluate_file
    from .store import write_json

    cfg = override(RewardEvalConfig(), given(args, RewardEvalConfig))
    metrics = evaluate_file(args.model, args.data, cfg)
    if args.out:
        write_json(check_file_path(args.out), metrics)
    print(json.dumps(metrics))


def _train_dpo(args) -> None:
    from .pairs_io import load_pairs
    from .train.dpo import train_dpo

    cfg = override(_section(args, "dpo", DPOStageConfig), given(args, DPOStageConfig))
    _print(train_dpo(load_pairs(args.pairs, "train"), cfg, args.out))


def _train_online(args) -> None:
    from .train.online import read_speeches, train_online

    cfg = override(_section(args, "online", OnlineConfig), given(args, OnlineConfig))
    cfg = override(cfg, {"dpo": override(cfg.dpo, given(args, DPOConfig, prefix="dpo_"))})
    summary = train_online(args.policy, args.reward_model, read_speeches(args.speeches), args.out, cfg)
    print(json.dumps({"best_round": summary["best_round"], "best_policy": str(summary["best_policy"])}))


def _eval_winrate(args) -> None:
    from .evaluate import winrate

    sides = {
        side: {
            "spec": getattr(args, side),
            "base_url": getattr(args, f"{side}_base_url"),
            **given(args, BackendConfig, only=("batch_size",)),
        }
        for side in ("policy", "reference")
    }
    try:
        cfg = EvalConfig(
            speeches=args.speeches,
            judges=[_judge_config(args, "reward_model")],
            **sides,
            **given(args, EvalConfig, skip=("speeches",)),
        )
    except ValidationError as e:
        raise UserError(format_validation_error(e, "command line")) from None
    print(winrate.headline(winrate.run(cfg, args.out, run_dir=args.run_dir)))


def _eval_judge(args) -> None:
    from .evaluate.judge_eval import run_eval_judge

    try:
        cfg = JudgeEvalConfig(judge=_judge_config(args), **given(args, JudgeEvalConfig))
    except ValidationError as e:
        raise UserError(format_validation_error(e, "command line")) from None
    result = run_eval_judge(cfg, args.data, out=args.out and check_file_path(args.out), cache_path=args.cache)
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}))


def _report(args) -> None:
    from .report import write_report

    if not args.run_dir.is_dir():
        raise UserError(f"no such run directory: {args.run_dir}")
    print(write_report(args.run_dir))


# Commands that take their own arguments rather than a stage of a run config, and the argument
# naming the folder each one writes (locked while it runs).
COMMANDS = {
    "train-rm": _train_rm,
    "eval-rm": _eval_rm,
    "train-dpo": _train_dpo,
    "train-online": _train_online,
    "eval-winrate": _eval_winrate,
    "eval-judge": _eval_judge,
    "report": _report,
}
WRITES = {"train-rm": "out", "train-dpo": "out", "train-online": "out", "eval-winrate": "out", "report": "run_dir"}


def _locked_folder(args) -> Path | None:
    name = "run_dir" if args.command == "run" or args.command in STAGES else WRITES.get(args.command)
    return check_dir_path(getattr(args, name), f"--{name.replace('_', '-')}") if name else None


def _dispatch(args) -> None:
    from . import pipeline

    if args.command in COMMANDS:
        COMMANDS[args.command](args)
    elif args.command == "run":
        pipeline.run(load_config(args.config), args.run_dir, args.until, config_path=str(args.config), force=args.force)
    else:
        pipeline.run_stage(args.command, _stage_config(args), RunDir(args.run_dir), force=getattr(args, "force", False))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore", "transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # TRL 1.16 still calls transformers' gradient_checkpointing_* names, renamed in transformers 5:
    # three FutureWarnings per training run that users can do nothing about.
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6", category=FutureWarning)
    try:
        folder = _locked_folder(args)
        if folder is None:
            _dispatch(args)
        else:
            with FolderLock(folder):
                _dispatch(args)
    except UserError as e:
        print(f"psychocounsel: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("psychocounsel: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
