"""Crashes the fuzzers found that are not fixed yet: (exception type, module, source line).

The generic fuzz tests tolerate exactly these (so the suite stays green while their owners fix
them); each has an explicit ``xfail(strict=True)`` regression test next to its target. When a fix
lands, the line changes (so the fuzzers stop tolerating it) and the regression test XPASSes, a
failure under strict xfail: then remove its mark and its entry here.
"""

from __future__ import annotations

import traceback

Signature = tuple[str, str, str]

KNOWN: frozenset[Signature] = frozenset(
    {
        # YAML: PyYAML raises ValueError for an impossible timestamp (2001-13-01), not YAMLError
    }
)


# Functions that read nested fields assuming their types throughout: any TypeError/AttributeError
# raised in them is the same known bug (validate the shape once, at the top, then read).
TYPE_CONFUSED: frozenset[tuple[str, str]] = frozenset()


def _innermost(exc: BaseException) -> traceback.FrameSummary | None:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/webhook/" in f.filename]
    return frames[-1] if frames else None


def signature(exc: BaseException) -> Signature:
    """(exception type, module under webhook/, source line) of the innermost project frame;
    AttributeError is named TypeError."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/webhook/" in f.filename]
    if not frames:
        return type(exc).__name__, "?", "?"
    frame = frames[-1]
    # AttributeError and TypeError are one bug class here (a value of the wrong type): one name.
    name = "TypeError" if isinstance(exc, AttributeError | TypeError) else type(exc).__name__
    return name, frame.filename.rsplit("/webhook/", 1)[1], (frame.line or "").strip()


def is_known(exc: BaseException) -> bool:
    sig = signature(exc)
    if sig in KNOWN:
        return True
    frame = _innermost(exc)
    return sig[0] == "TypeError" and frame is not None and (sig[1], frame.name) in TYPE_CONFUSED
