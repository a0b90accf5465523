"""Building a config dataclass from a mapping, with one-line errors a user can act on."""
from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def from_mapping(cls: type[T], cfg: Mapping[str, Any], section: str, positive: tuple[str, ...] = ()) -> T:
    """`cls(**cfg)`, rejecting keys `cls` does not know (typos), values of the wrong type (by the
    field's annotation) and non-positive `positive` fields."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{section} config has unknown keys {unknown}; known keys: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    for key, value in cfg.items():
        allowed = _allowed_types(hints[key])
        if value is None and type(None) in allowed:
            continue
        # bool is an int to Python, never to a user; an int is fine where a float is expected.
        if isinstance(value, bool):
            ok = bool in allowed
        elif isinstance(value, int) and float in allowed:
            ok = True
        else:
            ok = isinstance(value, allowed)
        if not ok:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ValueError(f"{section}.{key}={value!r} must be {names}")
    obj = cls(**dict(cfg))
    for name in positive:
        if getattr(obj, name) < 1:
            raise ValueError(f"{section}.{name}={getattr(obj, name)} must be a positive integer")
    return obj


def _allowed_types(hint: Any) -> tuple[type, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)
