"""Crisis resources by locale, as data (``resources.yaml``)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

RESOURCES = Path(__file__).parent / "resources.yaml"


@cache
def _table(path: Path = RESOURCES) -> dict:
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    for entries in [data["default"], *data["regions"].values()]:
        for entry in entries:
            missing = {"name", "contact", "region"} - set(entry)
            if missing:
                raise ValueError(f"{path}: a resource lacks {sorted(missing)}")
    return data


def region_of(locale: str | None) -> str | None:
    """The region part of a locale, upper-cased.

    >>> region_of("en_US"), region_of("en-gb"), region_of("IE"), region_of("fr"), region_of(None)
    ('US', 'GB', 'IE', None, None)
    >>> region_of("en_GB.UTF-8")
    'GB'
    """
    if not locale:
        return None
    base = locale.split(".")[0].split("@")[0].replace("-", "_")
    parts = base.split("_")
    if len(parts) >= 2:
        return parts[-1].upper()
    # A bare code is a region when it is written in capitals ("US") or is one we know ("uk").
    return base.upper() if base.isupper() or base.upper() in {"US", "UK", "GB", "IE", "USA"} else None


def resources(locale: str | None = None, path: Path | None = None) -> list[dict]:
    """Crisis resources for a locale ("en_US", "en-GB", "IE", ...); the international default otherwise.
    ``path``: a resources YAML laid out like the packaged ``resources.yaml`` (default: that file).

    Each entry is a fresh dict with ``name``, ``contact`` and ``region``.

    >>> [r["name"] for r in resources("en_US")][0]
    '988 Suicide & Crisis Lifeline'
    >>> resources("en_GB")[0]["contact"].startswith("Call 116 123")
    True
    >>> [r["region"] for r in resources()]
    ['international', 'international']
    """
    data = _table(Path(path) if path else RESOURCES)
    region = region_of(locale)
    region = data.get("aliases", {}).get(region, region)
    entries = data["regions"].get(region, data["default"])
    return [dict(e) for e in entries]
