"""Kubernetes ``resource.Quantity`` strings ("1", "500m", "2Ki", "1e3") to exact milli-units.

Follows apimachinery's grammar: ``<sign><digits>[.<digits>]<suffix>`` with binary suffixes
(Ki..Ei), decimal SI suffixes (n u m "" k M G T P E) and decimal exponents (e3, E-2). Values
are exact (``Fraction``) and rounded *up* to milli-units, as ``Quantity.MilliValue`` does.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction

from webhook import errors

_NUMBER = re.compile(r"^(?P<num>[+-]?(?:\d+\.?\d*|\.\d+))(?P<suffix>.*)$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_EXPONENT = re.compile(r"^[eE](?P<exp>[+-]?\d+)$")


class QuantityError(errors.InputError):
    """A resource quantity does not follow the Kubernetes quantity grammar."""


def parse(value: str | int | float) -> Fraction:
    """The exact value of a quantity; raises ``QuantityError`` with what is wrong."""
    if isinstance(value, bool):
        raise QuantityError(f"quantity {value!r} must be a number or a string such as '1', '500m', '2Ki'")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(str(value))
    if not isinstance(value, str):
        raise QuantityError(f"quantity {value!r} must be a number or a string such as '1', '500m', '2Ki'")
    return _parse_str(value)


@functools.lru_cache(maxsize=4096)  # pure memo: pods repeat the same few strings ("1", "2")
def _parse_str(text: str) -> Fraction:
    match = _NUMBER.match(text.strip())
    if match is None or text != text.strip():
        raise QuantityError(f"quantity {text!r} is not valid (expected e.g. '1', '500m', '2Ki', '1e3')")
    number = Fraction(match.group("num"))
    suffix = match.group("suffix")
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    exponent = _EXPONENT.match(suffix)
    if exponent is not None:
        return number * Fraction(10) ** int(exponent.group("exp"))
    raise QuantityError(f"quantity {text!r} has an unknown suffix {suffix!r} (use Ki, Mi, m, k, M, G, e3, ...)")


def milli(value: str | int | float) -> int:
    """The quantity in milli-units, rounded up like ``Quantity.MilliValue``."""
    if type(value) is int:
        return value * 1000
    if type(value) is str:
        return _milli_str(value)
    return math.ceil(parse(value) * 1000)


@functools.lru_cache(maxsize=4096)
def _milli_str(text: str) -> int:
    return math.ceil(_parse_str(text) * 1000)
