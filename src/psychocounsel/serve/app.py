"""The FastAPI application of ``serve``: OpenAI's chat completions (streaming too), the models'
list and health, OpenRLHF's ``/get_reward`` and ``/v1/score``.

Every request body is read here, under the size limit, and validated by ``schemas``: a bad body is
a 400 that names the field, never a 5xx, and never echoes what was sent. Work that would wait
beyond ``max_queue`` sequences gets a 429 with ``Retry-After``. Logs carry a request id, counts,
the safety decision and latencies; never a message or a reply.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from . import schemas
from .completions import Completions
from .service import ApiError, Service

log = logging.getLogger("psychocounsel.serve")


class Guard:
    """ASGI middleware, outside the app: the bearer token (constant-time compare; /health is open
    to load balancers) and the declared body size (413 before the body is read)."""

    def __init__(self, app: ASGIApp, key: str | None, max_body: int):
        self.app, self.key, self.max_body = app, key.encode() if key else None, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.key is not None and scope["path"] != "/health":
            # latin-1: any header bytes round-trip, and the compare stays on bytes (constant time)
            token = schemas.bearer_token(headers.get(b"authorization", b"").decode("latin-1")).encode("latin-1")
            if not hmac.compare_digest(token, self.key):
                body = schemas.error_body(
                    "missing or wrong API key (Authorization: Bearer ...)", "authentication_error"
                )
                return await _send_json(send, 401, body, {"www-authenticate": "Bearer"})
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            body = schemas.error_body(f"request body over {self.max_body} bytes", code="request_too_large")
            return await _send_json(send, 413, body)
        return await self.app(scope, receive, send)


async def _send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": raw})


async def read_json(request: Request, model: type, max_bytes: int):
    """The body as ``model``: at most ``max_bytes`` (413), JSON (400), the right shape (400)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"request body over {max_bytes} bytes", code="request_too_large")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except schemas.ValidationError as e:
        raise ApiError(400, schemas.describe(e)) from None


def create_app(service: Service) -> FastAPI:
    cfg = service.cfg
    # No /docs or /openapi.json: the surface is the endpoints below, documented in the README.
    app = FastAPI(title="psychocounsel", docs_url=None, redoc_url=None, openapi_url=None, lifespan=service.lifespan)
    app.add_middleware(Guard, key=service.api_key, max_body=cfg.max_body_bytes)
    if cfg.cors_origins:  # added last, so outermost: a browser's preflight is answered before the key check
        from fastapi.middleware.cors import CORSMiddleware

        origins = [o.strip() for o in cfg.cors_origins.split(",") if o.strip()]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    completions = Completions(service)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(schemas.error_body(e.message, e.kind, e.code), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = "no such endpoint" if e.status_code == 404 else str(e.detail)
        return JSONResponse(schemas.error_body(message), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.error("%s %s failed: %s", request.method, request.url.path, type(e).__name__)
        return JSONResponse(schemas.error_body("internal error", "server_error"), status_code=500)

    @app.get("/health")
    async def health() -> JSONResponse:
        if service.load_error:
            return JSONResponse({"status": "failed", "error": service.load_error}, status_code=503)
        if not service.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse(
            {
                "status": "ok",
                "policy": cfg.model_name,
                "reward_model": service.reward_name if service.rm else None,
                "crisis_routing": cfg.crisis_routing,
                "queued": service.batcher.pending if service.batcher else 0,
            }
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": service.model_cards()}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        service.require_ready()
        req = await read_json(request, schemas.ChatCompletionRequest, cfg.max_body_bytes)
        if req.model != cfg.model_name:
            raise ApiError(
                404, f"model '{req.model[:80]}' is not served here; use '{cfg.model_name}'", code="model_not_found"
            )
        if req.stream:
            return StreamingResponse(await completions.stream(req), media_type="text/event-stream")
        return await completions.complete(req)

    @app.post("/get_reward")
    async def get_reward(request: Request) -> dict[str, Any]:
        service.require_reward_model()
        req = await read_json(request, schemas.RewardQuery, cfg.max_body_bytes)
        texts = {i: q for i, q in enumerate(req.query) if isinstance(q, str)}
        talks = {i: q for i, q in enumerate(req.query) if not isinstance(q, str)}
        rewards = [0.0] * len(req.query)
        if texts:
            for i, r in zip(texts, await service.score_formatted(list(texts.values()))):
                rewards[i] = r
        if talks:
            prompts, responses = schemas.split_transcripts(list(talks.values()))
            for i, r in zip(talks, await service.score(prompts, responses)):
                rewards[i] = r
        return {"rewards": rewards}

    @app.post("/v1/score")
    async def score(request: Request) -> dict[str, Any]:
        service.require_reward_model()
        req = await read_json(request, schemas.ScoreRequest, cfg.max_body_bytes)
        if req.model is not None and req.model != service.reward_name:
            raise ApiError(
                404, f"model '{req.model[:80]}' is not served here; use '{service.reward_name}'", code="model_not_found"
            )
        prompts, responses = req.prompts_responses()
        rewards = await service.score(prompts, responses)
        return {"object": "list", "model": service.reward_name, "rewards": rewards}

    return app
