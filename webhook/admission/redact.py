"""What of an admitted object may enter the audit log (record stage): secrets never do.

- ``Secret`` objects are not recorded at all (only that one was judged);
- ``env[].value`` of a variable whose name looks secret (password, token, secret, key,
  credential, ...) becomes ``"[redacted]"``, wherever an ``env`` list sits in the object;
- the ``kubectl.kubernetes.io/last-applied-configuration`` annotation (a copy of the whole
  object, env values included) is replaced by ``"[redacted]"``.
Documented in SECURITY.md ("What the audit log keeps of admitted objects").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

REDACTED = "[redacted]"
SECRET_KINDS = frozenset({"Secret"})
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_LAST_APPLIED_BYTES = orjson.dumps(LAST_APPLIED)
# Matched anywhere in the variable's name, case-insensitively (DB_PASSWORD, githubToken, AWS_SECRET_ACCESS_KEY).
SUSPICIOUS = re.compile(
    r"pass(word|wd|phrase)?|pwd|pw$|pw[_-]|secret|token|key|credential|creds?\b|auth|private|cert|session|cookie|"
    r"signature|salt|dsn|conn(ection)?[_-]?str",
    re.IGNORECASE,
)
_MAX_PATHS = 50


def is_secret(kind: str, obj: Any) -> bool:
    return kind in SECRET_KINDS or (isinstance(obj, Mapping) and obj.get("kind") in SECRET_KINDS)


def may_hold_secrets(canonical_json: bytes) -> bool:
    """False when the object's JSON has neither an ``env`` key nor the last-applied annotation, so
    ``redact`` would change nothing (a byte search instead of a walk on the hot path)."""
    return b'"env":' in canonical_json or _LAST_APPLIED_BYTES in canonical_json


def redact(kind: str, obj: Any) -> tuple[Any, list[str]]:
    """``obj`` as it may be recorded (None for a Secret) and the field paths that were redacted."""
    if is_secret(kind, obj):
        return None, ["<the whole Secret>"]
    paths: list[str] = []
    return _walk(obj, "", paths), paths[:_MAX_PATHS]


def _walk(value: Any, path: str, paths: list[str]) -> Any:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            at = f"{path}.{key}" if path else str(key)
            if key == "env" and isinstance(item, list):
                out[key] = [_env(entry, f"{at}[{i}]", paths) for i, entry in enumerate(item)]
            elif key == "annotations" and isinstance(item, Mapping) and LAST_APPLIED in item:
                out[key] = {**item, LAST_APPLIED: REDACTED}
                paths.append(f"{at}.{LAST_APPLIED}")
            else:
                out[key] = _walk(item, at, paths)
        return out
    if isinstance(value, list):
        return [_walk(item, f"{path}[{i}]", paths) for i, item in enumerate(value)]
    return value


def _env(entry: Any, at: str, paths: list[str]) -> Any:
    if not isinstance(entry, Mapping):
        return entry
    name = entry.get("name")
    if "value" in entry and (not isinstance(name, str) or SUSPICIOUS.search(name)):
        paths.append(f"{at}.value")
        return {**entry, "value": REDACTED}
    return _walk(entry, at, paths)
