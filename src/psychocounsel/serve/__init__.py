"""``psychocounsel serve``: the policy and the reward model over HTTP, behind the crisis screen.

- ``completions.py``: ``/v1/chat/completions`` (OpenAI's shapes, streaming, best-of-n);
- ``app.py``: the FastAPI app, its other endpoints, the key and size guard;
- ``service.py``: loading, admission (429), the reward model's worker;
- ``engine.py``: the token-by-token decoder and the dynamic batcher;
- ``safety.py`` + ``messages.yaml``: crisis routing;
- ``schemas.py``: request validation and response shapes.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path

from ..config import ServeConfig
from ..errors import UserError

log = logging.getLogger("psychocounsel.serve")

VLLM_HINT = (
    "GPU found: for GPU throughput, let vLLM decode (pip install vllm) and keep this server, with its crisis "
    "routing, in front:\n  vllm serve {policy} --served-model-name {name} --host 127.0.0.1 --port 8001\n"
    "  psychocounsel serve --policy openai:{name} --upstream-url http://127.0.0.1:8001/v1 --port {port}"
)


def is_loopback(host: str) -> bool:
    """
    >>> [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "10.0.0.5")]
    [True, True, True, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key(cfg: ServeConfig) -> str | None:
    """The bearer token from the environment (never from a flag, so never in ``ps`` or shell
    history); required off loopback."""
    key = os.environ.get(cfg.api_key_env)
    if key is not None and not key.strip():
        raise UserError(f"${cfg.api_key_env} is set but empty")
    if key is None and not is_loopback(cfg.host):
        raise UserError(
            f"binding {cfg.host} exposes the server beyond this machine: set an API key in ${cfg.api_key_env} "
            "(clients send it as 'Authorization: Bearer ...'), or bind 127.0.0.1"
        )
    return key.strip() if key else None


def check(cfg: ServeConfig) -> None:
    """Everything that can be wrong before loading a model, as one-line errors."""
    from ..specs import local_model, parse_spec

    if parse_spec(cfg.policy).kind == "openai":
        if not cfg.upstream_url:
            raise UserError(
                "an openai: policy is decoded upstream: give --upstream-url (e.g. vLLM's http://HOST:PORT/v1)"
            )
        if not cfg.upstream_url.startswith(("http://", "https://")):
            raise UserError(f"--upstream-url must start with http:// or https://, got {cfg.upstream_url[:60]!r}")
    elif cfg.upstream_url:
        raise UserError("--upstream-url serves an openai:MODEL policy; a local --policy is decoded here")
    else:
        local_model(cfg.policy)  # raises a UserError naming a path that does not exist
    if cfg.reward_model is not None and not (cfg.reward_model.expanduser() / "config.json").is_file():
        raise UserError(f"--reward-model {cfg.reward_model} is not a model folder (no config.json)")
    if cfg.best_of > 1 and cfg.reward_model is None:
        raise UserError("--best-of needs --reward-model: candidates are ranked by their reward")
    if cfg.resources is not None and not Path(cfg.resources).is_file():
        raise UserError(f"--resources {cfg.resources}: no such file")
    with socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET) as s:
        try:
            s.bind((cfg.host, cfg.port))
        except OSError as e:
            raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None


def build(cfg: ServeConfig):
    """(app, service) for ``cfg``: checked, the key read; the models load when the app starts."""
    from .app import create_app
    from .service import Service

    check(cfg)
    service = Service(cfg, api_key(cfg))
    if not cfg.crisis_routing:
        log.warning("crisis routing is OFF: messages are not screened and crisis resources are never shown")
    return create_app(service), service


def serve(cfg: ServeConfig) -> None:
    """Run the server until interrupted (Ctrl-C stops it cleanly)."""
    import uvicorn

    app, _ = build(cfg)
    try:
        import torch

        if torch.cuda.is_available() and not cfg.upstream_url:
            print(VLLM_HINT.format(policy=cfg.policy, name=cfg.model_name, host=cfg.host, port=cfg.port), flush=True)
    except ImportError:
        pass
    base = f"http://{'[' + cfg.host + ']' if ':' in cfg.host else cfg.host}:{cfg.port}"
    print(f"psychocounsel: serving '{cfg.model_name}' at {base}/v1 (health: {base}/health)", flush=True)
    # access_log off: the request lines of serve.completions carry ids, counts and latencies instead.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
