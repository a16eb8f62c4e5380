"""The policy behind ``serve``: a token-by-token decoder over a batch, fed by a dynamic batcher.

Requests from many clients wait in one queue; a worker thread takes the first, waits up to
``batch_window_ms`` for more (at most ``max_batch`` rows), and decodes them together. Each row
keeps its own sampling settings (temperature, top_p, max_tokens, stop), its own random generator
(seeded by the request's ``seed``, so a seeded row samples the same tokens whoever shares its
batch, up to float rounding), and its own stream of text deltas. Finished rows leave the batch
and its key/value cache at once, so a short answer does not pay for a long neighbour.

``generate`` is HF transformers' own forward pass with a cache; nothing here is a fake model.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Row:
    """One sequence to sample: a prompt's token ids and its settings. ``on_text`` (optional) is
    called from the worker thread with each new piece of text, for streaming."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no logprobs; 0..20: the chosen token's and this many others
    on_text: Callable[[str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)


@dataclass
class Sampled:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    logprobs: list[dict[str, Any]] | None = None


class _State:
    """A row being decoded: its tokens so far and the text already handed out."""

    def __init__(self, row: Row, tok, device: str):
        import torch

        self.row, self.tok = row, tok
        self.ids: list[int] = []
        self.logprobs: list[dict[str, Any]] | None = [] if row.top_logprobs is not None else None
        self.sent = 0  # characters of the text already given to on_text
        self.text = ""
        self.finish: str | None = None
        seed = row.seed if row.seed is not None else random.SystemRandom().getrandbits(63)
        self.gen = torch.Generator(device=device).manual_seed(int(seed) % (2**63))

    def add(self, token: int, eos: set[int], logprob: dict[str, Any] | None) -> None:
        if token in eos:
            self.finish = "stop"
        else:
            self.ids.append(token)
            if self.logprobs is not None:
                self.logprobs.append(logprob)
            self.text = self.tok.decode(self.ids, skip_special_tokens=True).lstrip()
            cut = min((i for i in (self.text.find(s) for s in self.row.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text, self.finish = self.text[:cut], "stop"
            elif len(self.ids) >= self.row.max_tokens:
                self.finish = "length"
        if self.row.cancelled.is_set():
            self.finish = self.finish or "cancelled"
        self._emit()

    def _emit(self) -> None:
        if self.row.on_text is None:
            return
        # Hold back a partial UTF-8 character, and text that may yet turn out to start a stop string.
        upto = len(self.text) if self.finish else len(self.text.rstrip("\ufffd"))
        if not self.finish and self.row.stop:
            upto = max(self.sent, upto - max(len(s) for s in self.row.stop) + 1)
        if upto > self.sent:
            self.row.on_text(self.text[self.sent : upto])
            self.sent = upto

    def result(self) -> Sampled:
        return Sampled(
            self.text.strip(), len(self.row.prompt_ids), len(self.ids), self.finish or "length", self.logprobs
        )


def _token_logprobs(tok, logp, token: int, k: int) -> dict[str, Any]:
    """OpenAI's logprobs entry for one sampled token (log-probabilities before temperature)."""

    def entry(t: int, v: float) -> dict[str, Any]:
        s = tok.decode([t])
        return {"token": s, "logprob": v, "bytes": list(s.encode("utf-8"))}

    top = []
    if k:
        values, ids = logp.topk(k)
        top = [entry(t, v) for t, v in zip(ids.tolist(), values.tolist())]
    return {**entry(token, float(logp[token])), "top_logprobs": top}


def _sample(logits, states: list[_State]):
    """One next token per row: greedy at temperature 0, else nucleus sampling with the row's generator."""
    import torch

    out = []
    for i, st in enumerate(states):
        row = st.row
        if row.temperature <= 0:
            out.append(int(logits[i].argmax()))
            continue
        probs = torch.softmax(logits[i] / row.temperature, dim=-1)
        if row.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < row.top_p  # the smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        out.append(int(torch.multinomial(probs, 1, generator=st.gen)))
    return out


class PolicyEngine:
    """A causal LM (a folder or .gguf, through the transformers backend) that decodes batches of rows."""

    def __init__(self, spec: str, device: str = "auto", dtype: str = "auto"):
        from ..backends.transformers_local import TransformersBackend
        from ..config import BackendConfig

        self.backend = TransformersBackend(spec, BackendConfig(spec=spec, device=device, dtype=dtype))
        self.lm, self.tok = self.backend.load()
        self.device = self.backend.device
        eos = self.lm.generation_config.eos_token_id
        self.eos = {*(eos if isinstance(eos, list) else [eos] if eos is not None else []), self.tok.eos_token_id}
        self.eos.discard(None)
        self.context = int(getattr(self.lm.config.get_text_config(), "max_position_embeddings", 2048))
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else next(iter(self.eos))

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.backend.prompt_ids(messages)

    def generate(self, rows: list[Row]) -> list[Sampled]:
        """Decode ``rows`` together until each ends (end of turn, a stop string, its max_tokens)."""
        import torch

        states = [_State(r, self.tok, self.device) for r in rows]
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):  # left padding: every row's last prompt token is in the last column
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        live = list(range(len(rows)))  # indices into states of the rows still in the batch
        cache = None
        with torch.inference_mode():
            while live:
                # logits_to_keep=1: the prompt's other positions need no vocabulary projection.
                out = self.lm(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                cache = out.cache
                logits = out.logits[:, -1, :].float()
                batch = [states[i] for i in live]
                tokens = _sample(logits, batch)
                for j, (st, token) in enumerate(zip(batch, tokens)):
                    lp = None
                    if st.logprobs is not None:
                        lp = _token_logprobs(self.tok, torch.log_softmax(logits[j], -1), token, st.row.top_logprobs)
                    st.add(token, self.eos, lp)
                keep = [j for j, st in enumerate(batch) if st.finish is None]
                if len(keep) < len(batch):
                    if not keep:
                        break
                    index = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(index)
                    mask, positions = mask[index], positions[index]
                    tokens = [tokens[j] for j in keep]
                    live = [live[j] for j in keep]
                ids = torch.tensor(tokens, device=self.device)[:, None]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
        return [st.result() for st in states]


class Batcher:
    """Collects rows from many callers into batches for one :class:`PolicyEngine`, in a worker thread.

    ``pending`` counts rows queued or being decoded; the server refuses new work (429) beyond its limit.
    """

    def __init__(self, engine: PolicyEngine, max_batch: int, window_s: float):
        self.engine, self.max_batch, self.window_s = engine, max_batch, window_s
        self._queue: queue.Queue[Row | None] = queue.Queue()
        self._lock = threading.Lock()
        self.pending = 0
        self.batches = 0
        self.rows_done = 0
        self.batch_seconds = 1.0  # a moving average of how long a batch takes: the 429's Retry-After
        self._thread = threading.Thread(target=self._work, name="psychocounsel-batcher", daemon=True)
        self._thread.start()

    def submit(self, rows: list[Row]) -> list[Future]:
        with self._lock:
            self.pending += len(rows)
        for r in rows:
            self._queue.put(r)
        return [r.future for r in rows]

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _collect(self) -> list[Row] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _work(self) -> None:
        while (batch := self._collect()) is not None:
            live = [r for r in batch if not r.cancelled.is_set()]
            for r in batch:
                if r.cancelled.is_set():
                    r.future.cancel()
            start = time.perf_counter()
            try:
                results = self.engine.generate(live) if live else []
                for r, res in zip(live, results):
                    if not r.future.cancelled():
                        r.future.set_result(res)
            except Exception as e:  # noqa: BLE001 - a failed batch fails its rows, never the worker
                log.error("generation failed for a batch of %d rows: %s", len(live), type(e).__name__)
                for r in live:
                    if not r.future.done():
                        r.future.set_exception(e)
            finally:
                with self._lock:
                    if live:
                        self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * (time.perf_counter() - start)
                    self.pending -= len(batch)
                    self.batches += 1
                    self.rows_done += len(batch)
