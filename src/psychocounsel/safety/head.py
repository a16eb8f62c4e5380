"""The learned part of the screen: logistic regression on frozen all-MiniLM-L6-v2 window embeddings.

The weights (``screen_head.safetensors``: ``coef`` (384,), ``bias`` (1,)) ship in the package with
their metadata: the thresholds chosen on the dev split, the training data's hash and sizes, and
the scores of a few probe texts at training time (tests check the shipped file reproduces them).
``python -m psychocounsel.safety.train`` rebuilds the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fit import sigmoid
from .policy import Policy

WEIGHTS = Path(__file__).parent / "screen_head.safetensors"


def window_max(z: np.ndarray, owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per text, the largest window value and the index of its window (-1 for a text without windows).

    >>> window_max(np.array([0.1, 0.7, 0.3]), np.array([0, 0, 1]), 3)
    (array([0.7, 0.3, nan]), array([ 1,  2, -1]))
    """
    best = np.full(n, np.nan)
    arg = np.full(n, -1)
    for k, (value, i) in enumerate(zip(z, owner)):
        if arg[i] < 0 or value > best[i]:
            best[i], arg[i] = value, k
    return best, arg


@dataclass
class Head:
    """``p = sigmoid(emb @ coef + bias)`` per window."""

    coef: np.ndarray
    bias: float

    def logits(self, emb: np.ndarray) -> np.ndarray:
        return emb.astype(np.float64) @ self.coef.astype(np.float64) + self.bias

    def save(self, path: Path, metadata: dict) -> None:
        """Write the weights and their metadata (values JSON-encoded: safetensors metadata is str -> str)."""
        import torch
        from safetensors.torch import save_file

        tensors = {
            "coef": torch.tensor(self.coef, dtype=torch.float32),
            "bias": torch.tensor([self.bias], dtype=torch.float32),
        }
        save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in metadata.items()})

    @staticmethod
    def load(path: Path = WEIGHTS) -> tuple[Head, dict]:
        from safetensors import safe_open

        if not Path(path).is_file():
            from ..errors import UserError

            raise UserError(f"crisis screen weights missing: {path}; rebuild with python -m psychocounsel.safety.train")
        with safe_open(str(path), framework="numpy") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            coef, bias = f.get_tensor("coef"), float(f.get_tensor("bias")[0])
        return Head(coef, bias), meta


class ScreenModel:
    """The head with its encoder and thresholds: scores texts (already blanked by the rules)."""

    def __init__(self, head: Head, policy: Policy, meta: dict, encoder_path: str | Path | None = None):
        self.head, self.policy, self.meta = head, policy, meta
        self._encoder_path, self._encoder = encoder_path, None

    @classmethod
    def load(cls, path: Path = WEIGHTS, encoder_path: str | Path | None = None) -> ScreenModel:
        head, meta = Head.load(path)
        return cls(head, Policy(**meta["policy"]), meta, encoder_path)

    def encoder(self, batch_size: int = 64):
        if self._encoder is None:
            from .embed import WindowEncoder

            self._encoder = WindowEncoder(self._encoder_path, batch_size=batch_size)
        self._encoder.batch_size = batch_size
        return self._encoder

    def score(self, texts: list[str], batch_size: int = 64) -> tuple[list[float], list[tuple[int, int]]]:
        """Per text: the probability of its riskiest window, and that window's character span."""
        probs, spans = [0.0] * len(texts), [(0, 0)] * len(texts)
        # A text the rules blanked out entirely (someone else's words only) has nothing left to read.
        todo = [i for i, t in enumerate(texts) if t.strip()]
        if todo:
            win = self.encoder(batch_size)([texts[i] for i in todo])
            z, arg = window_max(self.head.logits(win.emb), win.owner, len(todo))
            for j, i in enumerate(todo):
                probs[i] = float(sigmoid(z[j]))
                spans[i] = (int(win.spans[arg[j], 0]), int(win.spans[arg[j], 1]))
        return probs, spans
