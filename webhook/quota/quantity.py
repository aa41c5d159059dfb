"""Kubernetes ``resource.Quantity`` strings ("1", "500m", "2Ki", "1e3") to exact milli-units.

Follows apimachinery's grammar: ``<sign><digits>[.<digits>]<suffix>`` with binary suffixes
(Ki..Ei), decimal SI suffixes (n u m "" k M G T P E) and decimal exponents (e3, E-2). Values
are exact (``Fraction``) to the nano, rounded up away from zero as ``ParseQuantity`` does, and
rounded *up* to milli-units as ``Quantity.MilliValue`` does. apimachinery keeps the exponent in
an int32 and caps values at int64; beyond either, a value is refused (``QuantityError``) before
any large number is computed, so "1e999999999" costs microseconds.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction

from webhook import errors

_NUMBER = re.compile(r"(?P<sign>[+-]?)(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?(?P<suffix>.*)", re.ASCII | re.DOTALL)
# suffix -> (power of two, power of ten)
_SUFFIXES: dict[str, tuple[int, int]] = {
    "Ki": (10, 0),
    "Mi": (20, 0),
    "Gi": (30, 0),
    "Ti": (40, 0),
    "Pi": (50, 0),
    "Ei": (60, 0),
    "n": (0, -9),
    "u": (0, -6),
    "m": (0, -3),
    "": (0, 0),
    "k": (0, 3),
    "M": (0, 6),
    "G": (0, 9),
    "T": (0, 12),
    "P": (0, 15),
    "E": (0, 18),
}
_EXPONENT = re.compile(r"[eE](?P<exp>[+-]?[0-9]+)", re.ASCII)
# apimachinery keeps a quantity's decimal scale in an int32 (it silently wraps a larger exponent;
# refused here) and caps values at int64: a larger one cannot be represented (refused here too).
_MIN_EXP, _MAX_EXP = -(2**31), 2**31 - 1
MAX_VALUE = 2**63 - 1
_NANO = 10**9
_MAX_NANOS = MAX_VALUE * _NANO


class QuantityError(errors.InputError):
    """A resource quantity does not follow the Kubernetes quantity grammar."""


def parse(value: str | int | float) -> Fraction:
    """The exact value of a quantity; raises ``QuantityError`` with what is wrong."""
    if isinstance(value, bool):
        raise QuantityError(f"quantity {value!r} must be a number or a string such as '1', '500m', '2Ki'")
    if isinstance(value, int):
        if -MAX_VALUE <= value <= MAX_VALUE:
            return Fraction(value)
        raise _too_large(str(value))
    if isinstance(value, float):
        return _parse_str(str(value))  # YAML's .inf and .nan are refused there too
    if not isinstance(value, str):
        raise QuantityError(f"quantity {value!r} must be a number or a string such as '1', '500m', '2Ki'")
    return _parse_str(value)


@functools.lru_cache(maxsize=4096)  # pure memo: pods repeat the same few strings ("1", "2")
def _parse_str(text: str) -> Fraction:
    """Like ``resource.ParseQuantity``: digits, suffix, then rounded up (away from zero) to 1n.

    Works on digit strings and the value's order of magnitude, so no input makes it compute a
    huge power or a huge integer: "1e999999999" is refused at once, "1e-999999999" is 1n.
    """
    match = _NUMBER.fullmatch(text)
    digits_int, digits_frac = (match.group("int"), match.group("frac") or "") if match else ("", "")
    if match is None or not (digits_int or digits_frac):
        raise QuantityError(f"quantity {text!r} is not valid (expected e.g. '1', '500m', '2Ki', '1e3')")
    suffix = match.group("suffix")
    scale = _SUFFIXES.get(suffix)
    if scale is None:
        exponent = _EXPONENT.fullmatch(suffix)
        if exponent is None:
            raise QuantityError(f"quantity {text!r} has an unknown suffix {suffix!r} (use Ki, Mi, m, k, M, G, e3, ...)")
        exp = int(exponent.group("exp"))
        if not _MIN_EXP <= exp <= _MAX_EXP:
            raise QuantityError(f"quantity {text!r} has an exponent out of range (at most e{_MAX_EXP})")
        scale = (0, exp)
    twos, exp = scale
    nanos = _nanos(digits_int.lstrip("0"), digits_frac.rstrip("0"), twos, exp, text)
    return Fraction(-nanos if match.group("sign") == "-" else nanos, _NANO)


def _nanos(whole: str, frac: str, twos: int, exp: int, text: str) -> int:
    """ceil(0 <= whole.frac x 2**twos x 10**exp) in nano-units (``whole`` without leading zeros,
    ``frac`` without trailing zeros), refusing values above ``MAX_VALUE``."""
    if not whole and not frac:
        return 0
    # the value lies in [10**(lead-1), 10**lead) x 2**twos, and 2**twos < 10**19
    lead = len(whole) + exp if whole else exp - (len(frac) - len(frac.lstrip("0")))
    if lead - 1 > 19:
        raise _too_large(text)
    if lead + 19 < -9:
        return 1  # below 1n: rounded up to the least representable amount, as upstream does
    digits = (whole + frac).lstrip("0")  # significant digits only: int() below stays small
    # value in nanos = int(digits) x 2**twos x 10**shift = int(digits) x 10**(shift+twos) / 5**twos
    shift = exp + 9 - len(frac)
    if shift >= 0:
        nanos = int(digits) * (1 << twos) * 10**shift
    else:
        cut = -(shift + twos)  # trailing digits that fall below the nano: kept only as "any left?"
        if cut > 0:
            split = max(len(digits) - cut, 0)
            head, rest = digits[:split], digits[split:]
            numerator, inexact = int(head or "0"), rest.strip("0") != ""
        else:
            numerator, inexact = int(digits) * 10**-cut, False
        nanos, remainder = divmod(numerator, 5**twos)
        nanos += bool(remainder) or inexact
    if nanos > _MAX_NANOS:
        raise _too_large(text)
    return int(nanos)


def _too_large(text: str) -> QuantityError:
    return QuantityError(f"quantity {text!r} is too large (Kubernetes quantities go up to {MAX_VALUE})")


def milli(value: str | int | float) -> int:
    """The quantity in milli-units, rounded up like ``Quantity.MilliValue``."""
    if type(value) is int and -MAX_VALUE <= value <= MAX_VALUE:
        return value * 1000
    if type(value) is str:
        return _milli_str(value)
    return math.ceil(parse(value) * 1000)


@functools.lru_cache(maxsize=4096)
def _milli_str(text: str) -> int:
    return math.ceil(_parse_str(text) * 1000)
