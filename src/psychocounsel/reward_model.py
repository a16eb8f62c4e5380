"""The reward model: how it is loaded, how it reads a (speech, response), how it scores, and how
well its scores rank preference pairs. Training (train/reward.py, train/online.py) and evaluation
(evaluate/, the reward-model judge) all use this module, so neither depends on the other.

Metrics work on ``d = r_chosen - r_rejected``, one number per pair, and follow the paper's
table (accuracy, AUC, ECE, Brier). A Bradley-Terry model reads ``sigmoid(d)`` as P(chosen is
preferred). Every pair has a positive label by construction, so AUC and ECE are computed on the
*symmetric* set: each pair contributes ``(sigmoid(d), 1)`` and, shown in the other order,
``(sigmoid(-d), 0)``. Brier is the same either way.

The encoding (``encode``) is shared by training and scoring, so a model is scored on exactly the
token sequences it was trained on: a chat-formatted (user, assistant) exchange when the tokenizer
has a chat template, else ``"prompt\\n\\nresponse"`` plus EOS. Sequences over ``max_length`` lose
the start of the prompt first (the end of a speech usually holds the client's question).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

ECE_BINS = 10  # equal-width bins over [0, 1], the usual choice and the paper's table's


# -- metrics: pure functions of d -------------------------------------------------------------


def _diffs(d: Sequence[float]) -> np.ndarray:
    arr = np.asarray(d, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError("no reward differences to evaluate")
    if not np.all(np.isfinite(arr)):
        raise ValueError("reward differences must be finite")
    return arr


def sigmoid(x: np.ndarray) -> np.ndarray:
    # The tanh form never overflows (np.exp(-x) does for x < -709).
    return 0.5 * (1.0 + np.tanh(np.asarray(x, dtype=float) / 2.0))


def symmetric_set(d: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels): each pair as (sigmoid(d), 1) and (sigmoid(-d), 0).

    >>> p, y = symmetric_set([0.0, 2.0])
    >>> p.round(3).tolist(), y.tolist()
    ([0.5, 0.881, 0.5, 0.119], [1.0, 1.0, 0.0, 0.0])
    """
    d = _diffs(d)
    return np.concatenate([sigmoid(d), sigmoid(-d)]), np.concatenate([np.ones_like(d), np.zeros_like(d)])


def accuracy(d: Sequence[float]) -> float:
    """Share of pairs with the chosen response scored higher; a tie counts half.

    >>> accuracy([2.0, -1.0, 0.0, 3.0])
    0.625
    """
    d = _diffs(d)
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def roc_auc(d: Sequence[float]) -> float:
    """ROC AUC on the symmetric set (positives sigmoid(d_i), negatives sigmoid(-d_j)), ties half.

    A positive outranks a negative when d_i + d_j > 0, so this is the share of ordered
    (i, j), i = j included, with d_i + d_j > 0. Ranks are taken on d itself (sigmoid is
    monotone), so rewards far apart are not tied by float saturation (sigmoid(40) == 1.0).

    >>> roc_auc([1.0, 2.0, 3.0])    # every pair the right way round
    1.0
    >>> roc_auc([2.0, -1.0])        # (1,1) 4 > 0, (1,2) and (2,1) 1 > 0, (2,2) -2 < 0
    0.75
    >>> roc_auc([1.0, -1.0])        # (1,1) win, (1,2) and (2,1) tie, (2,2) loss
    0.5
    """
    d = _diffs(d)
    negatives = np.sort(-d)
    below = np.searchsorted(negatives, d, side="left")
    at_or_below = np.searchsorted(negatives, d, side="right")
    return float(np.sum(below + 0.5 * (at_or_below - below)) / d.size**2)


def expected_calibration_error(d: Sequence[float], bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width probability bins of the symmetric set.

    Sum over bins of (bin share) * |mean label - mean probability| = |sum labels - sum p| / N.

    >>> round(expected_calibration_error([np.log(3)]), 6)   # p 0.75 (label 1), 0.25 (label 0)
    0.25
    >>> expected_calibration_error([0.0])   # both 0.5, labels 1 and 0, in one bin
    0.0
    """
    count, sum_p, sum_y = calibration_bins(d, bins)
    return float(np.sum(np.abs(sum_y - sum_p)) / count.sum())


def calibration_bins(d: Sequence[float], bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width probability bin of the symmetric set: (count, sum of p, sum of labels);
    what the ECE and the report's reliability diagram are made of.

    >>> [x.tolist() for x in calibration_bins([0.0], bins=2)]   # p 0.5 twice, in the upper bin
    [[0, 2], [0.0, 1.0], [0.0, 1.0]]
    """
    p, y = symmetric_set(d)
    which = np.minimum((p * bins).astype(int), bins - 1)
    return (
        np.bincount(which, minlength=bins),
        np.bincount(which, weights=p, minlength=bins),
        np.bincount(which, weights=y, minlength=bins),
    )


def brier_score(d: Sequence[float]) -> float:
    """Mean squared error of sigmoid(d) against 1 (the mirrored half gives the same terms).

    >>> brier_score([0.0])
    0.25
    >>> round(brier_score([np.log(3), -np.log(3)]), 6)   # (1 - 0.75)^2 and (1 - 0.25)^2
    0.3125
    """
    d = _diffs(d)
    return float(np.mean((1.0 - sigmoid(d)) ** 2))


def reward_metrics(d: Sequence[float]) -> dict[str, Any]:
    """The paper's table for one model: n, accuracy, auc, ece, brier.

    >>> reward_metrics([1.0, 2.0, 3.0])["auc"], reward_metrics([1.0, 2.0, 3.0])["n"]
    (1.0, 3)
    """
    d = _diffs(d)
    return {
        "n": int(d.size),
        "accuracy": accuracy(d),
        "auc": roc_auc(d),
        "ece": expected_calibration_error(d),
        "brier": brier_score(d),
    }


# -- encoding: one (prompt, response) as the token ids the reward model reads ----------------


def as_messages(x: str | list[dict], role: str) -> list[dict]:
    return [{"role": role, "content": x}] if isinstance(x, str) else [dict(m) for m in x]


def as_text(x: str | list[dict]) -> str:
    """Plain text of a string or a conversation (one message: its content; more: role-labelled).

    >>> as_text([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    'user: hi\\n\\nassistant: hello'
    """
    if isinstance(x, str):
        return x
    if len(x) == 1:
        return x[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in x)


def _token_ids(tokenizer, prompt, response) -> list[int]:
    if tokenizer.chat_template:
        messages = as_messages(prompt, "user") + as_messages(response, "assistant")
        # The template writes the special tokens itself (BOS, end-of-turn).
        return tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    ids = tokenizer(f"{as_text(prompt)}\n\n{as_text(response)}")["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)  # as TRL does for standard text: the response visibly ends where the reward is read
    return ids


def _drop_first_tokens(tokenizer, text: str, n: int) -> str:
    if n <= 0:
        return text
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return "" if n >= len(offsets) else text[offsets[n][0] :]


def clip_prompt(tokenizer, prompt: str | list[dict], n: int) -> str | list[dict]:
    """``prompt`` less about ``n`` tokens from its start: whole early turns of a conversation
    first (a leading system message is kept), then the start of the next message."""
    if isinstance(prompt, str):
        return _drop_first_tokens(tokenizer, prompt, n)
    messages = [dict(m) for m in prompt]
    i = 1 if len(messages) > 1 and messages[0].get("role") == "system" else 0
    while n > 0 and i < len(messages):
        size = len(tokenizer(messages[i]["content"], add_special_tokens=False)["input_ids"])
        if size <= n and i < len(messages) - 1:
            del messages[i]
            n -= size
        else:
            messages[i]["content"] = _drop_first_tokens(tokenizer, messages[i]["content"], n)
            n = 0
    return messages


def encode(tokenizer, prompt: str | list[dict], response: str | list[dict], max_length: int) -> list[int]:
    """Token ids of one (prompt, response), at most ``max_length`` of them."""
    ids = _token_ids(tokenizer, prompt, response)
    for _ in range(3):  # re-tokenizing at the cut can add a token or two; three passes always settle
        if len(ids) <= max_length:
            return ids
        clipped = clip_prompt(tokenizer, prompt, len(ids) - max_length)
        if clipped == prompt:
            break
        prompt, ids = clipped, _token_ids(tokenizer, clipped, response)
    if len(ids) <= max_length:
        return ids
    # The response alone is too long: keep its start and the last token (end of turn / [SEP]).
    return ids[: max_length - 1] + ids[-1:]


def ensure_pad_token(tokenizer) -> None:
    """Sequence classifiers find each sequence's last real token by the pad id, so one must
    exist; EOS serves when there is none (TRL's choice too)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError("the tokenizer has neither a pad token nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token


# -- scoring ----------------------------------------------------------------------------------


def _rewards(model, seqs: list[list[int]], pad_id: int, batch_size: int) -> np.ndarray:
    import torch

    # Length-sorted batches: neighbours have similar lengths, so little compute goes on padding.
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.empty(len(seqs))
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(seqs), batch_size):
            idx = order[start : start + batch_size]
            ids = torch.full((len(idx), max(len(seqs[i]) for i in idx)), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(idx):
                ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[row, : len(seqs[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out[idx] = logits[:, 0].float().cpu().numpy()
    return out


def score_responses(
    model, tokenizer, prompts: list, responses: list, batch_size: int = 16, max_length: int = 512
) -> np.ndarray:
    """The reward of each (prompt, response), encoded as in training."""
    ensure_pad_token(tokenizer)
    seqs = [encode(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    rewards = _rewards(model, seqs, tokenizer.pad_token_id, batch_size)
    if not np.all(np.isfinite(rewards)):
        raise UserError(f"the reward model returned {int(np.sum(~np.isfinite(rewards)))} non-finite rewards")
    return rewards


def formatted_ids(tokenizer, text: str, max_length: int) -> list[int]:
    """Token ids of a sequence already written in the reward model's format (what ``encode`` reads:
    its chat template applied to the (user, assistant) exchange), as OpenRLHF's reward server reads
    a query: leading pad tokens stripped, the start cut when too long. For such a text the ids, and
    so the reward, are those of ``encode``."""
    pad = tokenizer.pad_token
    if pad:
        while text.startswith(pad):
            text = text[len(pad) :]
        while pad != tokenizer.eos_token and text.endswith(pad):
            text = text[: -len(pad)]
    if tokenizer.chat_template:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(text)["input_ids"]
        eos = tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
    return ids[-max_length:]


def score_formatted(model, tokenizer, texts: list[str], batch_size: int = 16, max_length: int = 512) -> np.ndarray:
    """The reward of each already-formatted sequence (see :func:`formatted_ids`)."""
    ensure_pad_token(tokenizer)
    seqs = [formatted_ids(tokenizer, t, max_length) for t in texts]
    rewards = _rewards(model, seqs, tokenizer.pad_token_id, batch_size)
    if not np.all(np.isfinite(rewards)):
        raise UserError(f"the reward model returned {int(np.sum(~np.isfinite(rewards)))} non-finite rewards")
    return rewards


def pair_rewards(
    model, tokenizer, rows: list[dict], batch_size: int = 16, max_length: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """(r_chosen, r_rejected) for TRL-style rows (prompt, chosen, rejected), in row order."""
    prompts = [r["prompt"] for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    rewards = score_responses(model, tokenizer, prompts, responses, batch_size, max_length)
    return rewards[: len(rows)], rewards[len(rows) :]


def reward_differences(model, tokenizer, rows: list[dict], batch_size: int = 16, max_length: int = 512) -> np.ndarray:
    """d = r_chosen - r_rejected for TRL-style rows (prompt, chosen, rejected), in row order."""
    chosen, rejected = pair_rewards(model, tokenizer, rows, batch_size, max_length)
    return chosen - rejected


def load_reward_model(model_dir: str | Path):
    """(model, tokenizer) of a saved reward model (a sequence classifier with one output)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .models import quiet_transformers

    path = Path(model_dir).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a model folder (no config.json)")
    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    if model.config.num_labels != 1:
        raise UserError(f"{path} is not a reward model: it has {model.config.num_labels} outputs, not 1")
    ensure_pad_token(tokenizer)
    if model.config.get_text_config().pad_token_id is None:
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer
