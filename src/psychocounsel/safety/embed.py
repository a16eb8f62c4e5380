"""Whole-text embeddings: overlapping token windows of all-MiniLM-L6-v2, one vector per window.

MiniLM reads at most 256 tokens; a post of several thousand characters is cut into windows of
256 tokens (254 of text plus [CLS] and [SEP]) that overlap by 64, so a sentence at a window's
edge is read whole in the next one. The screen scores every window and keeps the maximum: risk
in a long post's last paragraph counts as much as risk in its first line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

WINDOW = 256
OVERLAP = 64  # tokens shared by neighbouring windows
DIM = 384


@dataclass
class Windows:
    """Window embeddings of a batch of texts: ``emb[k]`` covers ``text[owner[k]][spans[k, 0]:spans[k, 1]]``."""

    emb: np.ndarray  # (n_windows, 384) float32, L2-normalised
    owner: np.ndarray  # (n_windows,) int: index of the text
    spans: np.ndarray  # (n_windows, 2) int: character offsets of the window in its text


def window_starts(n_tokens: int, length: int, stride: int) -> list[int]:
    """Token offsets of the windows over ``n_tokens``; the last window always reaches the end.

    >>> window_starts(10, 4, 3), window_starts(3, 4, 3), window_starts(0, 4, 3)
    ([0, 3, 6], [0], [0])
    >>> window_starts(11, 4, 3)
    [0, 3, 6, 7]
    """
    last = max(n_tokens - length, 0)
    starts = list(range(0, last + 1, stride))
    if starts[-1] < last:
        starts.append(last)
    return starts


class WindowEncoder:
    """Mean-pooled, normalised MiniLM embeddings of every window of every text (CPU, no network)."""

    def __init__(self, path: str | Path | None = None, batch_size: int = 64, window: int = WINDOW):
        from ..judge.minilm import Encoder

        enc = Encoder(path, batch_size=batch_size, max_length=window)
        self.tok, self.model, self._torch = enc.tok, enc.model, enc._torch
        self.batch_size, self.window = batch_size, window

    def _windows(self, texts: list[str]) -> tuple[list[list[int]], list[int], list[tuple[int, int]]]:
        enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        cls, sep, length = self.tok.cls_token_id, self.tok.sep_token_id, self.window - 2
        ids, owner, spans = [], [], []
        for i, (tokens, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
            for s in window_starts(len(tokens), length, length - OVERLAP):
                piece = tokens[s : s + length]
                ids.append([cls, *piece, sep])
                owner.append(i)
                spans.append((offsets[s][0], offsets[s + len(piece) - 1][1]) if piece else (0, len(texts[i])))
        return ids, owner, spans

    def __call__(self, texts: list[str]) -> Windows:
        torch = self._torch
        ids, owner, spans = self._windows(texts)
        emb = np.zeros((len(ids), DIM), dtype=np.float32)
        # Sorting by length keeps padding (wasted compute) low within each batch.
        order = sorted(range(len(ids)), key=lambda k: len(ids[k]))
        for b in range(0, len(order), self.batch_size):
            rows = order[b : b + self.batch_size]
            width = max(len(ids[k]) for k in rows)
            input_ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, k in enumerate(rows):
                input_ids[r, : len(ids[k])] = torch.tensor(ids[k])
                mask[r, : len(ids[k])] = 1
            with torch.inference_mode():
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            emb[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return Windows(emb, np.asarray(owner, dtype=np.int64), np.asarray(spans, dtype=np.int64).reshape(-1, 2))
