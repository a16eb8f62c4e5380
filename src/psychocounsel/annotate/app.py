"""The annotation page: FastAPI serving one HTML page, its script and style, and a small JSON API.

Every text (speech, replies, comments) reaches the page as JSON and is put on it with
``textContent``, never as HTML; the Content-Security-Policy allows only this server's own script,
so a speech holding ``<script>`` shows as text and runs nothing. Every ``/api`` call needs the
annotator's token (``Authorization: Bearer``, never a cookie, so another site cannot act for
them), and the token alone says whose answers are read or written: no request names an annotator.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..rubric import Rubric
from ..serve.schemas import bearer_token
from .store import AnnotationStore

log = logging.getLogger("psychocounsel.annotate")
STATIC = Path(__file__).parent / "static"
FILES = {"page.js": "text/javascript", "page.css": "text/css"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
FROM_AB = {True: {"A": "chosen", "B": "rejected"}, False: {"A": "rejected", "B": "chosen"}}


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pair_id: str = Field(min_length=1, max_length=64)
    preference: Literal["A", "B", "tie"] | None = None
    scores: dict[Literal["A", "B"], dict[str, Annotated[int, Field(ge=1, le=5)]]] = Field(default_factory=dict)
    comment: str = Field("", max_length=4000)
    flagged: bool = False


def _annotator(request: Request) -> str:
    """Who the token says the caller is; 401 for anything else."""
    token = bearer_token(request.headers.get("authorization", ""))
    name = request.app.state.store.annotator_of(token) if token else None
    if name is None:
        raise HTTPException(401, "sign in with your annotator token")
    return name


Who = Annotated[str, Depends(_annotator)]


def create_app(store: AnnotationStore, rubric: Rubric, remote: bool = False) -> FastAPI:
    app = FastAPI(title="psychocounsel annotate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    keys = set(rubric.keys)

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        fields = sorted({".".join(str(p) for p in err["loc"][1:]) or "body" for err in e.errors()})
        return JSONResponse({"error": f"invalid fields: {', '.join(fields)}"}, status_code=400)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "page.html", media_type="text/html")

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        if name not in FILES:  # a fixed list: no path from the request reaches the file system
            raise HTTPException(404, "not found")
        return FileResponse(STATIC / name, media_type=FILES[name])

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    def progress(name: str) -> dict:
        done = sum(1 for a in store.answers(name).values() if a["label"])
        return {"annotator": name, "total": len(store.items()), "done": done}

    @app.get("/api/me")
    def me(name: Who) -> dict:
        order = store.order(name)
        answers = store.answers(name)
        first_open = next((i for i, it in enumerate(order) if not answers.get(it.pair_id, {}).get("label")), len(order))
        return {
            **progress(name),
            "next": first_open,
            "principles": bool(store.meta().get("principles")),
            "remote": remote,
        }

    @app.get("/api/rubric")
    def rubric_view(name: Who) -> list[dict]:
        return [
            {
                "key": p.key,
                "name": p.name,
                "definition": p.definition,
                "anchors": {str(k): v for k, v in p.anchors.items()},
            }
            for p in rubric.principles
        ]

    @app.get("/api/item/{index}")
    def item(index: int, name: Who) -> dict:
        from ..safety import resources

        order = store.order(name)
        if not 0 <= index < len(order):
            raise HTTPException(404, f"no item {index}; items are 0 to {len(order) - 1}")
        it = order[index]
        first = store.chosen_first(name, it.pair_id)
        a, b = (it.chosen, it.rejected) if first else (it.rejected, it.chosen)
        saved = store.answers(name).get(it.pair_id)
        answer = None
        if saved:
            back = {v: k for k, v in FROM_AB[first].items()} | {"tie": "tie"}
            scores = {back[side]: values for side, values in saved["scores"].items()}
            answer = {**saved, "preference": back.get(saved["label"]) if saved["label"] else None, "scores": scores}
            answer.pop("label")
        return {
            **progress(name),
            "index": index,
            "pair_id": it.pair_id,
            "speech": it.prompt,
            "reply_a": a,
            "reply_b": b,
            "crisis": it.crisis,
            "resources": resources() if it.crisis != "none" else [],
            "answer": answer,
        }

    @app.put("/api/answer")
    def answer(body: Answer, name: Who) -> dict:
        known = {it.pair_id for it in store.items()}
        if body.pair_id not in known:
            raise HTTPException(404, "no such pair")
        unknown = {k for values in body.scores.values() for k in values} - keys
        if unknown:
            raise HTTPException(400, f"unknown principles: {', '.join(sorted(unknown))}")
        sides = FROM_AB[store.chosen_first(name, body.pair_id)]
        label = None if body.preference is None else sides.get(body.preference, "tie")
        scores = {sides[side]: values for side, values in body.scores.items() if values}  # in the pair's terms
        store.save(name, body.pair_id, label, scores, body.comment, body.flagged)
        log.info("annotator %s answered pair %s", name, body.pair_id)
        return progress(name)

    return app
