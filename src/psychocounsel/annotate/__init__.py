"""Counselors check the data and the judges: the annotation page, its store, and agreement statistics.

- ``store.py``: the SQLite store (pairs, annotators' token hashes, answers written at once);
- ``dataset.py``: pairs in (sampled, screened), answers out (``export``, ``import``);
- ``app.py`` + ``static/``: the page (FastAPI, plain HTML, CSS and JavaScript);
- ``stats.py``: agreement statistics (Cohen's and Fleiss' kappa, Krippendorff's alpha, CIs);
- ``agreement.py``: ``annotate stats``, the store's answers against the data set and the judges.
"""

from __future__ import annotations

import logging

from ..config import AnnotateConfig

log = logging.getLogger("psychocounsel.annotate")


def serve(cfg: AnnotateConfig) -> None:
    """Prepare the store, print new tokens once, and serve the page until interrupted."""
    import uvicorn

    from ..rubric import load_rubric
    from ..serve import is_loopback
    from .app import create_app
    from .dataset import prepare

    store, tokens = prepare(cfg)
    remote = not is_loopback(cfg.host)
    url = f"http://{cfg.host}:{cfg.port}/"
    print(f"psychocounsel annotate: {len(store.items())} pairs in {cfg.db}; page at {url}", flush=True)
    for name, token in tokens.items():
        print(f"  token for {name}: {token}", flush=True)  # shown once: only its hash is stored
    if not tokens:
        print("  (no new annotators: existing tokens still work; --reissue-tokens gives new ones)", flush=True)
    if remote:
        print(
            "  warning: the page is reachable over the network; tokens and texts travel in clear unless a TLS proxy "
            "is in front",
            flush=True,
        )
    uvicorn.run(create_app(store, load_rubric(), remote), host=cfg.host, port=cfg.port, log_level="warning")
