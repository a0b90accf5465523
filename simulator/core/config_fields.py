"""Building a config dataclass from a mapping, with one-line errors a user can act on."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def from_mapping(cls: type[T], cfg: Mapping[str, Any], section: str, positive: tuple[str, ...] = ()) -> T:
    """`cls(**cfg)`, rejecting keys `cls` does not know (typos) and non-positive `positive` fields."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{section} config has unknown keys {unknown}; known keys: {sorted(known)}")
    obj = cls(**dict(cfg))
    for name in positive:
        if getattr(obj, name) < 1:
            raise ValueError(f"{section}.{name}={getattr(obj, name)} must be a positive integer")
    return obj
