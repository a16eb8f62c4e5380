"""The ``psychocounsel`` command: one subcommand per stage, plus ``run``. Parsing only; the work
is in the stage modules. Bad input exits with code 2 and one line on stderr."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import warnings
from pathlib import Path

from pydantic import ValidationError

from .arguments import build_parser, judge_config
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
    RunConfig,
    ScreenConfig,
    ServeConfig,
    TrainJudgeConfig,
    format_validation_error,
    load_config,
    override,
)
from .errors import UserError
from .flags import given
from .lock import FolderLock
from .pipeline import STAGES
from .specs import RATERS, parse_spec
from .store import RunDir, check_dir_path, check_file_path

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
            kind = parse_spec(args.judge).kind
            judge = (
                {"type": kind}
                if kind in RATERS
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
    _print(train_reward_model(args.pairs, cfg, args.out, resume=args.resume), ("n", "accuracy", "auc", "ece", "brier"))


def _eval_rm(args) -> None:
    from .evaluate.reward_eval import evaluate_file
    from .store import write_json

    cfg = override(RewardEvalConfig(), given(args, RewardEvalConfig))
    predictions = check_file_path(args.predictions, "--predictions") if args.predictions else None
    metrics = evaluate_file(args.model, args.data, cfg, predictions)
    if args.out:
        write_json(check_file_path(args.out), metrics)
    print(json.dumps(metrics))


def _train_dpo(args) -> None:
    from .pairs_io import load_pairs
    from .train.dpo import train_dpo

    cfg = override(_section(args, "dpo", DPOStageConfig), given(args, DPOStageConfig))
    _print(train_dpo(load_pairs(args.pairs, "train"), cfg, args.out, resume=args.resume))


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
            judges=[judge_config(args, "reward_model")],
            **sides,
            **given(args, EvalConfig, skip=("speeches",)),
        )
    except ValidationError as e:
        raise UserError(format_validation_error(e, "command line")) from None
    print(winrate.headline(winrate.run(cfg, args.out, run_dir=args.run_dir)))


def _eval_judge(args) -> None:
    from .evaluate.judge_eval import length_warning, run_eval_judge

    try:
        cfg = JudgeEvalConfig(judge=judge_config(args), **given(args, JudgeEvalConfig))
    except ValidationError as e:
        raise UserError(format_validation_error(e, "command line")) from None
    result = run_eval_judge(cfg, args.data, out=args.out and check_file_path(args.out), cache_path=args.cache)
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}))
    flag = length_warning(result)
    if flag:  # on stderr, so that stdout stays one JSON line
        print(flag, file=sys.stderr)


def _screen(args) -> None:
    from .crisis import screen_file

    cfg = override(ScreenConfig(), given(args, ScreenConfig))
    out = check_file_path(args.out) if args.out else None
    metrics = check_file_path(args.metrics, "--metrics") if args.metrics else None
    print(json.dumps(screen_file(cfg, args.data, out, metrics)))


def _train_judge(args) -> None:
    from .judge.train_rater import WEIGHTS, summary, train
    from .store import write_json

    cfg = override(TrainJudgeConfig(), given(args, TrainJudgeConfig))
    if not cfg.data.expanduser().is_dir():
        raise UserError(f"--data {cfg.data} is not a folder (it should hold epitome-empathy, counsel-chat, ...)")
    cfg = cfg.model_copy(update={"out": check_file_path(cfg.out or WEIGHTS, "--out")})
    report_path = check_file_path(args.report, "--report") if args.report else None
    report = train(cfg)
    if report_path:
        write_json(report_path, report)
    print(json.dumps(summary(report)))


def _serve(args) -> None:
    from .serve import serve

    try:
        cfg = ServeConfig(policy=args.policy, **given(args, ServeConfig, skip=("policy",)))
    except ValidationError as e:
        raise UserError(format_validation_error(e, "command line")) from None
    serve(cfg)


def _annotate(args) -> None:
    from . import annotate
    from .annotate import dataset
    from .store import write_json

    if args.annotate_command == "serve":
        try:
            cfg = AnnotateConfig(pairs=args.pairs, **given(args, AnnotateConfig, skip=("pairs",)))
        except ValidationError as e:
            raise UserError(format_validation_error(e, "command line")) from None
        annotate.serve(cfg)
        return
    store = dataset.open_store(args.db)
    try:
        if args.annotate_command == "export":
            print(json.dumps({"rows": dataset.export(store, check_file_path(args.out))}))
        elif args.annotate_command == "import":
            print(json.dumps(dataset.import_labels(store, check_file_path(args.out))))
        else:
            from .annotate.agreement import annotation_stats

            result = annotation_stats(store, args.judge, args.judge_mode, seed=args.seed)
            if args.out:
                write_json(check_file_path(args.out), result)
            if args.run_dir:
                write_json(check_dir_path(args.run_dir, "--run-dir") / "annotation_stats.json", result)
            print(json.dumps(result))
    finally:
        store.close()


def _report(args) -> None:
    from .report import write_report

    if not args.run_dir.is_dir():
        raise UserError(f"no such run directory: {args.run_dir}")
    print(write_report(args.run_dir))


def _push(args) -> None:
    from .push import push

    try:
        cfg = PushConfig(
            run_dir=args.run_dir,
            dataset_repo=args.dataset_repo,
            **given(args, PushConfig, skip=("run_dir", "dataset_repo")),
        )
    except ValidationError as e:
        raise UserError(format_validation_error(e, "command line")) from None
    print(push(cfg))


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
    "screen": _screen,
    "train-judge": _train_judge,
    "serve": _serve,
    "annotate": _annotate,
    "push": _push,
}
WRITES = {"train-rm": "out", "train-dpo": "out", "train-online": "out", "eval-winrate": "out", "report": "run_dir"}


def _locked_folder(args) -> Path | None:
    name = "run_dir" if args.command == "run" or args.command in STAGES else WRITES.get(args.command)
    return check_dir_path(getattr(args, name), f"--{name.replace('_', '-')}") if name else None


def serve_command(run_dir: Path) -> str | None:
    """The command that serves a run's policy (and reward model), as this process was started:
    ``.venv/bin/psychocounsel`` stays that, ``python -m psychocounsel`` stays that."""
    policy, rm = Path(run_dir) / "policy", Path(run_dir) / "reward_model"
    if not (policy / "config.json").is_file():
        return None
    argv0 = sys.argv[0] if sys.argv else ""
    exe = (
        shlex.quote(argv0) if Path(argv0).name == "psychocounsel" else f"{shlex.quote(sys.executable)} -m psychocounsel"
    )
    command = f"{exe} serve --policy {shlex.quote(str(policy))}"
    if (rm / "config.json").is_file():
        command += f" --reward-model {shlex.quote(str(rm))}"
    return command


def _dispatch(args) -> None:
    from . import pipeline

    if args.command in COMMANDS:
        COMMANDS[args.command](args)
    elif args.command == "run":
        cfg = load_config(args.config)
        if args.max_cost is not None:
            try:
                cfg.max_cost = args.max_cost  # validated on assignment: no negative or nan limit
            except ValidationError as e:
                raise UserError(format_validation_error(e, "--max-cost")) from None
        pipeline.run(cfg, args.run_dir, args.until, config_path=str(args.config), force=args.force)
        command = serve_command(args.run_dir)
        if command:
            print(
                f"Serve the policy (OpenAI-compatible chat behind the crisis screen) and the reward model:\n  {command}"
            )
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
        again = " with --resume" if args.command in ("train-rm", "train-dpo") else ""
        print(f"psychocounsel: interrupted; rerun the same command{again} to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
