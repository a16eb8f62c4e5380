"""rollout: what writes the policy's responses in online DPO: the transformers backend, or vLLM.

``open_generator`` returns a backend (the backends/base.py contract) that loads the policy on
its first call and holds it until ``close()``. train/online.py keeps one open from a round's
dev responses to the next round's samples (the same weights) and closes it before each DPO
update, which needs the GPU's memory back.

vLLM runs in-process, one ``vllm.LLM`` per policy folder, started when the round's policy is
first used and shut down before the next update. The vLLM API this relies on, as read in
vllm-project/vllm's source and docs:

- ``LLM(model, dtype=, gpu_memory_utilization=, max_model_len=)`` (vllm/entrypoints/llm.py);
  ``gpu_memory_utilization`` is the share of the GPU's memory it reserves for weights, activations
  and KV cache. No engine ``seed``: the per-request seeds below decide the samples.
- ``LLM.chat(conversations, sampling_params=[one per conversation], use_tqdm=False)`` renders each
  conversation with the tokenizer's chat template (``add_generation_prompt=True``), encodes it
  without adding special tokens again, and returns the ``RequestOutput`` of each in input order
  (``.prompt_token_ids``, ``.outputs[0].text / .token_ids / .finish_reason``). A tokenizer
  without a chat template gets ``LLM.generate`` on the role-labelled transcript that the
  transformers backend writes for base models.
- ``SamplingParams(n=1, temperature=, top_p=, max_tokens=, seed=)``: temperature 0 is greedy; a
  per-request ``seed`` gives that request its own random generator, so its sample does not depend
  on the order or company it is scheduled in (vllm-project/vllm#2514; vLLM's "Reproducibility"
  page: on the same hardware and vLLM version, and best effort, since batch shapes can change
  low-order bits). Online DPO asks for sample ``j`` of a speech with ``"seed": j``, as the
  transformers path does; the seed vLLM gets is derived from ``j`` and the messages
  (``request_seed``), so that sample ``j`` of two speeches does not draw the same random numbers.
- Freeing the GPU: ``llm.llm_engine.engine_core.shutdown()`` stops the V1 engine-core process
  that holds the weights and KV cache, then ``vllm.distributed.cleanup_dist_env_and_memory()``
  (destroy_model_parallel, destroy_distributed_environment, gc.collect, torch.cuda.empty_cache),
  the cleanup vLLM's maintainers point to in vllm-project/vllm#18806 and #23793.
- vLLM starts its engine process with ``spawn`` once CUDA is initialised in this process (the
  reward model is on the GPU by then), which re-imports the main module unless it is guarded
  (vLLM's "Python Multiprocessing" design page). Both entry points are safe: the console script
  is guarded, and multiprocessing never re-runs a package's ``__main__`` (``python -m psychocounsel``).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from ..backends.base import Backend, ChatRequest, Completion
from ..config import OnlineConfig
from ..errors import UserError
from ..store import stable_hash

log = logging.getLogger(__name__)

# The OnlineConfig fields that choose and tune the engine: how fast responses are written, not
# what they are drawn from (online.py leaves them out of a run's identity).
GENERATOR_FIELDS = ("generator", "vllm_gpu_memory_utilization", "vllm_dtype", "vllm_max_model_len")


def _vllm_import_error() -> str | None:
    """Why ``import vllm`` fails here, or None when it works."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vllm is not installed"
    except Exception as e:  # a broken install (e.g. built for another CUDA) fails at import
        return f"vllm fails to import ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
    return None


def resolve_generator(name: str) -> str:
    """The engine ``name`` (OnlineConfig.generator) stands for: ``auto`` is vllm when CUDA is
    available and vllm imports, else transformers; an explicit ``vllm`` that does not import is
    a UserError, never a silent fallback (without CUDA it is tried: vLLM has CPU builds)."""
    if name == "transformers":
        return name
    import torch

    if name == "auto" and not torch.cuda.is_available():
        log.info("online: generating with transformers (no CUDA device)")
        return "transformers"
    why = _vllm_import_error()
    if why is None:
        return "vllm"
    if name == "vllm":
        raise UserError(f"generator: vllm, but {why}: pip install vllm, or set generator: transformers")
    log.info("online: generating with transformers (%s)", why)
    return "transformers"


def open_generator(policy: str, engine: str, cfg: OnlineConfig) -> Backend:
    """A backend for ``policy`` (a model folder or ``default``) on ``engine`` (resolved); it
    loads the weights on its first call or ``load()``."""
    if engine == "vllm":
        return VLLMBackend(policy, cfg)
    from ..backends import load_backend
    from ..config import BackendConfig

    return load_backend(BackendConfig(spec=policy, batch_size=cfg.batch_size))


def transcript(messages: list[dict[str, str]]) -> str:
    """The prompt of a model without a chat template, as the transformers backend writes it.

    >>> transcript([{"role": "user", "content": "hi"}])
    'user: hi\\n\\nassistant:'
    """
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"


def request_seed(request: ChatRequest) -> int | None:
    """The seed of one request: its ``seed`` param and messages hashed (32 bits), None without one.

    >>> a = ChatRequest([{"role": "user", "content": "a"}], {"seed": 0})
    >>> b = ChatRequest([{"role": "user", "content": "b"}], {"seed": 0})
    >>> request_seed(a) == request_seed(a) != request_seed(b), request_seed(ChatRequest([], {}))
    (True, None)
    """
    seed = request.params.get("seed")
    return None if seed is None else int(stable_hash([request.messages, seed], 8), 16)


def sampling_params(request: ChatRequest):
    """vLLM's SamplingParams for one request's OpenAI-named params."""
    from vllm import SamplingParams

    params = request.params
    temperature = float(params.get("temperature", 0.0))
    return SamplingParams(
        n=1,
        temperature=temperature,
        top_p=float(params.get("top_p", 1.0)) if temperature > 0 else 1.0,
        max_tokens=int(params.get("max_tokens", 256)),
        seed=request_seed(request),
    )


class VLLMBackend(Backend):
    """An in-process ``vllm.LLM`` on one local policy folder (see the module docstring)."""

    name = "vllm"

    def __init__(self, policy: str, cfg: OnlineConfig):
        from ..specs import local_model, parse_spec

        self.cfg = cfg
        self.path = local_model(policy)  # a folder: "default" and .gguf files are converted once
        self.model = "default" if parse_spec(policy).kind == "default" else str(policy)
        self._llm = None

    def load(self):
        """The ``vllm.LLM``, started once. Whatever torch still caches in this process (the DPO
        update's memory) is released first: vLLM checks that its share of the GPU is free."""
        if self._llm is None:
            import torch
            from vllm import LLM

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._llm = LLM(
                model=str(self.path),
                dtype=self.cfg.vllm_dtype,
                gpu_memory_utilization=self.cfg.vllm_gpu_memory_utilization,
                max_model_len=self.cfg.vllm_max_model_len,
            )
        return self._llm

    def complete(self, requests: list[ChatRequest], progress: Any = None) -> list[Completion]:
        """All requests in one vLLM call (vLLM schedules its own batches; ``batch_size`` is not used)."""
        if not requests:
            return []
        llm = self.load()
        params = [sampling_params(r) for r in requests]
        start = time.perf_counter()
        try:
            if llm.get_tokenizer().chat_template:
                outputs = llm.chat([r.messages for r in requests], sampling_params=params, use_tqdm=False)
            else:
                outputs = llm.generate([transcript(r.messages) for r in requests], params, use_tqdm=False)
        except ValueError as e:  # vLLM refuses the whole call, e.g. a prompt longer than max_model_len
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"vllm could not generate with {self.model}: {first}") from None
        latency = (time.perf_counter() - start) / len(requests)
        if progress:
            progress(len(requests))
        results = []
        for req, out in zip(requests, outputs):
            best = out.outputs[0]
            results.append(
                Completion(
                    text=best.text.strip(),
                    model=self.model,
                    params=req.params,
                    latency_s=latency,
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(best.token_ids),
                    finish_reason=best.finish_reason or "",
                )
            )
        return results

    def close(self) -> None:
        """Shut the engine down and give its GPU memory back (see the module docstring)."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del llm
        from vllm.distributed import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
