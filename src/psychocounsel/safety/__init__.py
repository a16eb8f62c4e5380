"""The offline crisis screen: does a speech show its speaker's own risk of harm?

Triage support for a human reviewer, not a clinical instrument (see ``SCREEN_CARD.md``).

- ``screen(texts)``: one ``Assessment`` per text: level ("none", "concern", "crisis"), a
  score in [0, 1], risk categories and evidence as character offsets (never text).
- ``resources(locale)``: crisis lines for a locale, as data.
- ``handles_crisis(reply)``: whether a counselor's reply acknowledges the risk and points to
  immediate help.

Importing this package loads neither torch nor the model: ``screen`` loads them on first call.
"""

from __future__ import annotations

from .helplines import resources
from .reply import handles_crisis
from .screen import CATEGORIES, LEVELS, Assessment, screen

__all__ = ["CATEGORIES", "LEVELS", "Assessment", "handles_crisis", "resources", "screen"]
