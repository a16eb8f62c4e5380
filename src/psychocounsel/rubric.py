"""The rubric as data: principles with definitions, 1/3/5 anchors and weights, read from YAML.

The packaged rubric is ``rubrics/psychocounsel.yaml``; users pass their own with ``--rubric``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import Finite, format_validation_error
from .errors import UserError

PAPER_KEYS = ("empathy", "relevance", "clarity", "safety", "exploration", "autonomy", "staging")
DEFAULT_RUBRIC = Path(__file__).parent / "rubrics" / "psychocounsel.yaml"


class Principle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")  # becomes a column name: chosen_<key>_rating
    name: str = Field(min_length=1)
    definition: str = Field(min_length=1)
    anchors: dict[int, str]
    weight: Finite = Field(1.0, ge=0)

    @field_validator("anchors")
    @classmethod
    def _anchors(cls, v: dict[int, str]) -> dict[int, str]:
        missing = {1, 3, 5} - set(v)
        if missing:
            raise ValueError(f"needs anchors for scores 1, 3 and 5 (missing {sorted(missing)})")
        if not set(v) <= {1, 2, 3, 4, 5}:
            raise ValueError("anchor scores must be between 1 and 5")
        if not all(isinstance(t, str) and t.strip() for t in v.values()):
            raise ValueError("anchor texts must be non-empty")
        return v


class Rubric(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    scale: tuple[int, int] = (1, 5)
    principles: list[Principle] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Rubric:
        keys = [p.key for p in self.principles]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"duplicate principle keys: {', '.join(sorted(dup))}")
        if self.scale != (1, 5):
            raise ValueError("only the 1-5 scale is supported")
        if sum(p.weight for p in self.principles) <= 0:
            raise ValueError("at least one principle needs a positive weight")
        return self

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.principles]

    def weights(self) -> dict[str, float]:
        total = sum(p.weight for p in self.principles)
        return {p.key: p.weight / total for p in self.principles}

    def score(self, scores: dict[str, float]) -> float:
        """Weighted mean of principle scores: a response's overall score.

        >>> r = load_rubric()
        >>> r.score({k: 3.0 for k in r.keys})
        3.0
        """
        total = sum(p.weight for p in self.principles)
        return sum(p.weight * scores[p.key] for p in self.principles) / total


def load_rubric(path: str | Path | None = None) -> Rubric:
    """Read and validate a rubric file; any problem is a one-line UserError."""
    import yaml

    path = Path(path) if path else DEFAULT_RUBRIC
    if not path.is_file():
        raise UserError(f"rubric file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a rubric is a mapping with a 'principles' list")
    try:
        return Rubric.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(e, f"rubric {path}")) from None
