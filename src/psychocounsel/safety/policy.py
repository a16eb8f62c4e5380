"""The screen's thresholds, and how rule matches move the learned probability (stored with the weights)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    """A score at or above ``crisis`` is a crisis; at or above ``concern``, a concern.

    ``concern_odds``: a concern-level rule about the speaker ("I can't go on", "I cut myself")
    multiplies the odds of the learned probability by this much (4: a text the head puts at 0.4
    becomes 0.73).
    """

    concern: float = 0.5
    crisis: float = 0.8
    concern_odds: float = 4.0

    def __post_init__(self):
        if not 0.0 < self.concern < self.crisis < 1.0:
            raise ValueError(f"thresholds must satisfy 0 < concern < crisis < 1, got {self}")

    def level(self, score: float) -> str:
        """
        >>> [Policy(0.5, 0.8).level(s) for s in (0.1, 0.5, 0.79, 0.8)]
        ['none', 'concern', 'concern', 'crisis']
        """
        return "crisis" if score >= self.crisis else "concern" if score >= self.concern else "none"

    def score(self, p: float, own: str | None = None, other: str | None = None) -> float:
        """The screen's score from the learned probability ``p`` and the strongest rule levels.

        ``own``: the strongest level ("crisis", "concern") among the speaker's own risk matches;
        ``other``: likewise for someone else's. Monotone in ``p`` for fixed rule levels.

        - own crisis: a noisy-or with the midpoint between the crisis threshold and 1, so
          always a crisis, and higher with ``p``;
        - own concern: the odds of ``p`` times ``concern_odds``, and at least a concern;
        - someone else at risk: at least a concern (the speaker's own ``p`` decides beyond that).

        >>> pol = Policy(0.5, 0.8)
        >>> [round(pol.score(0.1, own), 3) for own in (None, "concern", "crisis")]
        [0.1, 0.592, 0.91]
        >>> round(pol.score(0.6, "concern"), 3), round(pol.score(0.1, other="concern"), 3)
        (0.857, 0.53)
        """
        p = min(max(float(p), 0.0), 1.0)
        if own == "crisis":
            return 1.0 - (1.0 - p) * (1.0 - (1.0 + self.crisis) / 2.0)
        q = p
        if own == "concern" and 0.0 < p < 1.0:
            q = 1.0 / (1.0 + math.exp(-(math.log(p / (1.0 - p)) + math.log(self.concern_odds))))
        if own == "concern" or other:
            # the concern band, placed by q, unless q alone reaches a crisis
            return q if q >= self.crisis else max(q, self.concern + (self.crisis - self.concern) * q)
        return q
