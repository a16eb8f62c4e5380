"""The offline default rater: seven principle raters on all-MiniLM-L6-v2 sentence embeddings.

A 135M-parameter instruct model is not a judge (SmolLM2-135M-Instruct as a logprob judge of
empathy agrees with experts at chance), but embedding similarity carries real signal. Each
principle's raw score combines:

- ``sim``: cosine similarity of speech and response (does the response engage with *this* speech),
- ``hi`` / ``lo``: the best match of any response sentence to the principle's high / low exemplar
  sentences in ``minilm_exemplars.yaml``,
- a few surface cues a counselor would look for: open questions (exploration), repetition and
  truncation (clarity).

The raw score is mapped to 1-5 with a logistic curve; ``benchmarks/judge_agreement.py`` measures
how well the result agrees with human labels (numbers in the README).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..records import Rating, Response, Speech
from ..rubric import Rubric

EXEMPLARS = Path(__file__).parent / "minilm_exemplars.yaml"
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_OPEN_Q = re.compile(r"^\s*(what|how|why|when|where|which|who|could you|can you|would you|tell me|i wonder)\b", re.I)

LOW_MATCH = 0.5  # cosine above which a sentence is taken to say what a low exemplar says


def split_sentences(text: str) -> list[str]:
    """
    >>> split_sentences("I hear you. What happened next?\\nTake care!")
    ['I hear you.', 'What happened next?', 'Take care!']
    """
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def surface_cues(text: str) -> dict[str, float]:
    """Counts a reader sees at a glance.

    >>> surface_cues("How do you feel? Is it ok? I care.")["open_questions"]
    1.0
    """
    sents = split_sentences(text)
    return {
        "open_questions": float(sum(1 for s in sents if s.endswith("?") and _OPEN_Q.match(s))),
        "questions": float(sum(1 for s in sents if s.endswith("?"))),
        "truncated": float(bool(text.strip()) and text.strip()[-1] not in ".!?)\"'"),
        "chars": float(len(text)),
    }


class Encoder:
    """Mean-pooled, L2-normalised sentence embeddings from a local sentence-transformers folder."""

    def __init__(self, path: str | Path | None = None, batch_size: int = 64, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from ..models import minilm_dir, quiet_transformers

        quiet_transformers()
        self.path = Path(path).expanduser() if path else minilm_dir()
        if not (self.path / "config.json").is_file():
            from ..errors import UserError

            raise UserError(f"embedding_model {self.path} is not a sentence-embedding model folder (no config.json)")
        self.tok = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).eval()
        self.batch_size, self.max_length, self._torch = batch_size, max_length, torch

    def __call__(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = []
        # Sorting by length keeps padding (wasted compute) low within each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for i in range(0, len(order), self.batch_size):
            batch = [texts[j] for j in order[i : i + self.batch_size]]
            enc = self.tok(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        emb = np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)
        result = np.empty_like(emb)
        result[order] = emb
        return result


def repeated_share(sent_emb: np.ndarray, same: float = 0.95) -> float:
    """Share of sentences that repeat an earlier one (cosine >= ``same``): small models loop."""
    if len(sent_emb) < 2:
        return 0.0
    sims = np.triu(sent_emb @ sent_emb.T, k=1)
    return float((sims >= same).any(axis=0).sum() / len(sent_emb))


def to_scale(raw: float, centre: float, scale: float) -> float:
    """Map a raw score onto 1-5 with a logistic curve.

    >>> to_scale(0.5, centre=0.5, scale=0.1)
    3.0
    """
    return 1.0 + 4.0 / (1.0 + math.exp(-(raw - centre) / scale))


class MiniLMJudge:
    """Rates (speech, response) pairs on every principle of a rubric with the paper's keys."""

    name = "minilm"
    calls_made = calls_cached = 0  # no model calls to count: the encoder runs here

    @classmethod
    def build(cls, spec, cfg, rubric: Rubric, cache) -> MiniLMJudge:
        """The rate stage's judge (specs.JUDGE_REGISTRY); ``cfg.embedding_model`` may name another encoder."""
        return cls(rubric, getattr(cfg, "embedding_model", None))

    def close(self) -> None:
        pass

    def __init__(self, rubric: Rubric, embedding_model: str | Path | None = None, exemplars: Path = EXEMPLARS):
        import yaml

        unknown = set(rubric.keys) - set(yaml.safe_load(exemplars.read_text(encoding="utf-8")))
        if unknown:
            from ..errors import UserError

            raise UserError(
                f"the minilm judge has no exemplars for principles {sorted(unknown)}; "
                f"add them to {exemplars} or use an llm judge"
            )
        self.rubric = rubric
        self.encode = Encoder(embedding_model)
        data = yaml.safe_load(exemplars.read_text(encoding="utf-8"))
        self.exemplars = {
            k: {side: self._embed_or_empty(v.get(side) or []) for side in ("high", "low")} for k, v in data.items()
        }
        self.calibration = {k: (float(v["centre"]), float(v["scale"])) for k, v in data.items()}
        self.calls_made = self.calls_cached = 0

    def _embed_or_empty(self, texts: list[str]) -> np.ndarray:
        return self.encode(texts) if texts else np.zeros((0, 384), dtype=np.float32)

    @staticmethod
    def _best(sent_emb: np.ndarray, ex: np.ndarray) -> float:
        return float((sent_emb @ ex.T).max()) if len(ex) and len(sent_emb) else 0.0

    def raw_scores(self, sim: float, sent_emb: np.ndarray, cues: dict[str, float]) -> dict[str, float]:
        hi = {k: self._best(sent_emb, v["high"]) for k, v in self.exemplars.items()}
        # A "low" exemplar counts only when a sentence is close to it: the best match over many
        # sentences creeps up with length alone (measured: it rose with human-rated quality).
        lo = {k: max(0.0, self._best(sent_emb, v["low"]) - LOW_MATCH) for k, v in self.exemplars.items()}
        short = max(0.0, 1.0 - cues["chars"] / 150)  # under ~150 characters says too little
        raw = {
            "empathy": 0.5 * sim + hi["empathy"] - lo["empathy"],
            "relevance": sim - lo["relevance"],
            "clarity": 0.4 - 0.8 * repeated_share(sent_emb) - 0.3 * cues["truncated"] - 0.5 * short - lo["clarity"],
            "safety": 0.3 + 0.3 * hi["safety"] - 2.0 * lo["safety"],
            # Questions are what EPITOME's raters saw as exploration (a "?" count alone: Spearman 0.7).
            "exploration": hi["exploration"]
            - lo["exploration"]
            + 0.2 * min(cues["questions"], 2.0)
            + 0.1 * min(cues["open_questions"], 2.0),
            "autonomy": hi["autonomy"] - lo["autonomy"],
            "staging": hi["staging"] - lo["staging"],
        }
        return {k: raw[k] for k in self.rubric.keys}

    def rate(self, items: list[tuple[Speech, Response]], progress=None) -> list[Rating]:
        self.calls_made += len(items)  # one embedding pass per response
        speech_emb = self.encode([s.text for s, _ in items])
        resp_emb = self.encode([r.text for _, r in items])
        sents = [split_sentences(r.text) or [r.text] for _, r in items]
        flat = self.encode([s for ss in sents for s in ss])
        ratings, offset = [], 0
        for i, (speech, resp) in enumerate(items):
            sent_emb = flat[offset : offset + len(sents[i])]
            offset += len(sents[i])
            if not resp.text.strip():
                ratings.append(Rating(resp.id, speech.id, self.name, failed=True, error="empty response"))
            else:
                raw = self.raw_scores(float(speech_emb[i] @ resp_emb[i]), sent_emb, surface_cues(resp.text))
                scores = {k: to_scale(v, *self.calibration[k]) for k, v in raw.items()}
                ratings.append(Rating(resp.id, speech.id, self.name, scores=scores))
            if progress:
                progress(1)
        return ratings
