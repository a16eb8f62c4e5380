"""Progress bars for long work: tqdm on stderr, quiet when stderr is not a terminal or in CI
(set PSYCHOCOUNSEL_PROGRESS=1 to force them on, 0 to force them off)."""

from __future__ import annotations

import os
import sys


def enabled() -> bool:
    forced = os.environ.get("PSYCHOCOUNSEL_PROGRESS")
    return (forced != "0") if forced is not None else sys.stderr.isatty()


def bar(total: int, desc: str, initial: int = 0):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled(), unit="item", dynamic_ncols=True)
