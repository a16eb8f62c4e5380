"""What the endpoints of ``serve`` share: the models (loaded in the background, so that /health can
say "loading"), the crisis router, the dynamic batcher, and the reward model's own worker.

The reward model runs in one worker thread: requests from many clients queue there and each is
scored in length-sorted batches (``reward_model._rewards``). The screen has its own worker, so a
crisis check never waits behind a long scoring job.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ..card import CRISIS_RESOURCES
from ..config import ServeConfig
from ..errors import UserError
from .safety import CrisisRouter

log = logging.getLogger("psychocounsel.serve")

INTENDED_USE = (
    "Assists counselors and therapists (drafting replies that a professional reviews, training, research). "
    "Not a substitute for professional care or a crisis service; must not face clients unsupervised. "
    + CRISIS_RESOURCES
)


class ApiError(Exception):
    """An error answered in OpenAI's shape with its status (4xx for the client's mistakes)."""

    def __init__(
        self, status: int, message: str, kind: str | None = None, code: str | None = None, headers: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")


class Service:
    def __init__(self, cfg: ServeConfig, api_key: str | None = None):
        self.cfg, self.api_key = cfg, api_key
        self.router = CrisisRouter(cfg.crisis_routing, cfg.locale, cfg.resources)
        self.engine = self.batcher = self.rm = None
        self.reward_name = f"{cfg.model_name}-reward"
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.rm_pool = ThreadPoolExecutor(1, thread_name_prefix="psychocounsel-reward")
        self.screen_pool = ThreadPoolExecutor(1, thread_name_prefix="psychocounsel-screen")
        self.scoring = 0  # scoring requests queued or running
        self.score_seconds = 0.5  # a moving average: the 429's Retry-After for scoring

    # -- loading ---------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the policy, the reward model and the screen; /health turns ready after this."""
        from ..reward_model import load_reward_model
        from .engine import Batcher, PolicyEngine

        try:
            if self.cfg.upstream_url:  # an openai:MODEL policy, decoded by the upstream server
                from ..specs import parse_spec
                from .upstream import UpstreamBatcher, UpstreamEngine

                self.engine = UpstreamEngine()
                self.batcher = UpstreamBatcher(
                    self.cfg.upstream_url,
                    parse_spec(self.cfg.policy).arg,
                    self.cfg.upstream_key_env,
                    self.cfg.max_batch,
                    self.cfg.request_timeout,
                )
                self.batcher.check()
            else:
                self.engine = PolicyEngine(self.cfg.policy, self.cfg.device, self.cfg.dtype)
                self.batcher = Batcher(self.engine, self.cfg.max_batch, self.cfg.batch_window_ms / 1000)
            if self.cfg.reward_model is not None:
                self.rm = load_reward_model(self.cfg.reward_model)
            self.router.warm()
        except Exception as e:  # noqa: BLE001 - reported by /health and the log; the process stays up
            self.load_error = (
                f"loading failed: {e}" if isinstance(e, UserError) else f"loading failed: {type(e).__name__}"
            )
            log.error("%s: %s", self.load_error, str(e)[:300])
            return
        self.ready.set()
        log.info("ready: policy %s, reward model %s", self.cfg.model_name, "yes" if self.rm else "no")

    @asynccontextmanager
    async def lifespan(self, app):
        if not self.ready.is_set():
            threading.Thread(target=self.load, name="psychocounsel-load", daemon=True).start()
        yield
        if self.batcher is not None:
            self.batcher.close()
        self.rm_pool.shutdown(wait=False, cancel_futures=True)
        self.screen_pool.shutdown(wait=False, cancel_futures=True)

    def require_ready(self) -> None:
        if self.load_error:
            raise ApiError(503, self.load_error)
        if not self.ready.is_set():
            raise ApiError(503, "the models are still loading", headers={"Retry-After": "5"})

    def require_reward_model(self) -> None:
        self.require_ready()
        if self.rm is None:
            raise ApiError(
                404, "no reward model is served here (start serve with --reward-model)", code="no_reward_model"
            )

    def model_cards(self) -> list[dict[str, Any]]:
        cards = [
            {
                "id": self.cfg.model_name,
                "object": "model",
                "owned_by": "psychocounsel",
                "kind": "policy",
                "source": Path(self.cfg.policy).name or self.cfg.policy,
                "intended_use": INTENDED_USE,
            }
        ]
        if self.cfg.reward_model is not None:
            cards.append(
                {
                    "id": self.reward_name,
                    "object": "model",
                    "owned_by": "psychocounsel",
                    "kind": "reward_model",
                    "source": self.cfg.reward_model.name,
                    "intended_use": INTENDED_USE,
                }
            )
        return cards

    # -- admission and the workers ---------------------------------------------------------------

    def admit(self, rows: int) -> None:
        """Refuse (429) work that would queue more than ``max_queue`` sequences."""
        if rows > self.cfg.max_queue:
            raise ApiError(400, f"n x best_of is {rows}; this server takes at most {self.cfg.max_queue} per request")
        over = self.batcher.pending + rows - self.cfg.max_queue
        if over > 0:
            # Rows finish at about max_batch per row_seconds: the time until `over` places free up.
            wait = over * self.batcher.row_seconds / self.cfg.max_batch
            raise ApiError(
                429, "the server is busy; retry after the Retry-After seconds", "rate_limit_error", headers=_after(wait)
            )

    async def screen(self, messages: list[dict], locale: str | None):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.screen_pool, self.router.assess, messages, locale)

    async def _on_rm(self, fn, *args) -> list[float]:
        if self.scoring >= self.cfg.max_queue:
            raise ApiError(
                429, "the reward model is busy; retry later", "rate_limit_error", headers=_after(self.score_seconds)
            )
        self.scoring += 1
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            model, tok = self.rm
            rewards = await asyncio.wait_for(
                loop.run_in_executor(
                    self.rm_pool, fn, model, tok, *args, self.cfg.reward_batch_size, self.cfg.reward_max_length
                ),
                self.cfg.request_timeout,
            )
        except TimeoutError:
            raise ApiError(504, f"scoring took over {self.cfg.request_timeout:g} s", "timeout_error") from None
        finally:
            self.scoring -= 1
        self.score_seconds = 0.8 * self.score_seconds + 0.2 * (loop.time() - start)
        return [float(r) for r in rewards]

    async def score(self, prompts: list, responses: list[str]) -> list[float]:
        """Rewards of (prompt, response) pairs, encoded as in training and ``eval-rm``."""
        from ..reward_model import score_responses

        return await self._on_rm(score_responses, prompts, responses)

    async def score_formatted(self, texts: list[str]) -> list[float]:
        """Rewards of sequences already in the reward model's format (OpenRLHF's queries)."""
        from ..reward_model import score_formatted

        return await self._on_rm(score_formatted, texts)


def _after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
