"""Local Hugging Face models (a model folder or a GGUF file), batched, on CPU or GPU.

Batches are length-sorted: within each run of requests that share sampling settings, the
requests are ordered by prompt length (ties by a hash of their messages) before being cut into
batches of ``batch_size``, so one long speech pads only a batch of long ones; results come back
in the order asked.

Sampling is made reproducible per batch: the torch seed of a batch is derived from the requests
in it, in their sorted order, so the same requests give the same texts whatever order they are
asked in, and whether they run first or after a resumed crash (generate resends a chunk whole).
The seed is set inside ``torch.random.fork_rng()``, so the process's own random state (a
trainer's, in train-online) is left as it was.
"""

from __future__ import annotations

import time
from typing import Any

from ..config import BackendConfig
from ..precision import auto_dtype
from ..store import stable_hash
from .base import Backend, ChatRequest, Completion


def weights_fingerprint(path) -> str:
    """Size and modification time of every weights file under ``path`` (a folder or a file),
    hashed: cheap, and changed by any retraining that writes new weights. A copy that does not
    keep modification times (``cp -r``) looks new: the cost is fresh calls, never stale answers."""
    from pathlib import Path

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else [path]
    return stable_hash([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()], 12)


def _pick_device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def _dtype_name(name: str, device: str) -> str:
    """The torch dtype a model is loaded in: ``auto`` is bfloat16 on CUDA and on a CPU with native
    bf16, float32 elsewhere (precision.py)."""
    return auto_dtype(device) if name == "auto" else name


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, path: str, cfg: BackendConfig):
        """``path``: a model folder or .gguf file, or "default" (SmolLM2-135M-Instruct)."""
        from ..specs import local_model, parse_spec

        self.cfg = cfg
        self.path = local_model(path)
        self.is_default = parse_spec(path).kind == "default"
        self.model = "default" if self.is_default else str(path)
        self._lm = None
        self._tok = None
        self.device = _pick_device(cfg.device)
        self.dtype = _dtype_name(cfg.dtype, self.device)

    def identity(self) -> dict[str, Any]:
        # The model is named by what it is, not where it lies, so that a moved cache still hits.
        # A folder's weights are fingerprinted too: a policy retrained in the same folder is a new model.
        # dtype and device are part of it: a bf16 GPU run and an fp32 CPU run sample different text.
        where = {"dtype": self.dtype, "device": self.device.split(":")[0]}
        if self.is_default:
            return {"backend": self.name, "model": self.path.name, **where}
        return {"backend": self.name, "model": self.model, "weights": weights_fingerprint(self.path), **where}

    def load(self):
        """(model, tokenizer), loaded once; the tokenizer pads on the left."""
        if self._lm is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            dtype = getattr(torch, self.dtype)
            self._tok = AutoTokenizer.from_pretrained(self.path)
            self._tok.padding_side = "left"  # decoder-only batches are padded on the left
            if self._tok.pad_token is None:
                self._tok.pad_token = self._tok.eos_token
            self._lm = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        return self._lm, self._tok

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The text the model continues: its chat template with the assistant's turn opened, or
        for a base model a plain role-labelled transcript."""
        _, tok = self.load()
        if tok.chat_template:
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of :meth:`prompt_text` (a chat template writes its own special tokens)."""
        _, tok = self.load()
        return tok(self.prompt_text(messages), add_special_tokens=not tok.chat_template)["input_ids"]

    def _encode(self, requests: list[ChatRequest]):
        _, tok = self.load()
        texts = [self.prompt_text(r.messages) for r in requests]
        return tok(texts, return_tensors="pt", padding=True, add_special_tokens=not tok.chat_template).to(self.device)

    def _run_batch(self, batch: list[ChatRequest]) -> list[Completion]:
        import torch

        lm, tok = self.load()
        params = batch[0].params
        enc = self._encode(batch)
        temperature = float(params.get("temperature", 0.0))
        want_logprobs = bool(params.get("logprobs"))
        start = time.perf_counter()
        devices = [torch.cuda.current_device()] if self.device.startswith("cuda") else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(stable_hash([r.messages for r in batch] + [params], 8), 16))
            out = lm.generate(
                **enc,
                max_new_tokens=int(params.get("max_tokens", 256)),
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=float(params.get("top_p", 1.0)) if temperature > 0 else None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
                output_scores=want_logprobs,
                return_dict_in_generate=True,
            )
        latency = (time.perf_counter() - start) / len(batch)
        prompt_len = enc["input_ids"].shape[1]
        results = []
        for i, req in enumerate(batch):
            gen = out.sequences[i, prompt_len:]
            n_new = (
                int((gen != tok.pad_token_id).sum())
                if tok.pad_token_id != tok.eos_token_id
                else int(len(gen) - (gen == tok.eos_token_id).int().cumsum(0).gt(1).sum())
            )
            top = self._top_logprobs(out.scores[0][i], int(params.get("top_logprobs", 20))) if want_logprobs else None
            results.append(
                Completion(
                    text=tok.decode(gen, skip_special_tokens=True).strip(),
                    model=self.identity()["model"],
                    params=req.params,
                    latency_s=latency,
                    prompt_tokens=int(enc["attention_mask"][i].sum()),
                    completion_tokens=n_new,
                    top_logprobs=top,
                    finish_reason="stop" if tok.eos_token_id in gen.tolist() else "length",
                )
            )
        return results

    def _top_logprobs(self, logits, k: int) -> dict[str, float]:
        import torch

        logp = torch.log_softmax(logits.float(), dim=-1)
        values, ids = logp.topk(k)
        top: dict[str, float] = {}
        for v, t in zip(values.tolist(), ids.tolist()):
            s = self._tok.decode([t]).strip()
            if s not in top or v > top[s]:
                top[s] = v
        return top

    def batches(self, requests: list[ChatRequest]) -> list[list[int]]:
        """Indices of ``requests`` cut into batches: each run of consecutive requests with identical
        params (generate() takes them once per batch) in order of prompt length, then at most
        batch_size long. Ties are ordered by a hash of the messages, not by position, so a batch
        and its seed depend on which requests are asked, not on the order they are asked in."""
        _, tok = self.load()
        texts = [self.prompt_text(r.messages) for r in requests]
        lengths = [len(ids) for ids in tok(texts, add_special_tokens=not tok.chat_template)["input_ids"]]
        out: list[list[int]] = []
        start = 0
        while start < len(requests):
            end = start + 1
            while end < len(requests) and requests[end].params == requests[start].params:
                end += 1
            run = sorted(range(start, end), key=lambda k: (lengths[k], stable_hash(requests[k].messages)))
            out.extend(run[i : i + self.cfg.batch_size] for i in range(0, len(run), self.cfg.batch_size))
            start = end
        return out

    def complete(self, requests: list[ChatRequest], progress: Any = None) -> list[Completion]:
        """Completions of ``requests``, in their order, made in length-sorted batches (``batches``)."""
        results: list[Completion | None] = [None] * len(requests)
        for indices in self.batches(requests):
            batch = [requests[k] for k in indices]
            try:
                done = self._run_batch(batch)
            except RuntimeError as e:  # e.g. out of memory: fail these rows, keep the run going
                done = [
                    Completion(text="", model=self.model, params=r.params, error=f"generation failed: {str(e)[:200]}")
                    for r in batch
                ]
            for k, c in zip(indices, done):
                results[k] = c
            if progress:
                progress(len(batch))
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self._lm = self._tok = None
