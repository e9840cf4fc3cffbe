"""Params overrides as `dvc exp run -S` writes them: ``key.path=value`` pairs, dotted keys
and nested sections, and the keys where two params differ."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from vaelab.core.errors import VaelabError
from vaelab.core.params import Params, flatten


def dvc_value(value: Any) -> str:
    """``value`` as `dvc exp run -S` reads it back (a plain word where that round-trips)."""
    plain = isinstance(value, str) and re.fullmatch(r"[\w./:+-]+", value)
    return value if plain and yaml.safe_load(value) == value else json.dumps(value)


def nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` as ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def split_override(item: str) -> tuple[str, str]:
    """``"a.b=1"`` (DVC's -S syntax) as ``("a.b", "1")``."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise VaelabError(f"-S {item!r} is not KEY=VALUE (as for `dvc exp run -S`)")
    return key, value


def differences(params: Params, other: Params, sections: Iterable[str] | None = None) -> dict:
    """``{"dotted.key": value}`` where ``params`` differs from ``other`` (in ``sections``)."""
    theirs = flatten(other.model_dump(include=sections))
    return {k: v for k, v in flatten(params.model_dump(include=sections)).items() if theirs[k] != v}


def pairs(flat: Mapping[str, Any]) -> list[str]:
    """``{"a.b": 1}`` as ``["a.b=1"]``, sorted: DVC's -S syntax."""
    return [f"{k}={dvc_value(v)}" for k, v in sorted(flat.items())]
