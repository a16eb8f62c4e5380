"""The ``psychocounsel`` command: one subcommand per stage, plus ``run``. Parsing only; the work
is in the stage modules. Bad input exits with code 2 and one line on stderr."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import UserError
from .pipeline import STAGES

DESCRIPTION = ("Principle-based preference learning for psycho-counseling: rate counselor responses "
               "on seven principles, build a preference data set from the ratings, train a reward model "
               "and a policy (DPO, online iterative DPO), and measure win rates.")
EPILOG = """\
stages: ingest -> generate -> rate -> pairs [-> reward_model -> dpo -> online -> eval] -> report.
Each reads and writes the run directory (--run-dir); `run` chains them. Rerunning resumes and
skips finished work. train-*, eval-* and report also run on their own.
Example: psychocounsel run configs/quickstart.yaml --run-dir runs/quickstart"""


def _common(p: argparse.ArgumentParser, config_required: bool = False) -> None:
    p.add_argument("--run-dir", required=True, type=Path, help="the run directory (created if absent)")
    p.add_argument("--config", required=config_required, help="a run config YAML (see configs/)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="psychocounsel", description=DESCRIPTION,
                                     epilog=EPILOG, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"psychocounsel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the stages of a config in order, resuming done work",
                       description="Run the stages of CONFIG in order into --run-dir: ingest, generate, rate, "
                       "pairs, then reward_model, dpo, online and eval when the config has those sections, "
                       "then the report. Work already in the run directory (and the call cache) is not redone.")
    p.add_argument("config", help="run config YAML, e.g. configs/quickstart.yaml")
    p.add_argument("--run-dir", required=True, type=Path, help="the run directory (created if absent)")
    p.add_argument("--until", choices=STAGES,
                   help="stop after this stage")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")

    p = sub.add_parser("ingest", help="read client speeches, clean, filter, dedupe -> speeches.jsonl",
                       description="Read client speeches from CSV, JSONL/JSON, Parquet or text; normalise; keep "
                       "100-1000 characters (the paper's filter); drop exact and near duplicates "
                       "(word 3-shingle Jaccard >= 0.9); write RUN_DIR/speeches.jsonl.")
    p.add_argument("input", nargs="?", type=Path, help="input file (default: ingest.input of --config)")
    _common(p)
    p.add_argument("--format", choices=["auto", "csv", "jsonl", "json", "parquet", "txt"])
    p.add_argument("--text-column", help="column holding the speech (default: text)")
    p.add_argument("--id-column", help="column with stable ids (default: content hash)")
    p.add_argument("--topic-column", help="column with the topic")
    p.add_argument("--context-column", help="column with earlier turns, a list of {role, content}")
    p.add_argument("--min-chars", type=int, help="shortest speech kept (default 100)")
    p.add_argument("--max-chars", type=int, help="longest speech kept (default 1000)")
    p.add_argument("--near-duplicate-threshold", type=float, help="Jaccard at or above which a speech "
                   "is a near duplicate (default 0.9; 1.0 = exact only)")
    p.add_argument("--scrub-pii", action="store_true", default=None,
                   help="replace emails, phone numbers, URLs and @handles with placeholders")
    p.add_argument("--limit", type=int, help="keep only the first N speeches")

    p = sub.add_parser("generate", help="draw k generators per speech; each writes a response",
                       description="For every speech, draw k generators from the pool in --config "
                       "(seeded) and write one response each to RUN_DIR/responses.jsonl.")
    _common(p)
    p.add_argument("--k", type=int, help="generators drawn per speech (default 4)")
    p.add_argument("--seed", type=int, help="seed of the draw")

    p = sub.add_parser("rate", help="score every response 1-5 on each principle",
                       description="The judge scores each response on every principle of the rubric; "
                       "writes RUN_DIR/ratings.jsonl (failed ratings kept with their reason).")
    _common(p)
    p.add_argument("--rubric", type=Path, help="rubric YAML (default: the packaged psychocounsel rubric)")
    p.add_argument("--judge", help="'minilm' (offline default) or a backend spec for an LLM judge, "
                   "e.g. openai:gpt-4o, transformers:PATH, default")
    p.add_argument("--mode", choices=["json", "logprob"], help="LLM judge mode (default json)")
    p.add_argument("--base-url", help="OpenAI-compatible server URL for an openai: judge")

    p = sub.add_parser("pairs", help="build train/test preference pairs in the published format",
                       description="Pair rated responses: train = every two responses of a speech whose "
                       "weighted scores differ by >= --min-gap; test = best vs worst per test speech. "
                       "Writes RUN_DIR/pairs/{train,test}.{parquet,jsonl} and a dataset card.")
    _common(p)
    p.add_argument("--min-gap", type=float, help="smallest score gap of a train pair (default 1.0)")
    p.add_argument("--test-fraction", type=float, help="share of speeches held out (default 0.1)")
    p.add_argument("--seed", type=int, help="seed of the train/test split")
    p.add_argument("--rubric", type=Path, help="rubric YAML used for the weights")
    _training_parsers(sub)
    _eval_parsers(sub)
    return parser


def _eval_parsers(sub) -> None:
    p = sub.add_parser("eval-winrate", help="win rate of a policy against a reference, judged in both orders",
                       description="Both sides answer every held-out speech (cached); each judge compares the "
                       "answers with the policy first and again with it second. A win counts only when both "
                       "orders agree, else a tie (worth half). Writes OUT/winrate.json: win rate with a "
                       "bootstrap 95%% CI, length-controlled win rate, per-principle win rates, position "
                       "consistency, average lengths; and OUT/<judge>/judgements.jsonl.")
    p.add_argument("--policy", required=True, help="backend spec (default, transformers:PATH, openai:MODEL) or a "
                   "model folder; with --run-dir also 'policy' (RUN/policy) or 'online' (RUN/online/best)")
    p.add_argument("--reference", default="default", help="the other side, as --policy (default: SmolLM2-135M)")
    p.add_argument("--judge", action="append", help="'rm:PATH' (a reward model: higher reward wins), a backend spec "
                   "for an LLM judge, or 'reward_model' (RUN/reward_model); repeat for a panel (majority)")
    p.add_argument("--judge-mode", choices=["json", "logprob"], default="json",
                   help="LLM judge: one JSON verdict per comparison, or A/B log-probabilities per principle")
    p.add_argument("--judge-base-url", help="OpenAI-compatible server URL for openai: judges")
    p.add_argument("--policy-base-url", help="server URL for an openai: policy")
    p.add_argument("--reference-base-url", help="server URL for an openai: reference")
    p.add_argument("--speeches", required=True, type=Path, help="held-out speeches, JSONL ({id, text} or "
                   "MentalChat16K's {question_id, turns})")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--run-dir", type=Path, help="a run directory, for 'policy', 'online' and 'reward_model'")
    p.add_argument("--max-tokens", type=int, help="answer length limit in tokens (default 256)")
    p.add_argument("--temperature", type=float, help="sampling temperature of both sides (default 0.7)")
    p.add_argument("--system-prompt", help="system prompt given to both sides")
    p.add_argument("--trim-incomplete", action="store_true", default=None,
                   help="cut answers that hit --max-tokens back to their last full sentence")
    p.add_argument("--batch-size", type=int, default=8, help="local models: answers per generate() call")
    p.add_argument("--limit", type=int, help="only the first N speeches")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")

    p = sub.add_parser("eval-judge", help="agreement of a judge with human-labelled preference pairs",
                       description="Judge human-labelled pairs in both orders; report accuracy, Cohen's kappa "
                       "and position consistency, so a cheap judge can be checked before it is trusted. Data: "
                       "question/prompt + chosen + rejected, or question/prompt + response_a + response_b + "
                       "label (A, B or tie); JSONL, CSV or Parquet.")
    p.add_argument("--judge", action="append", required=True, help="as eval-winrate's --judge; repeat for a panel")
    p.add_argument("--judge-mode", choices=["json", "logprob"], default="json")
    p.add_argument("--judge-base-url", help="OpenAI-compatible server URL for openai: judges")
    p.add_argument("--data", required=True, type=Path, help="labelled pairs file")
    p.add_argument("--out", type=Path, help="write the metrics as JSON here")
    p.add_argument("--cache", type=Path, help="call cache (default: beside --out, else none kept)")
    p.add_argument("--limit", type=int, help="only the first N pairs")
    p.add_argument("--seed", type=int, default=0, help="seed of which pairs show the chosen answer first")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")

    p = sub.add_parser("report", help="write RUN/report.html (self-contained) and its PNGs",
                       description="Plots of a run (score distributions, generators, pair gaps, reward-model "
                       "reliability, training curves, win rates, length vs score) in one HTML file that opens "
                       "offline; the PNGs go to RUN/report/.")
    p.add_argument("run_dir", type=Path, help="the run directory")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _pairs_and_base(p: argparse.ArgumentParser, base_default: str, section: str) -> None:
    p.add_argument("--pairs", required=True, help="a run's pairs/ folder, a .parquet/.jsonl/.csv file, a saved "
                   "`datasets` folder, or a Hugging Face dataset id in the published schema (needs network)")
    p.add_argument("--base", help=f"'default' (SmolLM2-135M-Instruct), 'minilm' (all-MiniLM-L6-v2) or a local "
                   f"model folder / .gguf file (default: the --config section's, else {base_default})")
    p.add_argument("--config", help=f"a run config (e.g. configs/paper.yaml): its {section} section gives the "
                   "defaults, flags override them")
    p.add_argument("--out", required=True, type=Path, help="output folder for the model, log and card")
    p.add_argument("--epochs", type=float, help="passes over the train split")
    p.add_argument("--batch-size", type=int, help="pairs per step and device")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--max-length", type=int, help="tokens per prompt + response")
    p.add_argument("--lora", action="store_true", default=None, help="train LoRA adapters (merged on save)")
    p.add_argument("--lora-r", type=int, help="LoRA rank (default 16)")
    p.add_argument("--seed", type=int)
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _training_parsers(sub) -> None:
    p = sub.add_parser("train-rm", help="train a Bradley-Terry reward model on preference pairs",
                       description="Train a reward model (TRL RewardTrainer, -log sigmoid(r_chosen - r_rejected "
                       "- margin)) on the train split; evaluate accuracy, AUC, ECE and Brier on the test split. "
                       "Writes safetensors, tokenizer, metrics.json and a model card to --out.")
    _pairs_and_base(p, "minilm", "reward_model")
    p.add_argument("--no-margin", dest="use_margin", action="store_false", default=None,
                   help="ignore the pairs' score margins in the loss")

    p = sub.add_parser("eval-rm", help="score preference pairs with a reward model: accuracy, AUC, ECE, Brier",
                       description="Score a file of preference pairs (published columns question/chosen/rejected "
                       "or TRL's prompt/chosen/rejected; JSONL, CSV or Parquet) with a reward model.")
    p.add_argument("--model", required=True, type=Path, help="a reward model folder (e.g. from train-rm)")
    p.add_argument("--data", required=True, help="pairs file, pairs/ folder (its test split) or saved datasets folder")
    p.add_argument("--out", type=Path, help="write the metrics as JSON here")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")

    p = sub.add_parser("train-dpo", help="align a policy with offline DPO on preference pairs",
                       description="DPO (TRL DPOTrainer) on the train split, the base as reference. Logs reward "
                       "margins and accuracies; writes the policy (safetensors), log and model card to --out.")
    _pairs_and_base(p, "default", "dpo")
    p.add_argument("--beta", type=float, help="DPO beta (default 0.1, as in the paper)")
    p.add_argument("--loss-type", help="TRL loss type (default sigmoid)")
    p.add_argument("--max-prompt-length", type=int, help="speech tokens kept (the end of the speech)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps")

    p = sub.add_parser("train-online", help="online iterative DPO (DPO-Iter) against a reward model",
                       description="Each round samples speeches, the current policy writes k responses per "
                       "speech, the reward model picks best and worst as a DPO pair, then a DPO update. Rounds "
                       "resume; the best round by mean dev reward is copied to OUT/best.")
    p.add_argument("--policy", default="default", help="starting policy: 'default' or a local model folder")
    p.add_argument("--reward-model", required=True, type=Path, help="a reward model folder (from train-rm)")
    p.add_argument("--speeches", required=True, type=Path, help="speeches.jsonl (ingest output: id, text)")
    p.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per round)")
    p.add_argument("--config", help="a run config (e.g. configs/paper.yaml): its online section gives the "
                   "defaults, flags override them")
    p.add_argument("--rounds", type=int, help="DPO rounds (default 1)")
    p.add_argument("--speeches-per-round", type=int, help="speeches sampled per round (default 8)")
    p.add_argument("--k", type=int, help="responses per speech (default 8, as in the paper)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 1.0)")
    p.add_argument("--max-tokens", type=int, help="tokens per response (default 128)")
    p.add_argument("--min-gap", type=float, help="smallest reward gap kept as a pair (default 0)")
    p.add_argument("--dev-fraction", type=float, help="share of speeches held out to pick the best round")
    p.add_argument("--seed", type=int)
    p.add_argument("--dpo-steps", type=int, help="DPO steps per round (default: one epoch)")
    p.add_argument("--dpo-lr", type=float, help="DPO learning rate per round")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _config(args):
    from .config import RunConfig, load_config

    return load_config(args.config) if getattr(args, "config", None) else RunConfig()


def _override(section, pairs: dict) -> None:
    for key, value in pairs.items():
        if value is not None:
            setattr(section, key, value)


def _apply_overrides(cfg, args) -> None:
    from .config import JudgeConfig

    if args.command == "ingest":
        _override(cfg.ingest, {"input": args.input, "format": args.format, "text_column": args.text_column,
                               "id_column": args.id_column, "topic_column": args.topic_column,
                               "context_column": args.context_column, "min_chars": args.min_chars,
                               "max_chars": args.max_chars, "scrub_pii": args.scrub_pii, "limit": args.limit,
                               "near_duplicate_threshold": args.near_duplicate_threshold})
    elif args.command == "generate":
        _override(cfg.generate, {"k": args.k, "seed": args.seed})
    elif args.command == "rate":
        _override(cfg.rate, {"rubric": args.rubric})
        if args.judge:
            cfg.rate.judge = JudgeConfig(type="minilm") if args.judge == "minilm" else JudgeConfig(
                type="llm", backend={"spec": args.judge, "base_url": args.base_url}, mode=args.mode or "json")
    elif args.command == "pairs":
        _override(cfg.pairs, {"min_gap": args.min_gap, "test_fraction": args.test_fraction, "seed": args.seed})
        _override(cfg.rate, {"rubric": args.rubric})


def _options(args, names: tuple[str, ...]) -> dict:
    """The options the user gave; the training functions' own defaults fill in the rest."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


_COMMON = ("epochs", "batch_size", "grad_accum", "lr", "max_length", "lora", "lora_r", "seed")


def _section_options(args, section: str, names: tuple[str, ...], base_default: str) -> tuple[str, dict]:
    """(base, options) for a training command: the --config section's values (when given), then
    the flags the user set; the training functions' own defaults fill in the rest."""
    opts: dict = {}
    if args.config:
        from .config import load_config

        values = getattr(load_config(args.config), section)
        if values is None:
            raise UserError(f"{args.config} has no '{section}' section")
        opts = values.model_dump()
    section_base = opts.pop("base", None)
    opts.update(_options(args, names))
    return getattr(args, "base", None) or section_base or base_default, opts


def _train_rm(args) -> None:
    from .train.reward import train_reward_model

    base, opts = _section_options(args, "reward_model", _COMMON + ("use_margin",), "minilm")
    metrics = train_reward_model(args.pairs, base, args.out, **opts)
    if metrics:  # empty on the non-main processes of accelerate launch
        print(json.dumps({k: metrics[k] for k in ("n", "accuracy", "auc", "ece", "brier")}))


def _eval_rm(args) -> None:
    from .evaluate.reward_eval import evaluate_file
    from .store import write_json

    metrics = evaluate_file(args.model, args.data, batch_size=args.batch_size, max_length=args.max_length)
    if args.out:
        write_json(args.out, metrics)
    print(json.dumps(metrics))


def _train_dpo(args) -> None:
    from .train.dpo import train_dpo
    from .train.reward import load_pairs

    base, opts = _section_options(args, "dpo", _COMMON + ("beta", "loss_type", "max_prompt_length", "max_steps"),
                                  "default")
    summary = train_dpo(load_pairs(args.pairs, "train"), base, args.out, **opts)
    if summary:
        print(json.dumps(summary))


def _train_online(args) -> None:
    from .store import read_jsonl
    from .train.online import train_online

    if not args.speeches.is_file():
        raise UserError(f"speeches file not found: {args.speeches}")
    speeches = [{"id": r["id"], "text": r["text"]} for r in read_jsonl(args.speeches)]
    names = ("rounds", "speeches_per_round", "k", "temperature", "max_tokens", "min_gap", "dev_fraction", "seed")
    opts = _section_options(args, "online", names, "")[1]
    dpo = {**(opts.pop("dpo", None) or {}),
           **{k: v for k, v in (("max_steps", args.dpo_steps), ("lr", args.dpo_lr)) if v is not None}}
    summary = train_online(args.policy, args.reward_model, speeches, args.out, dpo_options=dpo or None, **opts)
    print(json.dumps({"best_round": summary["best_round"], "best_policy": str(summary["best_policy"])}))


def _eval_winrate(args) -> None:
    from .config import BackendConfig, EvalConfig, WinrateJudgeConfig
    from .evaluate import winrate

    judges = args.judge or ["reward_model"]
    cfg = EvalConfig(speeches=args.speeches,
                     policy=BackendConfig(spec=args.policy, base_url=args.policy_base_url, batch_size=args.batch_size),
                     reference=BackendConfig(spec=args.reference, base_url=args.reference_base_url,
                                             batch_size=args.batch_size),
                     judges=[WinrateJudgeConfig(spec=judges if len(judges) > 1 else judges[0], mode=args.judge_mode,
                                                base_url=args.judge_base_url)],
                     **_options(args, ("max_tokens", "temperature", "system_prompt", "limit", "trim_incomplete")))
    print(winrate.headline(winrate.run(cfg, args.out, run_dir=args.run_dir)))


def _eval_judge(args) -> None:
    from .evaluate.judge_eval import run_eval_judge

    result = run_eval_judge(args.judge, args.data, out=args.out, mode=args.judge_mode,
                            base_url=args.judge_base_url, cache_path=args.cache, limit=args.limit, seed=args.seed)
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}))


def _report(args) -> None:
    from .report import write_report

    if not args.run_dir.is_dir():
        raise UserError(f"no such run directory: {args.run_dir}")
    print(write_report(args.run_dir))


# Commands that take their own arguments rather than a stage of a run config.
COMMANDS = {"train-rm": _train_rm, "eval-rm": _eval_rm, "train-dpo": _train_dpo, "train-online": _train_online,
            "eval-winrate": _eval_winrate, "eval-judge": _eval_judge, "report": _report}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpcore", "transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # TRL 1.16 still calls transformers' gradient_checkpointing_* names, renamed in transformers 5:
    # three FutureWarnings per training run that users can do nothing about.
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6", category=FutureWarning)
    try:
        from . import pipeline

        if args.command in COMMANDS:
            COMMANDS[args.command](args)
        elif args.command == "run":
            from .config import load_config

            pipeline.run(load_config(args.config), args.run_dir, args.until, config_path=str(args.config))
        else:
            from pydantic import ValidationError

            from .config import format_validation_error

            cfg = _config(args)
            try:
                _apply_overrides(cfg, args)
            except ValidationError as e:
                raise UserError(format_validation_error(e, "command line")) from None
            from .store import RunDir

            pipeline.run_stage(args.command, cfg, RunDir(args.run_dir))
    except UserError as e:
        print(f"psychocounsel: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("psychocounsel: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
