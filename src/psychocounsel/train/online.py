"""online: iterative DPO ("DPO-Iter"): the policy samples, the reward model picks, DPO updates.

Each round samples train speeches; the current policy writes ``k`` responses to each; the reward
model's best and worst become a DPO pair; ``train_dpo`` updates the policy; the new policy's greedy
responses to the held-out dev speeches are scored. The round with the best dev mean reward
(round 0, the starting policy, included) is the checkpoint kept, as in the paper.

Each policy is loaded for generation once: round R's policy writes round R's dev responses and
then round R+1's samples from one load (``_Generator``), and is released before round R+1's DPO
update, which needs the memory. ``cfg.generator`` picks the engine: transformers, or vLLM
(train/rollout.py).

Layout under ``out``::

    config.json            what the rounds were made from (a resumed run must match it)
    round_0/metrics.json   the starting policy on dev
    round_R/pairs.jsonl    prompt, chosen, rejected, chosen_reward, rejected_reward (+ id)
    round_R/policy/        the DPO-updated policy (train_dpo's output)
    round_R/metrics.json   n_pairs, mean_gap, dev_mean_reward, dpo summary, generator, seconds
                           and tokens per phase (what a round costs: benchmarks/online_round.py)
    round_R/DONE           written last: a round without it is redone from scratch, unless its
                           DPO was killed part-way after a checkpoint (policy/checkpoints): then
                           its pairs are kept and the DPO resumes
    summary.json, best/    the best round and a copy of its policy
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

from ..config import OnlineConfig
from ..errors import UserError
from ..specs import parse_spec
from ..store import read_json, read_jsonl, stable_hash, write_json, write_jsonl
from . import checkpoints
from .rollout import GENERATOR_FIELDS, open_generator, resolve_generator

log = logging.getLogger(__name__)


def split_dev(speeches: list[dict], dev_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(dev, train): a seeded shuffle, ``dev_fraction`` of it (at least 1) held out.

    >>> dev, train = split_dev([{"id": str(i), "text": "t"} for i in range(10)], 0.2, seed=0)
    >>> len(dev), len(train), sorted(s["id"] for s in dev + train) == sorted(str(i) for i in range(10))
    (2, 8, True)
    """
    order = list(speeches)
    random.Random(seed).shuffle(order)
    n_dev = max(1, round(len(order) * dev_fraction))
    return order[:n_dev], order[n_dev:]


def read_speeches(path: Path) -> list[dict]:
    """``{"id", "text"}`` of each row of a speeches JSONL file (ingest's output)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"speeches file not found: {path}")
    speeches = []
    for n, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row.get("id"), str) or not isinstance(row.get("text"), str) or not row["text"].strip():
            raise UserError(f"{path}: row {n} needs a string 'id' and non-empty 'text' (ingest writes both)")
        speeches.append({"id": row["id"], "text": row["text"]})
    return speeches


def _require_inputs(policy: str, reward_model: Path, speeches: list[dict]) -> None:
    if len(speeches) < 2:
        raise UserError(f"need at least 2 speeches: 1 for dev and 1 to train on ({len(speeches)} given)")
    ids = [s["id"] for s in speeches]
    if len(set(ids)) != len(ids):
        raise UserError("speech ids must be unique")
    if not (Path(reward_model).expanduser() / "config.json").is_file():
        raise UserError(f"reward model folder not found (no config.json): {reward_model}")
    if parse_spec(policy).kind != "default" and not Path(policy).expanduser().exists():
        raise UserError(f"policy path does not exist: {policy}")


# Where the sampling calls of the current train_online are counted (run.json's tokens), without
# passing a meter through every function between the stage and the backend call.
_METER: ContextVar = ContextVar("psychocounsel_online_meter", default=None)


class _Generator:
    """Writes responses with one policy at a time, loading it on first use and keeping it until
    another policy is asked for or ``release()``. ``seconds`` (load, generate) and ``tokens``
    (completion tokens) add up over the run; each round's metrics report its share (``_Clock``)."""

    def __init__(self, engine: str, cfg: OnlineConfig):
        self.engine, self.cfg = engine, cfg
        self.policy: str | None = None
        self.backend = None
        self.seconds = {"load": 0.0, "generate": 0.0}
        self.tokens = 0

    def __call__(self, policy: str, prompts: list[str], params: list[dict]) -> list[str | None]:
        """The text of each completion, ``None`` where it failed or is empty."""
        from ..backends import ChatRequest

        if policy != self.policy:
            self.release()
            start = time.perf_counter()
            backend = open_generator(policy, self.engine, self.cfg)
            backend.load()  # timed apart from generation
            self.backend, self.policy = backend, policy
            self.seconds["load"] += time.perf_counter() - start
        start = time.perf_counter()
        done = self.backend.complete(
            [ChatRequest([{"role": "user", "content": p}], q) for p, q in zip(prompts, params)]
        )
        self.seconds["generate"] += time.perf_counter() - start
        self.tokens += sum(c.completion_tokens for c in done)
        meter = _METER.get()
        if meter is not None:
            meter.record(self.backend.model, done, cached=False)
        return [c.text if not c.error and c.text.strip() else None for c in done]

    def release(self) -> None:
        """Free the policy's memory (vLLM's engine is shut down): before a DPO update and at the end."""
        backend, self.backend, self.policy = self.backend, None, None
        if backend is not None:
            backend.close()

    def clock(self) -> dict[str, float]:
        return {**self.seconds, "tokens": self.tokens}


def _rewards(rm, prompts: list[str], responses: list[str], max_length: int = 512) -> np.ndarray:
    """The reward of each (prompt, response), encoded exactly as reward_eval scores pairs."""
    from ..reward_model import score_responses

    model, tokenizer = rm
    return score_responses(model, tokenizer, prompts, responses, max_length=max_length)


def dev_reward(generate: _Generator, policy: str, rm, dev: list[dict], max_tokens: int) -> dict[str, Any]:
    """Mean reward of the policy's greedy responses to the dev speeches."""
    prompts = [s["text"] for s in dev]
    texts = generate(policy, prompts, [{"temperature": 0.0, "max_tokens": max_tokens}] * len(dev))
    ok = [i for i, t in enumerate(texts) if t is not None]
    if not ok:
        raise UserError(f"policy {policy} wrote no usable response to any of {len(dev)} dev speeches")
    rewards = _rewards(rm, [prompts[i] for i in ok], [texts[i] for i in ok])
    return {"dev_mean_reward": float(rewards.mean()), "dev_n": len(ok), "dev_failed": len(dev) - len(ok)}


def make_pairs(
    speeches: list[dict], texts: list[str | None], rewards: dict[int, float], k: int, min_gap: float
) -> list[dict]:
    """Best vs worst of each speech's ``k`` responses (``texts`` is sample-major: sample j of
    speech i at ``j * n + i``), kept when the reward gap is over ``min_gap``."""
    n, pairs = len(speeches), []
    for i, s in enumerate(speeches):
        scored = [(rewards[j * n + i], texts[j * n + i]) for j in range(k) if texts[j * n + i] is not None]
        if len(scored) < 2:
            continue
        best, worst = max(scored, key=lambda x: x[0]), min(scored, key=lambda x: x[0])
        if best[0] - worst[0] > min_gap:
            pairs.append(
                {
                    "id": s["id"],
                    "prompt": s["text"],
                    "chosen": best[1],
                    "rejected": worst[1],
                    "chosen_reward": float(best[0]),
                    "rejected_reward": float(worst[0]),
                }
            )
    return pairs


def _sample_pairs(generate: _Generator, policy: str, rm, batch: list[dict], cfg: OnlineConfig) -> list[dict]:
    """``k`` sampled responses per speech, scored, made into pairs. Requests are ordered sample-major
    so each sample's requests share params (distinct ``seed``) and the backend batches them."""
    n, k = len(batch), cfg.k
    prompts = [s["text"] for s in batch] * k
    params = [
        {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "seed": j} for j in range(k) for _ in range(n)
    ]
    texts = generate(policy, prompts, params)
    ok = [i for i, t in enumerate(texts) if t is not None]
    scores = _rewards(rm, [prompts[i] for i in ok], [texts[i] for i in ok]) if ok else []
    return make_pairs(batch, texts, dict(zip(ok, scores)), k, cfg.min_gap)


def _run_round(
    r: int, policy: str, rm, data: tuple[list[dict], list[dict]], out: Path, cfg: OnlineConfig, generate: _Generator
) -> dict[str, Any]:
    """Round ``r`` from ``policy``; ``data`` is (train, dev) speeches. ``generate`` may hold
    ``policy`` already (round r-1's dev responses); it holds round r's policy when this returns."""
    from .dpo import train_dpo

    train, dev = data
    folder = out / f"round_{r}"
    batch = random.Random(f"{cfg.seed}-round-{r}").sample(train, min(cfg.speeches_per_round, len(train)))
    clock = _Clock(generate)
    if _dpo_interrupted(folder):
        pairs = read_jsonl(folder / "pairs.jsonl")
        log.info("online round %d: resuming its DPO update from %s", r, folder / "policy" / "checkpoints")
    else:
        if folder.exists():
            shutil.rmtree(folder)  # a round without DONE died part-way: redo it from scratch
        folder.mkdir(parents=True)
        pairs = _sample_pairs(generate, policy, rm, batch, cfg)
        write_jsonl(folder / "pairs.jsonl", pairs)
    clock.lap("sample")
    generate.release()  # the update needs the memory (a vLLM engine holds its share of the GPU)
    if pairs:
        dpo = train_dpo(pairs, cfg.round_dpo(), folder / "policy", base=policy, resume=True)
    else:  # nothing to learn from: the policy carries over unchanged so round r+1 has a base
        from ..specs import local_model

        shutil.copytree(local_model(policy), folder / "policy")
        dpo = None
    clock.lap("dpo")
    dev_metrics = dev_reward(generate, str(folder / "policy"), rm, dev, cfg.max_tokens)
    clock.lap("dev")
    metrics = {
        "round": r,
        "policy": str(folder / "policy"),
        "n_speeches": len(batch),
        "n_pairs": len(pairs),
        "mean_gap": float(np.mean([p["chosen_reward"] - p["rejected_reward"] for p in pairs])) if pairs else None,
        **dev_metrics,
        "dpo": dpo,
        "generator": generate.engine,
        **clock.report(),
    }
    write_json(folder / "metrics.json", metrics)
    (folder / "DONE").write_text("", encoding="utf-8")
    log.info(
        "online round %d: %d speeches, %d pairs, dev reward %.4f over %d dev speeches",
        r,
        len(batch),
        len(pairs),
        metrics["dev_mean_reward"],
        metrics["dev_n"],
    )
    return metrics


class _Clock:
    """Seconds and completion tokens of a round's phases (sample, dpo, dev), the generator's
    load and generate time split out of each, so a round's cost can be scaled up by phase."""

    def __init__(self, generate: _Generator):
        self.generate = generate
        self.start, self.last = time.perf_counter(), generate.clock()
        self.seconds: dict[str, float] = {}
        self.tokens: dict[str, int] = {}

    def lap(self, phase: str) -> None:
        now, gen = time.perf_counter(), self.generate.clock()
        self.seconds[phase] = round(now - self.start, 3)
        for part in ("load", "generate"):
            if gen[part] > self.last[part]:
                self.seconds[f"{phase}_{part}"] = round(gen[part] - self.last[part], 3)
        if gen["tokens"] > self.last["tokens"]:
            self.tokens[phase] = int(gen["tokens"] - self.last["tokens"])
        self.start, self.last = now, gen

    def report(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "completion_tokens": self.tokens}


def _dpo_interrupted(folder: Path) -> bool:
    """Whether a round died in its DPO update after a checkpoint, its pairs complete (written
    atomically before the update) and its policy not yet saved."""
    policy = folder / "policy"
    return (
        (folder / "pairs.jsonl").is_file()
        and not (policy / "train_log.json").is_file()
        and bool(checkpoints.complete(checkpoints.checkpoint_folder(policy)))
    )


def _finished(out: Path, r: int) -> bool:
    """Whether round ``r`` (0: the starting policy's dev reward) was completed in ``out``."""
    return (out / f"round_{r}" / "DONE").is_file()


def _round_zero(policy: str, rm, dev: list[dict], out: Path, cfg: OnlineConfig, generate: _Generator) -> dict:
    folder = out / "round_0"
    if _finished(out, 0):
        return read_json(folder / "metrics.json")
    if folder.exists():
        shutil.rmtree(folder)
    clock = _Clock(generate)
    metrics = {"round": 0, "policy": policy, **dev_reward(generate, policy, rm, dev, cfg.max_tokens)}
    clock.lap("dev")
    metrics.update(generator=generate.engine, **clock.report())
    write_json(folder / "metrics.json", metrics)
    (folder / "DONE").write_text("", encoding="utf-8")
    log.info(
        "online round 0 (start): dev reward %.4f over %d dev speeches", metrics["dev_mean_reward"], metrics["dev_n"]
    )
    return metrics


def _check_same_run(out: Path, identity: dict[str, Any]) -> None:
    """Resumed rounds are only valid for the same inputs; refuse to mix runs in one folder."""
    path = out / "config.json"
    if path.is_file():
        old = read_json(path)
        diff = sorted(key for key in identity if old.get(key) != identity[key])
        if diff:
            raise UserError(
                f"{out} holds rounds of a different run (differs in: {', '.join(diff)}); use a new output folder"
            )
    write_json(path, identity)


def _keep_best(metrics: list[dict], policy: str, out: Path) -> dict[str, Any]:
    best = max(metrics, key=lambda m: m["dev_mean_reward"])  # first of equals: the earlier round
    source = Path(best["policy"]).expanduser()
    copy = best["round"] > 0 or (parse_spec(policy).kind != "default" and source.is_dir())
    summary = {"rounds": metrics, "best_round": best["round"], "best_policy": str(out / "best") if copy else policy}
    path = out / "summary.json"
    if path.is_file() and read_json(path) == summary and (out / "best").is_dir() == copy:
        return summary  # a rerun of finished rounds: the same best, already in place
    path.unlink(missing_ok=True)  # written again only after the copy: a copy cut short is redone
    if (out / "best").exists():
        shutil.rmtree(out / "best")  # a longer resumed run may pick another round: no stale files
    if copy:
        shutil.copytree(source, out / "best", dirs_exist_ok=True)
    write_json(path, summary)
    return summary


def train_online(
    policy: str, reward_model: Path, speeches: list[dict], out: Path, cfg: OnlineConfig, meter=None
) -> dict[str, Any]:
    """Run ``cfg.rounds`` of DPO-Iter from ``policy`` (a local model folder or ``default``),
    resuming the rounds already DONE in ``out``. ``speeches`` are ``{"id", "text"}`` dicts (see
    ``read_speeches``). Returns summary.json. ``meter`` (backends.cached.Meter) counts the
    policy's sampling calls and tokens."""
    token = _METER.set(meter)
    try:
        return _train_online(policy, reward_model, speeches, out, cfg)
    finally:
        _METER.reset(token)


def _train_online(policy: str, reward_model: Path, speeches: list[dict], out: Path, cfg: OnlineConfig) -> dict:
    policy, out = str(policy), Path(out)
    _require_inputs(policy, Path(reward_model), speeches)
    engine = resolve_generator(cfg.generator)  # before anything is written: a missing vllm is a UserError
    log.info("online: the policy's responses are written by %s", engine)
    from ..reward_model import load_reward_model

    dev, train = split_dev(speeches, cfg.dev_fraction, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    # What the rounds are made from. batch_size and the generator change how fast the responses
    # are written, not what they are drawn from (the same policy, temperature and max_tokens),
    # so a run may be resumed with another engine (and run folders from before vLLM still match).
    settings = cfg.model_dump(mode="json", exclude={"batch_size", "rounds", "dpo", *GENERATOR_FIELDS})
    _check_same_run(
        out,
        {
            "policy": policy,
            "reward_model": str(reward_model),
            "speeches": stable_hash([[s["id"], s["text"]] for s in speeches]),
            **settings,
            "dpo_options": cfg.round_dpo().model_dump(
                mode="json", exclude_unset=True, exclude=set(checkpoints.NOT_IDENTITY)
            ),
        },
    )
    # Loaded only when a round is to be made: a rerun of finished rounds reads their metrics.
    done = all(_finished(out, r) for r in range(cfg.rounds + 1))
    rm = None if done else load_reward_model(reward_model)
    generate = _Generator(engine, cfg)
    try:
        metrics = [_round_zero(policy, rm, dev, out, cfg, generate)]
        current = policy
        for r in range(1, cfg.rounds + 1):
            folder = out / f"round_{r}"
            if _finished(out, r):
                metrics.append(read_json(folder / "metrics.json"))
                log.info("online round %d: done before, skipped", r)
            else:
                metrics.append(_run_round(r, current, rm, (train, dev), out, cfg, generate))
            current = str(folder / "policy")
    finally:
        generate.release()
    return _keep_best(metrics, policy, out)
