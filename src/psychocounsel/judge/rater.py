"""The default rater: seven linear principle heads on frozen all-MiniLM-L6-v2 features, learned
from human labels and length-matched contrastive pairs (``psychocounsel train-judge``).

Features of a (speech, response): the response's embedding, its elementwise product with the
speech's embedding, their cosine, and the mean and the max over the response's sentence
embeddings (``FEATURES`` = 4 x 384 + 1). Each principle's score is ``1 + 4 * sigmoid(w . x + b)``.
Training removes the directions of feature space that predict the response's length before
fitting, so the heads cannot read length off the embedding linearly; ``RATER_CARD.md`` has the
data, the measured agreement and the length checks.

The weights (``rater_head.safetensors``: ``weight`` (7, FEATURES), ``bias`` (7,)) ship in the
package with their metadata: the principle order, the training data's hash and the test numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..records import Rating, Response, Speech
from ..rubric import Rubric
from .minilm import Encoder, split_sentences

WEIGHTS = Path(__file__).parent / "rater_head.safetensors"
DIM = 384
FEATURES = 4 * DIM + 1


def _encode_unique(encoder: Encoder, texts: list[str]) -> np.ndarray:
    unique = list(dict.fromkeys(texts))
    emb = encoder(unique)
    at = {t: i for i, t in enumerate(unique)}
    return emb[[at[t] for t in texts]]


def featurize(encoder: Encoder, speeches: list[str], responses: list[str]) -> np.ndarray:
    """One row of features per (speech, response); see the module docstring."""
    n = len(responses)
    if n == 0:
        return np.zeros((0, FEATURES), dtype=np.float32)
    s = _encode_unique(encoder, speeches)  # a speech is shared by its several responses
    r = _encode_unique(encoder, responses)
    sents = [split_sentences(t) or [t] for t in responses]
    flat = _encode_unique(encoder, [x for ss in sents for x in ss])
    bounds = np.cumsum([0] + [len(ss) for ss in sents])
    mean = np.stack([flat[bounds[i] : bounds[i + 1]].mean(0) for i in range(n)])
    top = np.stack([flat[bounds[i] : bounds[i + 1]].max(0) for i in range(n)])
    cos = (s * r).sum(1, keepdims=True)
    return np.hstack([r, s * r, cos, mean, top]).astype(np.float32)


def save_head(path: Path, weight: np.ndarray, bias: np.ndarray, metadata: dict) -> None:
    """Write the heads; metadata values are JSON-encoded (safetensors metadata is str -> str)."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(
        {"weight": torch.tensor(weight, dtype=torch.float32), "bias": torch.tensor(bias, dtype=torch.float32)},
        str(tmp),
        metadata={k: json.dumps(v) for k, v in metadata.items()},
    )
    tmp.chmod(0o644)  # safetensors writes owner-only; the weights are meant to be read by anyone
    tmp.replace(path)


def weights_id(path: Path = WEIGHTS) -> str:
    """A short hash of the weights file: part of the rate stage's judge key."""
    import hashlib

    path = Path(path)
    if not path.is_file():
        raise UserError(f"rater weights missing: {path}; rebuild them with psychocounsel train-judge")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_head(path: Path = WEIGHTS) -> tuple[np.ndarray, np.ndarray, dict]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"rater weights missing: {path}; rebuild them with psychocounsel train-judge")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
    except Exception as e:  # a damaged or foreign file
        raise UserError(f"rater weights {path} cannot be read ({type(e).__name__}); rebuild with train-judge") from e
    if weight.shape != (len(meta.get("principles", [])), FEATURES) or bias.shape != (weight.shape[0],):
        raise UserError(f"rater weights {path} do not fit this version's features; rebuild with train-judge")
    return weight, bias, meta


def head_scores(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """1-5 scores, one column per head.

    >>> head_scores(np.zeros((1, 2)), np.ones((3, 2)), np.zeros(3)).tolist()
    [[3.0, 3.0, 3.0]]
    """
    z = x.astype(np.float64) @ weight.T.astype(np.float64) + bias
    return 1.0 + 4.0 / (1.0 + np.exp(-z))


class LearnedRater:
    """Rates (speech, response) pairs on the rubric's principles with the shipped heads."""

    name = "rater"
    calls_made = calls_cached = 0

    @classmethod
    def build(cls, spec, cfg, rubric: Rubric, cache) -> LearnedRater:
        return cls(rubric, getattr(cfg, "embedding_model", None))

    def __init__(self, rubric: Rubric, embedding_model: str | Path | None = None, weights: Path = WEIGHTS):
        weight, bias, self.meta = load_head(weights)
        order = self.meta["principles"]
        unknown = [k for k in rubric.keys if k not in order]
        if unknown:
            raise UserError(
                f"the rater has no head for principles {unknown}; train one with psychocounsel train-judge "
                "or use an llm judge"
            )
        rows = [order.index(k) for k in rubric.keys]
        self.rubric, self.weight, self.bias = rubric, weight[rows], bias[rows]
        self.encode = Encoder(embedding_model)
        self.calls_made = self.calls_cached = 0

    def close(self) -> None:
        pass

    def rate(self, items: list[tuple[Speech, Response]], progress=None) -> list[Rating]:
        self.calls_made += len(items)
        keep = [i for i, (_, r) in enumerate(items) if r.text.strip()]
        x = featurize(self.encode, [items[i][0].text for i in keep], [items[i][1].text for i in keep])
        scores = dict(zip(keep, head_scores(x, self.weight, self.bias)))
        out = []
        for i, (speech, resp) in enumerate(items):
            if i in scores:
                out.append(
                    Rating(resp.id, speech.id, self.name, scores=dict(zip(self.rubric.keys, map(float, scores[i]))))
                )
            else:
                out.append(Rating(resp.id, speech.id, self.name, failed=True, error="empty response"))
            if progress:
                progress(1)
        return out
