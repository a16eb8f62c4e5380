"""The policy behind ``serve``: a token-by-token decoder over a batch, fed by a dynamic batcher.

Requests from many clients wait in one queue. A worker thread decodes up to ``max_batch`` rows
together, one token per row per forward pass (continuous batching): a row that finishes leaves
the batch and its key/value cache at once, and a waiting row joins between two steps (its prompt
is read in one pass, its cache left-padded and stacked onto the batch's). When the worker is idle
it waits ``batch_window_ms`` after the first arrival, so that clients arriving together start
together. Each row keeps its own sampling settings (temperature, top_p, max_tokens, stop), its
own random generator (seeded by the request's ``seed``: a seeded row samples the same tokens
whoever shares its batch, up to float rounding) and its own stream of text deltas.

The forward pass is HF transformers' own, with its cache; nothing here is a fake model.
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
    started: float = 0.0  # when it joined a batch (perf_counter)
    messages: list[dict[str, str]] | None = None  # the conversation, for an upstream server (upstream.py)


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


def _sample(logits, states: list[_State]) -> list[int]:
    """One next token per row: greedy at temperature 0, else nucleus sampling with the row's generator."""
    import torch

    temps = torch.tensor([max(st.row.temperature, 1e-6) for st in states], device=logits.device)
    probs = torch.softmax(logits / temps[:, None], dim=-1)  # one call for the batch, not one per row
    out = []
    for i, st in enumerate(states):
        row = st.row
        if row.temperature <= 0:
            out.append(int(logits[i].argmax()))
            continue
        p = probs[i]
        if row.top_p < 1.0:
            sorted_p, order = p.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < row.top_p  # the smallest set reaching top_p
            p = torch.zeros_like(p).scatter(0, order[keep], sorted_p[keep])
        out.append(int(torch.multinomial(p, 1, generator=st.gen)))
    return out


class _Batch:
    """Rows decoding together: their states, key/value cache, attention mask (left-padded),
    last positions, and the token each feeds to the next pass."""

    def __init__(self, states, cache, mask, positions):
        self.states, self.cache, self.mask, self.positions = states, cache, mask, positions
        self.feed: list[int] = []

    def keep(self, index: list[int]) -> None:
        import torch

        if len(index) == len(self.states):
            return
        at = torch.tensor(index, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(at)
        self.states = [self.states[i] for i in index]
        self.mask, self.positions = self.mask[at], self.positions[at]
        self.feed = [self.feed[i] for i in index]
        self._trim()

    def _trim(self) -> None:
        """Drop cache columns that are padding for every row (left by rows that left)."""
        if not self.states:
            return
        first = int(self.mask.argmax(dim=1).min())
        if first > 0:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def join(self, other: _Batch) -> None:
        """Stack ``other``'s rows under these: both caches left-padded to one length."""
        import torch
        import torch.nn.functional as F

        width = max(self.mask.shape[1], other.mask.shape[1])

        def pad(t, dim_from_end):
            missing = width - t.shape[-dim_from_end]
            return t if missing == 0 else F.pad(t, (0, 0) * (dim_from_end - 1) + (missing, 0))

        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([pad(mine.keys, 2), pad(theirs.keys, 2)])
            mine.values = torch.cat([pad(mine.values, 2), pad(theirs.values, 2)])
        self.mask = torch.cat([pad(self.mask, 1), pad(other.mask, 1)])
        self.positions = torch.cat([self.positions, other.positions])
        self.states += other.states
        self.feed += other.feed


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

    def start(self, rows: list[Row]) -> tuple[_Batch, list[_State]]:
        """Read the prompts of ``rows`` in one pass and sample their first tokens: a batch of the
        rows still going, and the states of those already done."""
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
        batch = _Batch(states, None, mask, positions[:, -1:])
        return batch, self._advance(batch, self._forward(ids, mask, positions, None, batch))

    def step(self, batch: _Batch) -> list[_State]:
        """One token for every row of ``batch``; returns the states that finished (and left it)."""
        import torch

        batch.mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        batch.positions = batch.positions + 1
        ids = torch.tensor(batch.feed, device=self.device)[:, None]
        return self._advance(batch, self._forward(ids, batch.mask, batch.positions, batch.cache, batch))

    def _forward(self, ids, mask, positions, cache, batch: _Batch):
        import torch

        with torch.inference_mode():
            # logits_to_keep=1: the prompt's other positions need no vocabulary projection.
            out = self.lm(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        batch.cache = out.cache
        return out.logits[:, -1, :].float()

    def _advance(self, batch: _Batch, logits) -> list[_State]:
        import torch

        tokens = _sample(logits, batch.states)
        for j, (st, token) in enumerate(zip(batch.states, tokens)):
            lp = None
            if st.logprobs is not None:
                lp = _token_logprobs(self.tok, torch.log_softmax(logits[j], -1), token, st.row.top_logprobs)
            st.add(token, self.eos, lp)
        batch.feed = tokens
        done = [st for st in batch.states if st.finish is not None]
        batch.keep([j for j, st in enumerate(batch.states) if st.finish is None])
        return done

    def generate(self, rows: list[Row]) -> list[Sampled]:
        """Decode ``rows`` together until each ends (end of turn, a stop string, its max_tokens)."""
        states = {id(r): None for r in rows}
        batch, done = self.start(rows)
        while True:
            for st in done:
                states[id(st.row)] = st.result()
            if not batch.states:
                return [states[id(r)] for r in rows]
            done = self.step(batch)


class Batcher:
    """Feeds one :class:`PolicyEngine` from many callers, in a worker thread (continuous batching).

    ``pending`` counts rows queued or being decoded; the server refuses new work (429) beyond its limit.
    """

    def __init__(self, engine: PolicyEngine, max_batch: int, window_s: float):
        self.engine, self.max_batch, self.window_s = engine, max_batch, window_s
        self._queue: queue.Queue[Row | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closing = False
        self.pending = 0
        self.batches = 0  # prompt passes that started rows; fewer than rows when requests share them
        self.rows_done = 0
        self.peak_batch = 0  # the most rows decoded together so far
        self.row_seconds = 2.0  # a moving average of a row's decoding time (from joining a batch): Retry-After
        self._thread = threading.Thread(target=self._work, name="psychocounsel-batcher", daemon=True)
        self._thread.start()

    def submit(self, rows: list[Row]) -> list[Future]:
        with self._lock:
            self.pending += len(rows)
        for r in rows:
            self._queue.put(r)
        return [r.future for r in rows]

    def close(self) -> None:
        self._closing = True
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _take(self, room: int, wait: bool) -> list[Row]:
        """Up to ``room`` queued rows; when ``wait`` (nothing decoding) block for the first, then
        give others ``window_s`` to arrive. Rows cancelled while queued are dropped here."""
        rows: list[Row] = []
        deadline = None
        while len(rows) < room:
            try:
                if wait and not rows:
                    item = self._queue.get()
                    deadline = time.monotonic() + self.window_s
                elif deadline is not None:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                break
            if item.cancelled.is_set():
                item.future.cancel()
                self._finish(item, None)
                continue
            item.started = time.perf_counter()
            rows.append(item)
        return rows

    def _finish(self, row: Row, result: Sampled | None) -> None:
        with self._lock:  # counted before the caller hears of it: a client never sees stale counts
            self.pending -= 1
            self.rows_done += 1
            if result is not None:
                self.row_seconds = 0.9 * self.row_seconds + 0.1 * (time.perf_counter() - row.started)
        if result is not None and not row.future.cancelled():
            row.future.set_result(result)

    def _work(self) -> None:
        batch: _Batch | None = None
        while not self._closing:
            live = batch.states if batch else []
            rows = []
            try:
                rows = self._take(self.max_batch - len(live), wait=not live)
                done: list[_State] = []
                if rows:
                    newcomers, done = self.engine.start(rows)
                    self.batches += 1
                    if batch is None or not batch.states:
                        batch = newcomers
                    elif newcomers.states:
                        batch.join(newcomers)
                if batch is not None and batch.states:
                    self.peak_batch = max(self.peak_batch, len(batch.states))
                    done += self.engine.step(batch)
                for st in done:
                    self._finish(st.row, st.result())
            except Exception as e:  # noqa: BLE001 - a failed pass fails its rows, never the worker
                log.error("generation failed for %d rows: %s", len(live) + len(rows), type(e).__name__)
                for r in [st.row for st in live] + rows:
                    if not r.future.done():
                        r.future.set_exception(e)
                        self._finish(r, None)
                batch = None
