"""Shape checks for decoded JSON and YAML: a value is the object, list or string a reader expects,
or the caller's own error names the field and the type found.

Admission reviews, Gatekeeper templates, Tetragon records and pod specs are all untrusted decoded
documents; one set of checks keeps their messages alike ("spec.match must be a mapping, not
list"). Absent (``None``) reads as empty: a field left out is not a wrong type. Imports nothing
of the project, so any layer may use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# Builds the caller's exception from the field's path and what is wrong with it.
Fail = Callable[[str, str], Exception]


def type_name(value: Any) -> str:
    """The type of a decoded value as a message names it (``null`` for ``None``)."""
    return "null" if value is None else type(value).__name__


def mapping(value: Any, where: str, fail: Fail, *, noun: str = "an object", problem: str = "") -> Mapping[str, Any]:
    """``value`` as a mapping (``None``: empty)."""
    if value is None:
        return _EMPTY
    if isinstance(value, Mapping):
        return value
    raise fail(where, problem or f"must be {noun}, not {type_name(value)}")


def array(value: Any, where: str, fail: Fail, *, problem: str = "") -> list[Any]:
    """``value`` as a list (``None``: empty)."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise fail(where, problem or f"must be a list, not {type_name(value)}")


def string(value: Any, where: str, fail: Fail) -> str:
    """``value`` as a string (``None``: empty)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise fail(where, f"must be a string, not {type_name(value)}")


def strings(value: Any, where: str, fail: Fail) -> list[str]:
    """``value`` as a list of strings (``None``: empty); the first item that is not names its index."""
    items = array(value, where, fail)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise fail(f"{where}[{i}]", f"must be a string, not {type_name(item)}")
    return items


_EMPTY: Mapping[str, Any] = {}
